"""An mpi4py program as a user writes one: every rank says where it ran. Run it with
`fluxmpi run -N 2 --ranks-per-node 2 -- python3 examples/mpi4py_hello.py` (any --path)."""

import socket

from mpi4py import MPI

comm = MPI.COMM_WORLD
print(f"rank {comm.Get_rank()} of {comm.Get_size()} on {socket.gethostname()}", flush=True)
