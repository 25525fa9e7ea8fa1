#!/usr/bin/env bash
# Submit a SLURM job array whose tasks write their outputs through rear, and a
# scavenger job that runs once every task has ended, whatever its exit status
# (afterany: a task killed at its time limit leaves an unsealed temp zip, which
# the scavenger salvages).
#
#   REAR_BASE=/scratch/$USER/run42 TASKS=100 ./submit.sh
#
# How the jobs find rear: this script vendors it.  rear is one file; it is
# copied with task.py into $REAR_BASE/.job/, and the jobs run them from there
# (Python looks for modules next to the script it runs), whichever python3
# the nodes have and whether rear is installed there or not.
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
mkdir -p "$REAR_JOB_DIR"
cp "$here/../../rear.py" "$here/task.py" "$REAR_JOB_DIR/"
last=$(( ${TASKS:-100} - 1 ))
array_job=$(sbatch --parsable --array=0-"$last" --export=ALL \
    --output="$REAR_JOB_DIR/slurm-%A.out" --open-mode=append "$here/task.sbatch")
scavenge_job=$(sbatch --parsable --dependency=afterany:"$array_job" --export=ALL \
    --output="$REAR_JOB_DIR/slurm-%j.out" "$here/scavenge.sbatch")
echo "tasks: job $array_job, scavenger: job $scavenge_job"
