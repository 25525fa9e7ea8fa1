"""Every MPI rank writes its outputs through rear; rank 0 collects them.

    mpirun -n 64 /usr/bin/python3 mpi_ranks.py /scratch/$USER/run42 [STEPS]

Run it with the Python that has mpi4py (Debian's python3-mpi4py is for
/usr/bin/python3; a python3 earlier on PATH may not have it).  rear is found
as users get it: installed in that Python, or vendored (rear.py copied next
to this script); this example, shipped inside rear's repository, falls back
to the rear.py at the repository's top.

Each rank appends to a temp zip of its own: 64 ranks x 1000 outputs make a
few hundred files on the shared filesystem instead of 64,000.

If a rank dies (SIGKILL, the OOM killer), mpirun aborts every rank within
about a second and rank 0 never collects: the temp zips stay in the inbox,
unsealed.  Nothing acknowledged is lost; one command moves it all:

    rear scavenge --flush /scratch/$USER/run42      (or python3 rear.py ...)
"""
import os
import sys

from mpi4py import MPI

try:
    import rear
except ImportError:    # not installed, not vendored: the repository's copy
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import rear

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
base = sys.argv[1]
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 1000

with rear.rear_fs(base, rotation_span=60):
    for step in range(steps):
        with rear.rear_open("ranks.zip/rank-%05d/step-%04d.txt" % (rank, step), "w") as out:
            out.write("rank %d of %d, step %d\n" % (rank, size, step))

comm.Barrier()      # every rank has left its rear_fs: its temp zips are sealed
if rank == 0:
    stats = rear.scavenge(base)
    print("rank 0 moved %d files from %d temp zips in %d commits"
          % (stats.files_moved, stats.temp_zips_done, stats.archives_touched))
    sys.exit(1 if stats.errors else 0)
