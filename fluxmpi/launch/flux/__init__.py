"""The Flux launch family: a Flux instance inside each Slurm block places the node-spanning MPI tasks.

One module per part, as Parsl's own `executors/flux/`:
- install.py: find flux-core, its Python bindings, and refuse a mismatch before anything is submitted;
- executor.py: the `flux` path: Parsl's FluxExecutor (subclassed: FluxMPIExecutor) with a broker per node;
- jobs.py: the `flux-jobs` path: fluxmpi's own executor, each task one Flux job running the program itself;
- jobspec.py: what a Parsl call becomes as a Flux job, and what the finished job becomes for Parsl;
- client.py: the one connection to an instance that follows every job's events;
- block.py, pyjob.py: the programs that run inside the block (the instance's first program; a Python call).
"""
