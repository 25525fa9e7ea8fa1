#!/usr/bin/env bash
# Submit a SLURM job array whose tasks write their outputs through rear, and a
# scavenger job that runs once every task has ended, whatever its exit status
# (afterany: a task killed at its time limit leaves an unsealed temp zip, which
# the scavenger salvages).  The scavenger job then asks rear which tasks left
# no log (they failed, or were killed before the end) and resubmits exactly
# those, once, with a scavenger after them again.
#
#   REAR_BASE=/scratch/$USER/run42 TASKS=100 ./submit.sh
#   REAR_BASE=/scratch/$USER/run42 TASKS=100 TASK=my_task.py ./submit.sh
#
# TASK is the Python script each task runs (default: task.py here); it must
# write logs.zip/task-NNNN.log last, as task.py does: that file is how the
# scavenger job knows the task finished.
#
# How the jobs find rear: this script vendors it.  rear is one file; it is
# copied with the task script and the job scripts into $REAR_BASE/.job/, and
# the jobs run them from there (Python looks for modules next to the script it
# runs), whichever python3 the nodes have and whether rear is installed there
# or not.
#
# TASKS is at most SLURM's MaxArraySize, 1001 by default (TASKS=2000 fails with
# "Invalid job array specification"): ask for a larger one, or submit several
# arrays.
#
# The tasks' stdout and stderr go to one file for the whole array,
# $REAR_BASE/.job/slurm-<array job>.out, not to one slurm-<job>_<task>.out per
# task in the submit directory: 100 tasks would leave 100 small files, the very
# thing rear is for.  Their outputs go into the archives.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export REAR_BASE=${REAR_BASE:?set REAR_BASE to the directory that receives the archives}
export REAR_JOB_DIR=$REAR_BASE/.job
export REAR_TASKS=${TASKS:-100}
mkdir -p "$REAR_JOB_DIR"
cp "$here/../../rear.py" "$here/task.sbatch" "$here/scavenge.sbatch" "$REAR_JOB_DIR/"
cp "${TASK:-$here/task.py}" "$REAR_JOB_DIR/task.py"
array_job=$(sbatch --parsable --array=0-$(( REAR_TASKS - 1 )) --export=ALL \
    --output="$REAR_JOB_DIR/slurm-%A.out" --open-mode=append "$REAR_JOB_DIR/task.sbatch")
scavenge_job=$(sbatch --parsable --dependency=afterany:"$array_job" --export=ALL \
    --output="$REAR_JOB_DIR/slurm-%j.out" "$REAR_JOB_DIR/scavenge.sbatch")
echo "tasks: job $array_job, scavenger: job $scavenge_job"
