"""Which batch system a site's blocks are asked about: one interface over fluxmpi.slurm and fluxmpi.pbs.

A run's watch on its blocks and its clean-up call `client_for(site.scheduler)` and use what both modules give:
job_states (states in Slurm's names), job_start_times, job_spans, unusable_nodes, expand_hostlist,
any_unresponsive and cancel. A failed or slow command raises one of `ERRORS`.
"""

from __future__ import annotations

import logging
from types import ModuleType

from . import pbs, slurm
from .spec import SpecError

logger = logging.getLogger(__name__)

CLIENTS: dict[str, ModuleType] = {"slurm": slurm, "pbs": pbs}
ERRORS = (slurm.SlurmError, pbs.PBSError)


def client_of_provider(provider) -> ModuleType:
    """The client of the batch system a Parsl provider submits to: PBS for PBSProProvider, else Slurm."""
    from parsl.providers import PBSProProvider
    return pbs if isinstance(provider, PBSProProvider) else slurm


def client_for(scheduler: str) -> ModuleType:
    """fluxmpi.slurm or fluxmpi.pbs."""
    if scheduler not in CLIENTS:
        raise SpecError(f"scheduler {scheduler!r} is not known: give one of {', '.join(CLIENTS)}")
    return CLIENTS[scheduler]
