"""One task of the SLURM job array: every output goes through rear.

rear_fs() takes its base from REAR_BASE (and the rotation span from
REAR_ROTATION, default 300 s).  ``import rear`` finds the rear.py that
submit.sh copied next to this file.
"""
import os
import time

import rear

task = int(os.environ["SLURM_ARRAY_TASK_ID"])

with rear.rear_fs():
    for step in range(100):
        with rear.rear_open("results.zip/task-%04d/step-%03d.txt" % (task, step), "w") as out:
            out.write("task %d, step %d: %f\n" % (task, step, step ** 0.5))
    # Last, and only once the work is done: 'rear missing' counts a task
    # without its log as one to resubmit.  A rerun (a requeue, a
    # resubmission) writes another log, kept as task-NNNN.log.~1~.
    with rear.rear_open("logs.zip/task-%04d.log" % task, "w") as log:
        log.write("task %d finished 100 steps at %s (restart %s)\n" % (
            task, time.strftime("%Y-%m-%d %H:%M:%S"), os.environ.get("SLURM_RESTART_COUNT", 0)))
