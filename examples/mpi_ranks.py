"""Every MPI rank writes its outputs through rear; rank 0 collects them.

    mpirun -n 64 python3 mpi_ranks.py /scratch/$USER/run42

Each rank appends to a temp zip of its own: 64 ranks x 1000 outputs make a
few hundred files on the shared filesystem instead of 64,000.
"""
import sys

from mpi4py import MPI

import rear

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
base = sys.argv[1]

with rear.rear_fs(base, rotation_span=60):
    for step in range(1000):
        with rear.rear_open("ranks.zip/rank-%05d/step-%04d.txt" % (rank, step), "w") as out:
            out.write("rank %d of %d, step %d\n" % (rank, size, step))

comm.Barrier()      # every rank has left its rear_fs: its temp zips are sealed
if rank == 0:
    stats = rear.scavenge(base)
    print("rank 0 moved %d files from %d temp zips into %d archives"
          % (stats.files_moved, stats.temp_zips_done, stats.archives_touched))
    sys.exit(1 if stats.errors else 0)
