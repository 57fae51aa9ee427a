"""How a run rides out failures: retries, heartbeats, how often blocks are polled, how many failed blocks are
tolerated, how long tasks may wait with no block running (docs/reliability.md has what each fault did)."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from parsl.jobs.error_handlers import windowed_error_handler

from ..spec import SpecError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resilience:
    """How a run rides out failures; docs/reliability.md has what each fault did with these settings.

    retries: times Parsl reruns a failed task (Config.retries), on whichever block can take it.
    heartbeat_period, heartbeat_threshold: a worker pool (HTEX paths; it runs on its block's first node)
        heartbeats every period; after threshold seconds of silence the interchange declares it lost and fails
        its tasks (then retried). A link outage shorter than the threshold is ridden out. On the Flux path the
        threshold is the brokers' link timeout (tbon.tcp_user_timeout, see fluxmpi.launch.flux.executor).
    status_period: seconds between Parsl's polls of the blocks' Slurm jobs: how soon a dead block is noticed
        and replaced (SlurmProvider's own fixed value is 60).
    max_block_failures: consecutive failed blocks (e.g. NODE_FAIL) after which Parsl stops replacing them and
        fails the tasks; Parsl's default gives up after the first when a run holds one block.
    block_timeout: seconds in which no block runs while tasks wait, after which fluxmpi fails those tasks
        with the blocks' Slurm states (None: only the run's time limit bounds it).
    """
    retries: int = 0
    heartbeat_period: int = 30
    heartbeat_threshold: int = 120
    status_period: int = 60
    max_block_failures: int = 3
    block_timeout: float | None = None

    def __post_init__(self) -> None:
        def whole(name: str, value, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SpecError(f"{name}={value!r} must be a whole number of at least {low}")
        whole("retries", self.retries, 0)
        whole("heartbeat_period", self.heartbeat_period, 1)
        whole("heartbeat_threshold", self.heartbeat_threshold, 2)
        whole("status_period", self.status_period, 1)
        whole("max_block_failures", self.max_block_failures, 1)
        if self.heartbeat_threshold <= self.heartbeat_period:
            raise SpecError(f"heartbeat_threshold={self.heartbeat_threshold} must exceed heartbeat_period="
                            f"{self.heartbeat_period}: a pool would be declared lost between two heartbeats")
        t = self.block_timeout
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf")):
            raise SpecError(f"block_timeout={t!r} must be positive seconds (or None for no limit)")

    def block_error_handler(self):
        """Parsl's block error handler: give up after max_block_failures failed blocks in a row."""
        return functools.partial(windowed_error_handler, threshold=self.max_block_failures)
