"""Admission by free nodes: hand a task to the executor only when its nodes are free.

Why: Parsl's MPIExecutor keeps tasks that do not fit in a per-block backlog, and when a finished task frees
nodes that still do not fit the next backlogged task, its manager recurses until RecursionError and drops the
finished task's result (the future never completes). A task larger than the block waits there forever. If
fluxmpi only submits what fits, the executor never backlogs, so neither defect can trigger, with stock Parsl.

Which waiting task goes next when nodes free up (the admission policy):
- largest-first (default): the largest task that fits, the earliest submitted among equals. Large tasks are
  not overtaken forever by a stream of small ones, and packing big pieces first wastes fewer node-seconds: on
  equal-length tasks of 1..4 nodes on 4 nodes, a simulated zero-overhead schedule comes within 1.00-1.07x of
  the lower bound, against 1.01-1.18x in submission order (docs/benchmarks.md).
- in-order: the earliest submitted task that fits (first-fit in submission order).
A task that does not fit never blocks one behind it that does, under either policy.

Walltime-aware admission: a task that declares how long it runs (`seconds`, its spec's walltime) is admitted
only while that fits in the time its block has left (`time_left`, given by the executor from the batch system's
end time of the running block); one that no longer fits waits for the next block. Tasks without a walltime are
admitted as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Sequence

from ..spec import SpecError

logger = logging.getLogger(__name__)

ADMISSION_POLICIES = ("largest-first", "in-order")


def check_policy(policy: str) -> str:
    if policy not in ADMISSION_POLICIES:
        raise SpecError(f"admission policy {policy!r} is not known: choose {' or '.join(ADMISSION_POLICIES)}")
    return policy


def pick_next(needs: Sequence[int], free: int, policy: str = "largest-first") -> int | None:
    """Index into `needs` (nodes of each waiting task, in submission order) of the task to admit into `free`
    nodes, or None when none fits."""
    fitting = [i for i, n in enumerate(needs) if n <= free]
    if not fitting:
        return None
    if policy == "in-order":
        return fitting[0]
    return max(fitting, key=lambda i: (needs[i], -i))


# Seconds a task may take from admission to running, counted against its block's time left.
START_SLACK = 2.0


@dataclass
class _Waiting:
    nodes: int
    start: Callable[[], Future]
    proxy: Future
    label: str
    seconds: float | None = None      # the task's declared walltime


def fits_in(seconds: float | None, left: float | None) -> bool:
    """Whether a task of `seconds` (None: undeclared) may start in a block with `left` seconds (None: unknown)."""
    return seconds is None or left is None or seconds + START_SLACK <= left


class NodeGate:
    """Admits tasks into `capacity` nodes. `limit` (the configured block size) is what a task may ask for at
    most; `capacity` may be less while a block is shrunken (fluxmpi.launch.shaping): larger tasks then wait."""

    def __init__(self, capacity: int, what: str = "block", policy: str = "largest-first",
                 time_left: Callable[[], float | None] | None = None):
        if capacity < 1:
            raise SpecError(f"gate capacity {capacity} must be at least one node")
        self.capacity, self.what, self.policy = capacity, what, check_policy(policy)
        self.time_left = time_left        # seconds the block has left, None when unknown (see the module doc)
        self.limit = capacity
        self.free = capacity
        self._queue: deque[_Waiting] = deque()
        self._lock = threading.Lock()

    def submit(self, nodes: int, start: Callable[[], Future], label: str = "task",
               seconds: float | None = None) -> Future:
        """Queue a task needing `nodes` (for `seconds`, if it declares a walltime); `start()` submits it to Parsl
        when they are free (and its walltime fits the block's time left). Returns its future."""
        if nodes > self.limit:
            raise SpecError(
                f"{label} asks for {nodes} nodes but the {self.what} has {self.limit}: it could never run. "
                f"Ask for at most {self.limit} nodes, or give the {self.what} more nodes (--nodes-per-block)")
        proxy: Future = Future()
        with self._lock:
            self._queue.append(_Waiting(nodes, start, proxy, label, seconds))
        self._admit()
        return proxy

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._queue)

    def idle_and_outlasted(self) -> list[str]:
        """Labels of the waiting tasks when nothing runs and none of them fits the block's time left (the block
        can take none of them: ending it brings a fresh one sooner); [] otherwise."""
        left = self.time_left() if self.time_left else None
        with self._lock:
            if not self._queue or self.free < self.capacity or any(fits_in(w.seconds, left) for w in self._queue):
                return []
            return [f"{w.label}, a walltime of {w.seconds:.0f}s" for w in self._queue]

    def poke(self) -> None:
        """Admit what fits now (after the block's time left changed: a fresh block started)."""
        self._admit()

    def smallest_waiting(self) -> int | None:
        """Nodes of the smallest task not yet admitted, or None when none waits."""
        with self._lock:
            return min((w.nodes for w in self._queue), default=None)

    def resize(self, capacity: int) -> None:
        """The block now has `capacity` nodes (1 to limit): tasks already admitted keep theirs."""
        if not 1 <= capacity <= self.limit:
            raise SpecError(f"gate capacity {capacity} must be 1 to {self.limit} nodes")
        with self._lock:
            self.free += capacity - self.capacity
            self.capacity = capacity
        self._admit()

    def _admit(self) -> None:
        ready = []
        with self._lock:
            timed = any(w.seconds is not None for w in self._queue)
        left = self.time_left() if self.time_left and timed else None    # asked only when a task declares one
        with self._lock:
            # A task whose walltime no longer fits the block's time left is passed over, as one too large.
            while (i := pick_next([w.nodes if fits_in(w.seconds, left) else self.capacity + 1 for w in self._queue],
                                  self.free, self.policy)) is not None:
                item = self._queue[i]
                del self._queue[i]
                self.free -= item.nodes
                ready.append(item)
        for item in ready:
            item.proxy.fluxmpi_admitted = time.time()    # when its nodes were free (the runner's records)
            logger.debug("admitted %s (%d nodes; %d of %d free now)", item.label, item.nodes, self.free, self.capacity)
            try:
                inner = item.start()
            except BaseException as err:  # submission itself failed: free the nodes, fail this task only
                self._release(item.nodes)
                item.proxy.set_exception(err)
                continue
            inner.add_done_callback(lambda f, it=item: self._finished(it, f))

    def _finished(self, item: _Waiting, inner: Future) -> None:
        self._release(item.nodes)
        if inner.cancelled():
            item.proxy.cancel()
        elif inner.exception() is not None:
            item.proxy.set_exception(inner.exception())
        else:
            item.proxy.set_result(inner.result())
        # Admit the next tasks off Parsl's callback thread: submitting from inside it re-enters the DFK.
        threading.Thread(target=self._admit, name="fluxmpi-gate", daemon=True).start()

    def _release(self, nodes: int) -> None:
        with self._lock:
            self.free += nodes

    def cancel_waiting(self) -> int:
        """Fail every task not yet admitted (on shutdown); returns how many."""
        with self._lock:
            items, self._queue = list(self._queue), deque()
        for item in items:
            item.proxy.cancel()
        return len(items)
