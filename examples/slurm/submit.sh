#!/usr/bin/env bash
# Submit a SLURM job array whose tasks write their outputs through rear, and a
# scavenger job that runs once every task has ended, whatever its exit status
# (afterany: a task killed at its time limit leaves an unsealed temp zip, which
# the scavenger salvages).
#
#   REAR_BASE=/scratch/$USER/run42 TASKS=100 ./submit.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export REAR_BASE=${REAR_BASE:?set REAR_BASE to the directory that receives the archives}
export REAR_EXAMPLE_DIR=$here
mkdir -p "$REAR_BASE"
last=$(( ${TASKS:-100} - 1 ))
array_job=$(sbatch --parsable --array=0-"$last" --export=ALL "$here/task.sbatch")
scavenge_job=$(sbatch --parsable --dependency=afterany:"$array_job" --export=ALL \
    "$here/scavenge.sbatch")
echo "tasks: job $array_job, scavenger: job $scavenge_job"
