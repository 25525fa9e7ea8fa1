"""A long-running main process: a pool of worker processes writes through
rear while scavengerd collects in the background.

    python3 main_process.py /scratch/$USER/run42

rear is found as users get it: installed, or vendored (rear.py copied next
to this script); shipped inside rear's repository, it falls back to the
repository's copy.
"""
import multiprocessing
import os
import sys

try:
    import rear      # installed, or vendored next to this script
except ImportError:  # this example, inside rear's repository: the copy at its top
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import rear

_fs = None


def _start_worker(base):
    # One rear_fs per worker process, for its whole life: one temp zip per
    # rotation however many tasks the worker runs.  It is sealed when the
    # worker exits.
    global _fs
    _fs = rear.rear_fs(base, rotation_span=5)


def task(number):
    with _fs.open("tasks.zip/%02d/task-%04d.txt" % (number // 100, number), "w") as out:
        out.write("task %d: %d\n" % (number, number * number))
    return number


if __name__ == "__main__":
    base = sys.argv[1]
    with rear.scavengerd(base, rotation_span=5) as daemon:
        pool = multiprocessing.Pool(4, initializer=_start_worker, initargs=(base,))
        done = pool.map(task, range(1000))
        pool.close()    # not terminate(): workers exit normally and seal
        pool.join()
    stats = daemon.stats
    print("%d tasks; scavengerd moved %d files, salvaged %d temp zips, %d errors"
          % (len(done), stats.files_moved, stats.salvaged, len(stats.errors)))
    sys.exit(1 if stats.errors else 0)
