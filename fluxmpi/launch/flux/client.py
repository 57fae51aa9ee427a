"""One connection to a Flux instance (flux-python, e.g. over ssh://), driven by its own thread's reactor.

Flux handles are not thread-safe, so every Flux call happens in that thread; `submit` may be called from any
thread and wakes the reactor through a pipe (no polling delay). It follows every job through one stream, the job
manager's journal (events as the job manager posts them, with R on alloc: the nodes come free), rather than one
eventlog watch per job (read back from the KVS, tens of ms later here), and hands each job's JobEnd to the
caller's callback once the job has finished.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
from typing import Callable

from ...errors import FluxmpiError
from .jobspec import JobEnd

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 60.0
EARLY_JOBS_KEPT = 1000    # journal events of jobs not (yet) known to be ours, kept for this many jobs


class FluxConnectError(FluxmpiError, RuntimeError):
    """The instance could not be reached; says which URI and why."""


def expand_nodelist(nodelist) -> list[str]:
    """R's nodelist (['fxjbn[1-2]'] or 'fxjbn[1-2]') as host names in rank order."""
    from flux.hostlist import Hostlist

    text = ",".join(nodelist) if isinstance(nodelist, (list, tuple)) else str(nodelist or "")
    return list(Hostlist(text)) if text else []


class InstanceClient:
    """on_lost(why): called once, from the client thread, when the connection ends other than by close(), before
    the open jobs get their ends."""

    def __init__(self, uri: str, on_lost: Callable[[str], None] | None = None):
        self.uri = uri
        self._on_lost = on_lost
        self._queue: collections.deque = collections.deque()
        self._rfd, self._wfd = os.pipe()
        self._ready = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self.lost: str | None = None     # why the connection ended, if not by close(); set before the jobs' ends
        self._open: dict[int, tuple[JobEnd, Callable[[JobEnd], None]]] = {}   # key: id(end)
        self._hold_checks: dict[int, Callable[[], str | None]] = {}          # key: id(end)
        self._jobs: dict[int, JobEnd] = {}      # job id -> its JobEnd, until it has finished
        self._early: collections.OrderedDict[int, list] = collections.OrderedDict()   # events before the id
        self._withdraw_notes: collections.deque = collections.deque()   # withdraw_unstarted() calls to carry out
        self._thread = threading.Thread(target=self._run, name="fluxmpi-flux-jobs-client", daemon=True)

    # --- any thread -----------------------------------------------------------------------------------------
    def start(self, timeout: float = CONNECT_TIMEOUT) -> "InstanceClient":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise FluxConnectError(f"connecting to the Flux instance at {self.uri} did not finish within "
                                   f"{timeout:.0f}s (is FLUX_SSH a working ssh to its first node?)")
        if self._error is not None:
            raise FluxConnectError(f"cannot connect to the Flux instance at {self.uri}: {self._error}")
        return self

    def submit(self, jobspec: dict, on_end: Callable[[JobEnd], None],
               hold_back: Callable[[], str | None] | None = None) -> None:
        """Submit `jobspec`; `on_end(JobEnd)` is called once, from the client thread, when the job is over.
        hold_back(): asked when Flux gives the job its nodes, just before it starts; a reason it returns cancels
        the job instead (JobEnd.held_back says why), e.g. the time its block has left is now too short."""
        with self._lock:     # either queued before the thread's last look at the queue, or refused here
            closed = self._stopping or not self._thread.is_alive()
            if not closed:
                self._queue.append((json.dumps(jobspec), on_end, hold_back))
        if closed:
            on_end(JobEnd(error=f"the connection to {self.uri} is closed"))
            return
        os.write(self._wfd, b"j")

    def withdraw_unstarted(self, note: str) -> None:
        """Cancel every job of ours that Flux has not given its nodes yet; each gets its end with
        JobEnd.held_back = note (not a failure: the caller sends it elsewhere). A job that gets its nodes in the
        same moment is cancelled as it starts, which is also reported as held back."""
        with self._lock:
            if self._stopping or not self._thread.is_alive():
                return
            self._withdraw_notes.append(note)
        os.write(self._wfd, b"w")

    def close(self, timeout: float = 10.0) -> None:
        self._stopping = True
        try:
            os.write(self._wfd, b"q")
        except OSError:
            pass
        self._thread.join(timeout)

    # --- the client thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        import flux
        from flux.job import JournalConsumer

        try:
            self._h = flux.Flux(self.uri)
            # Sent before any submission, so the journal holds every event of every job submitted after it.
            self._journal_stream = JournalConsumer(self._h, full=False).set_callback(self._journal).start()
            self._h.fd_watcher_create(self._rfd, self._wake).start()
        except Exception as err:  # noqa: BLE001 - reported by start()
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        why = self._why = "the connection was closed"
        try:
            if self._h.reactor_run() < 0:
                why = "the Flux reactor failed (connection lost?)"
            else:
                why = self._why
        except Exception as err:  # noqa: BLE001 - every open job must still get an end
            why = f"the connection failed: {err}"
        with self._lock:
            if not self._stopping:
                self.lost = why
            lost = not self._stopping
            self._stopping = True
            queued, self._queue = list(self._queue), collections.deque()
        if lost and self._on_lost is not None:
            # First: the caller must stop sending here before the jobs' ends (and any retries they cause) arrive.
            self._on_lost(why)
        for end, on_end in list(self._open.values()) + [(JobEnd(), cb) for _, cb, _ in queued]:
            end.error = end.error or f"{why} before the job ended ({self.uri})"
            on_end(end)
        self._open.clear()

    def _wake(self, *_args) -> None:
        import flux.job

        os.read(self._rfd, 4096)
        if self._stopping:
            self._h.reactor_stop()
            return
        while self._withdraw_notes:
            self._withdraw(self._withdraw_notes.popleft())
        while True:
            with self._lock:
                if not self._queue:
                    break
                spec_json, on_end, hold_back = self._queue.popleft()
            end = JobEnd()
            self._open[id(end)] = (end, on_end)
            if hold_back is not None:
                self._hold_checks[id(end)] = hold_back
            try:
                flux.job.submit_async(self._h, spec_json).then(self._submitted, end)
            except Exception as err:  # noqa: BLE001
                self._finish(end, f"flux refused the job: {err}")

    def _withdraw(self, note: str) -> None:
        import flux.job

        for jobid, end in list(self._jobs.items()):
            if "alloc" in end.times or end.held_back:
                continue
            self._hold_checks.pop(id(end), None)
            end.held_back = note
            flux.job.cancel_async(self._h, jobid, note)

    def _submitted(self, fut, end: JobEnd) -> None:
        import flux.job

        try:
            jobid = int(fut.get_id())
        except Exception as err:  # noqa: BLE001
            self._finish(end, f"flux refused the job: {err}")
            return
        end.jobid = flux.job.JobID(jobid).f58
        self._jobs[jobid] = end
        for event in self._early.pop(jobid, []):    # the journal can be ahead of the submit response
            self._apply(jobid, end, event)

    def _journal(self, event) -> None:
        """One event of any job of the instance, from the job manager's journal (one stream for all jobs)."""
        if event is None:            # the stream ended: the connection is going away
            self._why = "the instance ended its job journal stream"
            self._h.reactor_stop()
            return
        jobid = int(event.jobid)
        end = self._jobs.get(jobid)
        if end is not None:
            self._apply(jobid, end, event)
            return
        self._early.setdefault(jobid, []).append(event)
        while len(self._early) > EARLY_JOBS_KEPT:      # jobs that are not ours (someone used `flux proxy`)
            self._early.pop(next(iter(self._early)))

    def _apply(self, jobid: int, end: JobEnd, event) -> None:
        end.times[event.name] = event.timestamp
        if event.name == "alloc":
            if event.R:
                try:
                    end.nodes = expand_nodelist(event.R["execution"]["nodelist"])
                except (KeyError, TypeError):
                    pass            # the nodes are a nicety; the job's end is what matters
            check = self._hold_checks.pop(id(end), None)
            note = check() if check is not None else None
            if note:
                import flux.job
                end.held_back = note
                flux.job.cancel_async(self._h, jobid, note)
        elif event.name == "exception" and int(event.context.get("severity", 0)) == 0 and end.exception is None:
            end.exception = (str(event.context.get("type")), str(event.context.get("note", "")))
        elif event.name == "finish":
            # Every job shell has exited: the outcome is known (Flux frees the nodes after, up to clean).
            end.status = int(event.context.get("status", 0))
            self._jobs.pop(jobid, None)
            self._finish(end, None)
        elif event.name == "clean":      # over without ever starting (an exception before it ran)
            self._jobs.pop(jobid, None)
            self._finish(end, None)

    def _finish(self, end: JobEnd, error: str | None) -> None:
        self._hold_checks.pop(id(end), None)
        entry = self._open.pop(id(end), None)
        if entry is None:
            return
        if error:
            end.error = error
        try:
            entry[1](end)
        except Exception:  # noqa: BLE001 - a caller's bug must not stop the reactor for every other job
            import traceback
            traceback.print_exc()
