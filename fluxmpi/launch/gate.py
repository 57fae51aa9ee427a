"""Admission by free nodes: hand a task to the executor only when its nodes are free.

Why: Parsl's MPIExecutor keeps tasks that do not fit in a per-block backlog, and when a finished task frees
nodes that still do not fit the next backlogged task, its manager recurses until RecursionError and drops the
finished task's result (the future never completes). A task larger than the block waits there forever. If
fluxmpi only submits what fits, the executor never backlogs, so neither defect can trigger, with stock Parsl.
Queued tasks are admitted first-fit in submission order, so a large task does not block smaller ones behind it.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from ..spec import SpecError


@dataclass
class _Waiting:
    nodes: int
    start: Callable[[], Future]
    proxy: Future
    label: str


class NodeGate:
    def __init__(self, capacity: int, what: str = "block"):
        if capacity < 1:
            raise SpecError(f"gate capacity {capacity} must be at least one node")
        self.capacity, self.what = capacity, what
        self.free = capacity
        self._queue: deque[_Waiting] = deque()
        self._lock = threading.Lock()

    def submit(self, nodes: int, start: Callable[[], Future], label: str = "task") -> Future:
        """Queue a task needing `nodes`; `start()` submits it to Parsl when they are free. Returns its future."""
        if nodes > self.capacity:
            raise SpecError(
                f"{label} asks for {nodes} nodes but the {self.what} has {self.capacity}: it could never run. "
                f"Ask for at most {self.capacity} nodes, or give the {self.what} more nodes (--nodes-per-block)")
        proxy: Future = Future()
        with self._lock:
            self._queue.append(_Waiting(nodes, start, proxy, label))
        self._admit()
        return proxy

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._queue)

    def _admit(self) -> None:
        ready = []
        with self._lock:
            for item in list(self._queue):
                if item.nodes <= self.free:
                    self.free -= item.nodes
                    self._queue.remove(item)
                    ready.append(item)
        for item in ready:
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
