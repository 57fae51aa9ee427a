"""How many blocks a run may hold and when it gives an idle one back: the cost side of an elastic cluster.

On a cloud cluster whose idle nodes power down after minutes, a block that holds nodes with nothing to run is
paid for; one that is given back lets its nodes power down, and the next burst of tasks brings a block back (a
start-up and a resume delay later). docs/operations.md has what each setting cost and saved, measured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..spec import SpecError

logger = logging.getLogger(__name__)

ELASTIC_PATHS = ("flux-jobs",)     # the paths whose executor adds and gives back blocks itself


@dataclass(frozen=True)
class Scaling:
    """max_blocks: blocks held at once; more are added while tasks wait that the running ones cannot start.
    min_blocks: blocks kept however idle. idle_release: seconds a block may run nothing, with no waiting task
    it could run, before it is given back (None: kept until its walltime or until what waits cannot use it)."""
    max_blocks: int = 1
    min_blocks: int = 0
    idle_release: float | None = None

    def __post_init__(self) -> None:
        for name, value, least in (("max_blocks", self.max_blocks, 1), ("min_blocks", self.min_blocks, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise SpecError(f"{name}={value!r} must be a whole number of at least {least}")
        if self.min_blocks > self.max_blocks:
            raise SpecError(f"min_blocks={self.min_blocks} exceeds max_blocks={self.max_blocks}: give "
                            f"min_blocks <= max_blocks")
        t = self.idle_release
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf")):
            raise SpecError(f"idle_release={t!r} must be positive seconds (or None to keep idle blocks)")

    @property
    def elastic(self) -> bool:
        """Whether this asks for anything but one block kept for the run."""
        return self.max_blocks > 1 or self.min_blocks > 1 or self.idle_release is not None

    def check_path(self, path: str) -> None:
        """Refuse elastic settings on a path whose executor cannot follow them, naming the path that can."""
        if self.elastic and path not in ELASTIC_PATHS:
            raise SpecError(f"max_blocks / min_blocks / idle_release apply to the {', '.join(ELASTIC_PATHS)} "
                            f"path, not {path}: its node gate and block replacement are sized to one block "
                            f"(docs/operations.md); use --path flux-jobs or drop them")
