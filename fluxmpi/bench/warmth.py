"""Warm and cold runs in the bench: a warm hold per path run (`--warm N`), and for `--compare-warm` each path run
twice, cold then warm, each starting from powered-down nodes so the two figures compare.

A cold figure means something only if the nodes really were off when the run started: on an elastic cluster they
power down by themselves after SuspendTime idle seconds, so before each compared run the bench waits (bounded,
with progress) until every node of the partition is powered down. Waiting for Slurm instead of forcing a power
down (scontrol ... State=POWER_DOWN) needs no operator rights, so it works on a real cluster too.
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import nullcontext
from typing import Callable

from .. import slurm
from .. import warm as holds
from ..errors import FluxmpiError
from ..site import Site

logger = logging.getLogger(__name__)

WARM_SUFFIX = "+warm"          # the row of a warm run: "htex+warm"
POWER_DOWN_SLACK = 60.0        # seconds beyond SuspendTime + SuspendTimeout before giving up on a power-down
PROGRESS_PERIOD = 10.0         # seconds between progress lines while waiting


class PowerSavingError(FluxmpiError, ValueError):
    """--compare-warm on a cluster whose idle nodes never power down: the message says how to get one."""


def variants(name: str, kind: str, warm: int | None, compare: bool) -> list[int | None]:
    """The runs of one bench row: the warm-hold nodes of each (None = cold). Baselines are never warmed."""
    if kind != "path" or warm is None:
        return [None]
    return [None, warm] if compare else [warm]


def power_saving(site: Site, what: str = "--compare-warm") -> tuple[int, int]:
    """(SuspendTime, SuspendTimeout) in seconds from `scontrol show config`; PowerSavingError (naming `what`
    needs it) if it is off."""
    text = slurm.run_slurm(["scontrol", "show", "config"], env=site.env).stdout
    found = dict(re.findall(r"^(SuspendTime|SuspendTimeout)\s*=\s*(\S+)", text, re.M))
    suspend = found.get("SuspendTime", "NONE")
    if not suspend.isdigit() or int(suspend) <= 0:
        raise PowerSavingError(
            f"{what} needs idle nodes that power down, but {site.name} has SuspendTime={suspend}. On this "
            "machine use an elastic local cluster: `fluxmpi cluster up -N 4 --name NAME --elastic "
            "--resume-delay 20`, then `fluxmpi bench --cluster-name NAME ...`")
    timeout = found.get("SuspendTimeout", "")
    return int(suspend), int(timeout) if timeout.isdigit() else 30


def wait_powered_down(site: Site, log: Callable[[str], None], timeout: float) -> bool:
    """Wait until every node of the site's partition is powered down (sinfo '~'); True if they are. Progress every
    PROGRESS_PERIOD s; after `timeout` it says which nodes were not and returns False (the run starts anyway)."""
    start = time.monotonic()
    told = start - PROGRESS_PERIOD
    states: dict[str, str] = {}
    while True:
        try:
            proc = slurm.run_slurm(["sinfo", "-h", "-N", "-p", site.partition, "-o", "%N %T"], env=site.env,
                                   check=False)
            states = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())
        except slurm.SlurmError:
            states = {}       # slurmctld slow to answer: look again until the bound
        up = sorted(n for n, s in states.items() if not s.endswith("~"))
        waited = time.monotonic() - start
        if states and not up:
            if waited >= 1:
                log(f"fluxmpi: all {len(states)} node(s) of {site.partition!r} powered down after {waited:.0f}s")
            return True
        if waited >= timeout:
            log(f"fluxmpi: warning: after {timeout:.0f}s {len(up)} node(s) of {site.partition!r} were still not "
                f"powered down ({', '.join(f'{n} {states[n]}' for n in up) or 'sinfo listed none'}); starting "
                "anyway, so this run's time to first result is not a cold one")
            return False
        if time.monotonic() - told >= PROGRESS_PERIOD:
            told = time.monotonic()
            log(f"fluxmpi: waiting for the nodes to power down, so the run starts cold: {len(states) - len(up)}/"
                f"{len(states)} down, {waited:.0f}s of at most {timeout:.0f}s")
        time.sleep(1.0)


def holding(warm: int | None, site: Site, log: Callable[[str], None]):
    """A warm hold on `warm` nodes for one path run (a context manager yielding the WarmHold), or no hold."""
    if not warm:
        return nullcontext()
    return holds.warm_nodes(warm, partition=site.partition, env=site.env, log=log)


def describe(hold: holds.WarmHold | None, powered_down: bool | None, t_start: float | None) -> dict:
    """What results.json keeps about the warmth of one run."""
    if hold is None:
        return {"warm": False, "nodes": 0, "powered_down_at_start": powered_down}

    def after(t: float | None) -> float | None:
        return None if t is None else round(t - hold.submitted, 3)
    return {"warm": hold.problem is None and hold.warm_at is not None, "nodes": hold.nodes,
            "powered_down_at_start": powered_down, "hold_job": hold.job_id, "hold_submitted": hold.submitted,
            "warm_after": after(hold.warm_at), "released_after": after(hold.released_at),
            "runner_start_after": after(t_start), "problem": hold.problem}
