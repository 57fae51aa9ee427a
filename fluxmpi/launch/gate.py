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

import itertools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

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
ADMITTER_IDLE_EXIT = 5.0   # seconds the admitting thread waits for work before it ends (a new one starts on demand)


@dataclass
class _Waiting:
    nodes: int
    start: Callable[[], Future]
    proxy: Future
    label: str
    seconds: float | None = None      # the task's declared walltime
    seq: int = 0                      # submission order


def fits_in(seconds: float | None, left: float | None) -> bool:
    """Whether a task of `seconds` (None: undeclared) may start in a block with `left` seconds (None: unknown)."""
    return seconds is None or left is None or seconds + START_SLACK <= left


class NodeGate:
    """Admits tasks into `capacity` nodes. `limit` (the configured block size) is what a task may ask for at
    most; `capacity` may be less while a block is shrunken (fluxmpi.launch.shaping): larger tasks then wait.

    Waiting tasks are kept in one queue per size (in submission order), so an admission looks at the head of each
    size, not at every waiting task: with thousands waiting, a pass over all of them per submission and per
    finished task made the driver's CPU per task grow with the run (docs/benchmarks.md, Scale)."""

    def __init__(self, capacity: int, what: str = "block", policy: str = "largest-first",
                 time_left: Callable[[], float | None] | None = None):
        if capacity < 1:
            raise SpecError(f"gate capacity {capacity} must be at least one node")
        self.capacity, self.what, self.policy = capacity, what, check_policy(policy)
        self.time_left = time_left        # seconds the block has left, None when unknown (see the module doc)
        self.limit = capacity
        self.free = capacity
        self._by_size: dict[int, deque[_Waiting]] = {}
        self._count = 0                  # tasks waiting
        self._timed = 0                  # ... of which declare a walltime
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._admitter: threading.Thread | None = None

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
            self._by_size.setdefault(nodes, deque()).append(_Waiting(nodes, start, proxy, label, seconds,
                                                                     next(self._seq)))
            self._count += 1
            self._timed += seconds is not None
        self._admit()
        return proxy

    @property
    def waiting(self) -> int:
        with self._lock:
            return self._count

    def _all_waiting(self) -> Iterator[_Waiting]:
        return itertools.chain.from_iterable(self._by_size.values())

    def idle_and_outlasted(self) -> list[str]:
        """Labels of the waiting tasks when nothing runs and none of them fits the block's time left (the block
        can take none of them: ending it brings a fresh one sooner); [] otherwise."""
        left = self.time_left() if self.time_left else None
        with self._lock:
            if not self._count or self.free < self.capacity or any(fits_in(w.seconds, left)
                                                                    for w in self._all_waiting()):
                return []
            return [f"{w.label}, a walltime of {w.seconds:.0f}s" for w in sorted(self._all_waiting(),
                                                                                key=lambda w: w.seq)]

    def poke(self) -> None:
        """Admit what fits now (after the block's time left changed: a fresh block started)."""
        self._admit()

    def smallest_waiting(self) -> int | None:
        """Nodes of the smallest task not yet admitted, or None when none waits."""
        with self._lock:
            return min((size for size, q in self._by_size.items() if q), default=None)

    def resize(self, capacity: int) -> None:
        """The block now has `capacity` nodes (1 to limit): tasks already admitted keep theirs."""
        if not 1 <= capacity <= self.limit:
            raise SpecError(f"gate capacity {capacity} must be 1 to {self.limit} nodes")
        with self._lock:
            self.free += capacity - self.capacity
            self.capacity = capacity
        self._admit()

    def _next(self, left: float | None) -> _Waiting | None:
        """Take the task to admit now, by the policy (see pick_next), or None. Called with the lock held. A task
        whose walltime no longer fits the block's time left is passed over, as one too large."""
        heads = []                 # per size that fits the free nodes: its earliest task that fits the time
        for size, queue in self._by_size.items():
            if size <= self.free and queue:
                head = next(((j, w) for j, w in enumerate(queue) if fits_in(w.seconds, left)), None)
                if head is not None:
                    heads.append((size, head))
        if not heads:
            return None
        if self.policy == "in-order":
            size, (j, item) = min(heads, key=lambda h: h[1][1].seq)
        else:
            size, (j, item) = max(heads, key=lambda h: h[0])    # one head per size: the earliest of the largest
        del self._by_size[size][j]       # j is 0 unless a timed task ahead of it no longer fits
        self._count -= 1
        self._timed -= item.seconds is not None
        return item

    def _admit(self) -> None:
        ready = []
        with self._lock:
            timed = self._timed > 0
        left = self.time_left() if self.time_left and timed else None    # asked only when a task declares one
        with self._lock:
            while (item := self._next(left)) is not None:
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
        with self._lock:
            self._wake.set()
            if self._admitter is None:
                self._admitter = threading.Thread(target=self._admit_loop, name="fluxmpi-gate", daemon=True)
                self._admitter.start()

    def _admit_loop(self) -> None:
        """One thread admits after tasks finish (not one thread per finished task); it ends when idle."""
        while True:
            if not self._wake.wait(ADMITTER_IDLE_EXIT):
                with self._lock:
                    if not self._wake.is_set():    # no finish since: end (the next one starts a new thread)
                        self._admitter = None
                        return
                continue
            self._wake.clear()
            try:
                self._admit()
            except Exception:  # noqa: BLE001 - this thread must live on, or no later finish admits anything
                logger.exception("admitting the next tasks failed; trying again at the next finish")

    def _release(self, nodes: int) -> None:
        with self._lock:
            self.free += nodes

    def cancel_waiting(self) -> int:
        """Fail every task not yet admitted (on shutdown); returns how many."""
        with self._lock:
            items = sorted(self._all_waiting(), key=lambda w: w.seq)
            self._by_size, self._count, self._timed = {}, 0, 0
        for item in items:
            item.proxy.cancel()
        return len(items)
