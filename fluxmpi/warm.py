"""Warm holds: small batch jobs that keep nodes powered up until a run starts (elastic clusters).

On elastic clusters idle nodes power down and take minutes to come back. A warm hold is a small batch job on N
nodes: submitting it powers them up while the workflow starts; releasing it right before the workflow submits
its blocks leaves N warm, idle nodes, which Slurm prefers over powered-down ones (slurm.conf(5), Weight: "Node
weights are first considered among currently available nodes").

A hold must never outlive its duration or the process that made it (an abandoned hold is a cost on a cloud
bill). Three independent limits end it:
1. `sbatch --time`: Slurm kills the job at its time limit (whole minutes, rounded up).
2. The job's own script exits when the duration has passed (to the second).
3. A heartbeat: the owning process rewrites a small file on the shared filesystem every few seconds (a counter,
   from a thread); the hold script, on a compute node, re-reads it and exits once the content has not changed
   for `owner_timeout` seconds, or the file is gone. The owner's pid means nothing on a compute node (other
   host, other pid namespace) and the two clocks may differ, so the script compares the file's content with
   what it last saw, timed on its own clock: no pid, no mtime, no clock agreement needed. If the script cannot
   see the file at all (the directory is not shared with the compute nodes) it exits at once, and the owner
   reports that with the fix.
A process killed with SIGKILL thus leaves a hold for at most `owner_timeout` seconds plus one poll.
"""

from __future__ import annotations

import atexit
import getpass
import logging
import os
import shlex
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import FluxmpiError
from .slurm import (
    ACTIVE_STATES,
    RELEASE_TIMEOUT,
    DurationError,
    JobInfo,
    SlurmError,
    job_state,
    jobs,
    node_states,
    parse_duration,
    powered_up,
    sbatch,
    sbatch_minutes,
    scancel,
    wait_inactive,
)

logger = logging.getLogger(__name__)

WARM_JOB_NAME = "fluxmpi-warm"
WARM_DIR_VAR = "FLUXMPI_WARM_DIR"
DEFAULT_WARM_DIR = Path("~/.fluxmpi/warm")
DEFAULT_DURATION = 600                 # seconds a hold may last unless told otherwise
DEFAULT_OWNER_TIMEOUT = 60.0           # seconds a hold outlives its owner's last heartbeat
BEAT_INTERVAL = 2.0                    # seconds between the owner's heartbeats
POLL_INTERVAL = 2                      # seconds between the hold script's looks at the heartbeat
DEFAULT_WARM_TIMEOUT = 600.0           # bound on waiting for held nodes to power up before a hand-over


class WarmError(FluxmpiError, ValueError):
    """Bad input for a warm hold (nodes, duration, directory); the message names the value and the fix."""


def warm_dir(path: str | os.PathLike | None = None) -> Path:
    """Where heartbeats live: `path`, else $FLUXMPI_WARM_DIR, else ~/.fluxmpi/warm. Must be shared with the
    compute nodes (a home or project directory, not /tmp)."""
    chosen = Path(path or os.environ.get(WARM_DIR_VAR) or DEFAULT_WARM_DIR).expanduser()
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WarmError(f"warm directory {chosen} cannot be created ({err}): set {WARM_DIR_VAR} to a "
                        "writable directory shared with the compute nodes") from None
    return chosen.resolve()


def hold_script(heartbeat: Path, duration: int, owner_timeout: float, poll: int = POLL_INTERVAL) -> str:
    """The hold job's script: keep the allocation while the owner's heartbeat advances, at most `duration`."""
    beat = shlex.quote(str(heartbeat))
    out = shlex.quote(str(heartbeat.with_suffix(".out")))
    return f"""#!/bin/bash
# fluxmpi warm hold: keeps this job's nodes allocated (so powered up) while its owner is alive.
beat={beat}
end=$((SECONDS + {int(duration)}))
if [ ! -r "$beat" ]; then
  echo "fluxmpi-warm: heartbeat $beat is not visible on $(hostname): the warm directory is not shared with" \\
       "the compute nodes; set {WARM_DIR_VAR} to a shared directory (e.g. under your home)"
  exit 2
fi
echo "fluxmpi-warm: holding $SLURM_JOB_NODELIST on behalf of $(cat "$beat" | cut -d' ' -f2-)"
last=$(cat "$beat" 2>/dev/null); changed=$SECONDS
while [ "$SECONDS" -lt "$end" ]; do
  sleep {int(poll)}
  if [ ! -e "$beat" ]; then echo "fluxmpi-warm: released (heartbeat removed)"; exit 0; fi
  now=$(cat "$beat" 2>/dev/null)
  if [ "$now" != "$last" ]; then
    last=$now; changed=$SECONDS
  elif [ $((SECONDS - changed)) -ge {int(owner_timeout)} ]; then
    # Nobody will read this job's files any more: leave nothing behind.
    echo "fluxmpi-warm: owner silent for {int(owner_timeout)}s; ending the hold"; rm -f "$beat" {out}; exit 0
  fi
done
echo "fluxmpi-warm: duration of {int(duration)}s over; ending the hold"; rm -f "$beat"
"""


class _Heartbeat:
    """A daemon thread that rewrites the heartbeat file with a new counter every `interval` seconds."""

    def __init__(self, path: Path, interval: float = BEAT_INTERVAL):
        self.path, self.interval = path, interval
        self._stop = threading.Event()
        self._count = 0
        self.beat()
        self._thread = threading.Thread(target=self._run, name=f"fluxmpi-heartbeat-{path.stem}", daemon=True)
        self._thread.start()

    def beat(self) -> None:
        self._count += 1
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(f"{self._count} {socket.gethostname()} pid {os.getpid()}\n")
        os.replace(tmp, self.path)    # the script never reads half a line

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except OSError:
                pass          # a transient filesystem error: the next beat retries; the owner timeout allows it

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)


_OPEN_HOLDS: set["WarmHold"] = set()
_OPEN_LOCK = threading.Lock()


def _release_open_holds() -> None:
    # Normal interpreter exit (also after an uncaught exception): release what the process still holds.
    for hold in list(_OPEN_HOLDS):
        try:
            hold.release(wait=False)
        except (SlurmError, OSError):
            pass


atexit.register(_release_open_holds)


@dataclass(eq=False)
class WarmHold:
    """A running warm hold. Call release() right before submitting the work that should land on the nodes."""
    job_id: str
    nodes: int
    partition: str | None
    duration: int
    heartbeat: Path
    env: dict = field(default_factory=dict, repr=False)
    submitted: float = field(default_factory=time.time)
    warm_at: float | None = None          # when all its nodes were seen powered up
    hostlist: str = ""                     # the nodes it holds, once allocated
    problem: str | None = None             # why release_when_warm found no warm nodes
    released_at: float | None = None
    _beat: _Heartbeat | None = field(default=None, repr=False)

    @property
    def output(self) -> Path:
        return self.heartbeat.with_suffix(".out")

    def state(self) -> str | None:
        return job_state(self.job_id, self.env)

    def wait_warm(self, timeout: float) -> float:
        """Wait until every node of the hold is powered up; returns seconds since submission.

        Warm means the nodes' slurmd registered, not that the hold's script runs: Slurm 22.05 notices that a
        batch job's resumed nodes are ready only in its periodic job check (every 30 s), while the nodes are
        usable at once by the job submitted after the release.
        """
        deadline = time.monotonic() + timeout
        state, nodes = None, {}
        while time.monotonic() < deadline:
            job = next(iter(jobs([self.job_id], env=self.env)), None)
            state = job.state if job else None
            if state not in ACTIVE_STATES:
                raise SlurmError(f"warm hold {self.job_id} ended before its nodes were warm (state {state}): "
                                 f"{self._job_output() or 'no output'}")
            if job.nodes and state != "PENDING":
                nodes = node_states(job.nodes, self.env)
                if nodes and all(powered_up(s) for s in nodes.values()):
                    self.warm_at = self.warm_at or time.time()
                    self.hostlist = job.nodes
                    return self.warm_at - self.submitted
            time.sleep(0.5)
        raise SlurmError(f"warm hold {self.job_id} was {state} after {timeout:.0f}s and its nodes not all up "
                         f"({', '.join(f'{n} {s}' for n, s in nodes.items()) or 'none allocated'}): they did "
                         f"not power up in time (squeue -j {self.job_id}; sinfo -N)")

    def wait_ended(self, timeout: float, poll: float = 1.0) -> str | None:
        """Wait until the hold is over (released elsewhere, duration over, owner gone); returns its last state,
        or None if it is still active after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if state not in ACTIVE_STATES:
                return state
            if time.monotonic() >= deadline:
                return None
            time.sleep(poll)

    def release_when_warm(self, timeout: float = DEFAULT_WARM_TIMEOUT) -> bool:
        """The hand-over: wait (at most `timeout`) until the nodes are up, then release them. Returns whether
        they were warm; never raises for a hold that failed (the run then just starts cold), but keeps the
        reason in `problem`.

        Waiting costs nothing: work submitted earlier could not start before the nodes are up either, and on
        nodes still powering up a batch job waits for Slurm's periodic check (up to 30 s more) as well.
        """
        warm = False
        try:
            self.wait_warm(timeout)
            warm = True
        except SlurmError as err:
            self.problem = str(err)
        self.release()
        return warm

    def hand_over(self, timeout: float = DEFAULT_WARM_TIMEOUT, log: Callable[[str], None] | None = None) -> bool:
        """release_when_warm() for a run about to submit its blocks, saying what it waits for and how it went.
        The wait is bounded by `timeout` and by what is left of the hold's duration (it ends by itself then)."""
        left = max(1.0, self.submitted + self.duration - time.time())
        bound = min(timeout, left)
        if log:
            log(f"fluxmpi: waiting (at most {bound:.0f}s) for the {self.nodes} node(s) of warm hold {self.job_id} "
                "to be powered up, then releasing it for the blocks")
        warm = self.release_when_warm(bound)
        if log:
            if warm:
                log(f"fluxmpi: {self.nodes} node(s) warm ({self.hostlist}) {self.warm_at - self.submitted:.1f}s "
                    f"after the hold was submitted; released hold {self.job_id}: submitting the blocks")
            else:
                log(f"fluxmpi: warning: the warm hold gave no warm nodes, the blocks start cold: {self.problem}")
        return warm

    def release(self, wait: bool = True, timeout: float = RELEASE_TIMEOUT) -> None:
        """End the hold now and, with `wait`, until its nodes are free for the next job. Idempotent."""
        if self._beat:
            self._beat.stop()
            self._beat = None
        try:
            try:
                # scancel first, so Slurm lists the hold CANCELLED: released heartbeat-first, a hold once ended
                # FAILED in the test suite (its script can exit on the missing heartbeat as the scancel lands).
                if self.released_at is None and self.state() in ACTIVE_STATES:
                    scancel([self.job_id], self.env)
            finally:
                # Removing the heartbeat ends the hold even if scancel could not reach slurmctld.
                self.heartbeat.unlink(missing_ok=True)
            if wait:
                wait_inactive([self.job_id], self.env, timeout)
        finally:
            self.released_at = self.released_at or time.time()
            self.output.unlink(missing_ok=True)
            with _OPEN_LOCK:
                _OPEN_HOLDS.discard(self)

    def _job_output(self) -> str:
        try:
            return self.output.read_text(errors="replace").strip()[-800:]
        except OSError:
            return ""


def check_nodes(nodes) -> int:
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise WarmError(f"nodes {nodes!r} to warm: give a whole number of at least 1")
    return nodes


def check_warm_nodes(nodes, available: int | None = None, where: str = "", option: str = "--warm") -> int:
    """A run's `--warm N`: a whole number from 1 to the `available` nodes of `where` (more could never be
    allocated together: the hold would pend and warm nothing). Without `available`, only the lower bound."""
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise WarmError(f"{option} {nodes!r}: give the number of nodes to warm, at least 1")
    if available is not None and nodes > available:
        raise WarmError(f"{option} {nodes}: {where} has {available} node(s); give {option} 1..{available}")
    return nodes


def start_hold(nodes: int, duration: int | str = DEFAULT_DURATION, *, partition: str | None = None,
               env: dict | None = None, owner_timeout: float = DEFAULT_OWNER_TIMEOUT,
               directory: str | os.PathLike | None = None) -> WarmHold:
    """Submit a warm hold on `nodes` nodes and start its heartbeat; returns at once (see WarmHold.wait_warm)."""
    check_nodes(nodes)
    try:
        seconds = parse_duration(duration)
    except DurationError as err:
        raise WarmError(str(err)) from None
    if isinstance(owner_timeout, bool) or not isinstance(owner_timeout, (int, float)) \
            or not 3 * POLL_INTERVAL <= owner_timeout <= 3600:
        raise WarmError(f"owner timeout {owner_timeout!r}: give seconds from {3 * POLL_INTERVAL} to 3600 (how long "
                        "a hold outlives a vanished owner; raise it on filesystems with slow attribute caching)")
    base = warm_dir(directory)
    tag = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
    heartbeat = base / f"{tag}.beat"
    beat = _Heartbeat(heartbeat)
    options = [f"--job-name={WARM_JOB_NAME}", f"--nodes={nodes}", "--ntasks-per-node=1",
               f"--time={sbatch_minutes(seconds)}", "--no-requeue", f"--output={heartbeat.with_suffix('.out')}"]
    if partition:
        options.append(f"--partition={partition}")
    try:
        job_id = sbatch(options, hold_script(heartbeat, seconds, owner_timeout), env=env)
    except BaseException:
        beat.stop()
        heartbeat.unlink(missing_ok=True)
        raise
    hold = WarmHold(job_id, nodes, partition, seconds, heartbeat, dict(env or {}), _beat=beat)
    with _OPEN_LOCK:
        _OPEN_HOLDS.add(hold)
    return hold


@contextmanager
def warm_nodes(nodes: int, duration: int | str = DEFAULT_DURATION, *, partition: str | None = None,
               env: dict | None = None, owner_timeout: float = DEFAULT_OWNER_TIMEOUT,
               directory: str | os.PathLike | None = None,
               log: Callable[[str], None] | None = None) -> Iterator[WarmHold]:
    """Warm `nodes` nodes while the body runs; the hold ends at hold.release() (call it right before the
    blocks are submitted) or when the body exits, whichever comes first.

        with warm_nodes(4, "15m", partition=site.partition, env=site.env) as hold:
            ...                          # start the workflow
            hold.release_when_warm()     # just before parsl.load() submits the blocks
    """
    hold = start_hold(nodes, duration, partition=partition, env=env, owner_timeout=owner_timeout,
                      directory=directory)
    if log:
        log(f"fluxmpi: warming {nodes} node(s) with job {hold.job_id} (at most {hold.duration}s)")
    try:
        yield hold
    finally:
        was_released = hold.released_at is not None
        hold.release(wait=not was_released)
        if log and not was_released:
            log(f"fluxmpi: released warm hold {hold.job_id}")


def release_holds(env: dict | None = None, job_ids: list[str] | None = None,
                  timeout: float = RELEASE_TIMEOUT) -> list[JobInfo]:
    """Cancel this user's warm holds (or the given ones, if they are warm holds) and wait until their nodes are
    free. Returns the holds cancelled."""
    mine = [j for j in jobs(name=WARM_JOB_NAME, user=getpass.getuser(), env=env) if j.state in ACTIVE_STATES]
    if job_ids:
        unknown = sorted(set(job_ids) - {j.job_id for j in mine})
        if unknown:
            raise WarmError(f"job(s) {', '.join(unknown)} are not active warm holds of {getpass.getuser()} "
                            f"(squeue -n {WARM_JOB_NAME} lists them)")
        mine = [j for j in mine if j.job_id in job_ids]
    ids = [j.job_id for j in mine]
    scancel(ids, env)
    if ids:
        wait_inactive(ids, env, timeout)
    return mine
