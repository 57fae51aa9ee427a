"""fluxmpi: node-spanning MPI tasks from Parsl workflows on Slurm, through HTEX or Flux."""

__version__ = "0.1.0"
