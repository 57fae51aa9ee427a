"""fluxmpi: node-spanning MPI tasks from Parsl workflows on Slurm, through HTEX or Flux.

The public names, imported on first use (so `import fluxmpi` stays cheap):
- `config(path, site=..., **options)`: a launch path's Parsl Config (fluxmpi.configs);
- `mpi_app`, `MPICommand`: one app form on every path (fluxmpi.mpiapp); `MPITaskFailed` on failure;
- `MPITaskSpec`: the task spec; `Container`: the image its ranks run in (fluxmpi.container);
- `Site`, `open_site`: where to run.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "config": ("fluxmpi.configs", "config"),
    "mpi_app": ("fluxmpi.mpiapp", "mpi_app"),
    "MPICommand": ("fluxmpi.mpiapp", "MPICommand"),
    "MPITaskFailed": ("fluxmpi.apps", "MPITaskFailed"),
    "MPITaskSpec": ("fluxmpi.spec", "MPITaskSpec"),
    "Container": ("fluxmpi.container", "Container"),
    "Site": ("fluxmpi.site", "Site"),
    "open_site": ("fluxmpi.site", "open_site"),
}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fluxmpi' has no attribute {name!r}")
    import importlib
    module, attr = _PUBLIC[name]
    return getattr(importlib.import_module(module), attr)
