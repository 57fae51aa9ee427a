"""The one Slurm client: every sbatch, squeue, sinfo, scontrol and scancel fluxmpi runs goes through here.

One failure rule: a command that cannot run, does not answer within its bound, or fails raises SlurmError
saying which command and why; a caller that must not stop for one slow answer (a run's watch on its blocks)
catches it. Durations and hostlists are read here too, so they mean the same everywhere.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass

from .errors import FluxmpiError

logger = logging.getLogger(__name__)

BATCH_SYSTEM = "Slurm"                 # how messages name it

COMMAND_TIMEOUT = 30.0                 # bound on any one Slurm client command
RELEASE_TIMEOUT = 30.0                 # bound on waiting for cancelled jobs to leave their nodes
# Job states in which a job still holds (or is about to hold) nodes.
ACTIVE_STATES = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                           "RESIZING", "SIGNALING", "STAGE_OUT"})


class DurationError(FluxmpiError, ValueError):
    """A duration (--warm-for, --for) that cannot be read; the message says how to write it."""


class SlurmError(FluxmpiError, RuntimeError):
    """A Slurm command failed or did not answer in time; the message names the command and what it said."""


# --- running Slurm client commands ------------------------------------------------------------

def _environ(env: dict | None) -> dict:
    return {**os.environ, **(env or {})}


def run_slurm(argv: list[str], env: dict | None = None, timeout: float = COMMAND_TIMEOUT,
              input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a Slurm client command with `env` applied; SlurmError if it is missing, hangs or (check) fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=_environ(env), timeout=timeout,
                              input=input)
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found: this machine has no Slurm client commands on PATH") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"`{shlex.join(argv)}` did not answer within {timeout:.0f}s: is slurmctld reachable "
                         f"(SLURM_CONF={_environ(env).get('SLURM_CONF', '/etc/slurm/slurm.conf')})?") from None
    if check and proc.returncode != 0:
        raise SlurmError(f"`{shlex.join(argv)}` failed (exit {proc.returncode}): "
                         f"{(proc.stderr or proc.stdout).strip()[:500]}")
    return proc


def sbatch(options: list[str], script: str, env: dict | None = None) -> str:
    """Submit `script` (given on stdin) with sbatch `options`; returns the job id."""
    proc = run_slurm(["sbatch", "--parsable", *options], env=env, input=script)
    job_id = proc.stdout.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {proc.stdout.strip()!r} {proc.stderr.strip()!r}")
    return job_id


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    name: str
    state: str
    nodes: str      # allocated nodes (hostlist), empty while it pends


def jobs(job_ids: list[str] | None = None, name: str | None = None, user: str | None = None,
         env: dict | None = None) -> list[JobInfo]:
    """Jobs Slurm still knows (every state, including finished ones it keeps for MinJobAge)."""
    argv = ["squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%N"]
    if job_ids:
        argv += ["-j", ",".join(job_ids)]
    if name:
        argv += ["-n", name]
    if user:
        argv += ["-u", user]
    proc = run_slurm(argv, env=env, check=False)
    if proc.returncode != 0:
        if job_ids and "Invalid job id" in proc.stderr:
            return []        # purged after MinJobAge: Slurm no longer knows it
        raise SlurmError(f"`{shlex.join(argv)}` failed: {proc.stderr.strip()[:300]}")
    found = []
    for line in proc.stdout.splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4:
            found.append(JobInfo(*parts))
    return found


def job_state(job_id: str, env: dict | None = None) -> str | None:
    """The job's state (PENDING, CONFIGURING, RUNNING, COMPLETING, CANCELLED, ...); None if Slurm forgot it."""
    for job in jobs([job_id], env=env):
        if job.job_id == job_id:
            return job.state
    return None


def node_states(hostlist: str, env: dict | None = None) -> dict[str, str]:
    """sinfo's state of each node in `hostlist`, with power suffixes: idle~ (powered down), mixed# (powering
    up), idle% (powering down); see sinfo(1)."""
    proc = run_slurm(["sinfo", "-h", "-N", "-n", hostlist, "-o", "%N %T"], env=env)
    return dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())


def powered_up(state: str) -> bool:
    """A node state with no flag suffix (power saving ~ # % !, not responding *, reboot @ ^): its slurmd is up,
    registered and usable."""
    return bool(state) and state[-1].isalpha() and not state.startswith(("down", "drain", "fail"))


def scancel(job_ids: list[str], env: dict | None = None) -> None:
    if job_ids:
        run_slurm(["scancel", *job_ids], env=env)


cancel = scancel     # the name fluxmpi.schedulers' callers use for either batch system


def wait_inactive(job_ids: list[str], env: dict | None = None, timeout: float = RELEASE_TIMEOUT) -> None:
    """Wait until none of `job_ids` holds nodes any more (finished and no longer COMPLETING)."""
    deadline = time.monotonic() + timeout
    active: list[JobInfo] = []
    while time.monotonic() < deadline:
        active = [j for j in jobs(job_ids, env=env) if j.state in ACTIVE_STATES]
        if not active:
            return
        time.sleep(0.3)
    raise SlurmError(f"timed out after {timeout:.0f}s waiting for job(s) to leave their nodes: "
                     + ", ".join(f"{j.job_id} {j.state}" for j in active))


# --- what the blocks' jobs and nodes are doing ------------------------------------------------------------

# Node states (sinfo -t) in which a node cannot run a job.
UNUSABLE_NODE_STATES = "down,drain,fail,no_respond"


def job_states(job_ids: list[str], env: dict | None = None) -> dict[str, dict]:
    """{job id: {"state", "reason", "nodes"}} from squeue, Slurm's reason kept (TimeLimit, NodeDown); a job it no
    longer lists is state "GONE"."""
    if not job_ids:
        return {}
    argv = ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%r|%N"]
    proc = run_slurm(argv, env=env, check=False)
    found = {}
    for line in proc.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 4 and parts[0] in job_ids:
            found[parts[0]] = {"state": parts[1], "reason": parts[2], "nodes": parts[3]}
    if proc.returncode != 0 and not found and len(job_ids) > 1:
        raise SlurmError(f"`{shlex.join(argv)}` failed: {proc.stderr.strip()[:300]}")
    return {j: found.get(j, {"state": "GONE", "reason": "no longer listed by squeue", "nodes": ""})
            for j in job_ids}


def job_start_times(job_ids: list[str], env: dict | None = None) -> dict[str, float]:
    """{job id: when it started running (epoch seconds; Slurm keeps whole seconds)} for the jobs squeue still
    lists that have started; a job still pending, or no longer listed, is left out."""
    if not job_ids:
        return {}
    proc = run_slurm(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%S"], env=env, check=False)
    out = {}
    for line in proc.stdout.splitlines():
        job, _, rest = line.partition("|")
        state, _, start = rest.partition("|")
        if state == "PENDING":    # its %S is when Slurm expects to start it
            continue
        if (t := _epoch(start.strip())) is not None:     # N/A: not started
            out[job] = t
    return {j: t for j, t in out.items() if j in job_ids}


def job_end_times(job_ids: list[str], env: dict | None = None) -> dict[str, float]:
    """{job id: when Slurm will end it (epoch seconds: its start plus its time limit)} for the running jobs."""
    if not job_ids:
        return {}
    proc = run_slurm(["squeue", "-h", "-j", ",".join(job_ids), "-t", "RUNNING", "-o", "%i|%e"], env=env, check=False)
    out = {}
    for line in proc.stdout.splitlines():
        job, _, end = line.partition("|")
        if (t := _epoch(end.strip())) is not None:       # N/A or Unknown: no limit known
            out[job] = t
    return {j: t for j, t in out.items() if j in job_ids}


def job_spans(job_ids: list[str], env: dict | None = None) -> dict[str, dict]:
    """{job id: {"start", "end", "nodes"}} for the jobs squeue still lists (MinJobAge after they end): start and
    end in epoch seconds, start None for a job that never ran, end None while it runs (Slurm's %e of a running
    job is only its limit)."""
    if not job_ids:
        return {}
    proc = run_slurm(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%T|%S|%e|%D"], env=env,
                     check=False)
    out = {}
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) != 5 or parts[0] not in job_ids:
            continue
        start, end = _epoch(parts[2]), _epoch(parts[3])
        if parts[1] == "PENDING":    # its %S is when Slurm expects to start it
            start = None
        running = parts[1] in ("RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED")
        out[parts[0]] = {"start": start, "end": None if running else end,
                         "nodes": int(parts[4]) if parts[4].isdigit() else 0}
    return out


def _epoch(text: str) -> float | None:
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))    # squeue prints the local time zone
    except ValueError:       # N/A, Unknown
        return None


def unusable_nodes(partition: str, env: dict | None = None) -> dict[str, str]:
    """{node: "Slurm lists it STATE (reason)"} of the partition's nodes Slurm will not run jobs on."""
    proc = run_slurm(["sinfo", "-h", "-N", "-p", partition, "-t", UNUSABLE_NODE_STATES, "-o", "%N|%T|%E"], env=env)
    found = {}
    for line in proc.stdout.splitlines():
        node, _, rest = line.partition("|")
        state, _, reason = rest.partition("|")
        if node:
            found[node] = f"Slurm lists it {state}" + (f" ({reason})" if reason and reason != "none" else "")
    return found


def partition_nodes(partition: str, env: dict | None = None) -> list[str]:
    """Every node of `partition`, whatever its state."""
    proc = run_slurm(["sinfo", "-h", "-N", "-p", partition, "-o", "%N"], env=env)
    return sorted({line.strip() for line in proc.stdout.splitlines() if line.strip()})


def any_unresponsive(hostlist: str, env: dict | None = None) -> bool:
    """Whether Slurm marks any node of `hostlist` not responding (its state ends in `*`)."""
    if not hostlist or hostlist in ("(null)", "n/a"):
        return False
    return any(state.strip().endswith("*") for state in node_states(hostlist, env).values())


def expand_hostlist(hostlist: str, env: dict | None = None) -> list[str]:
    """["n1", "n2"] from "n[1-2]", by Slurm itself (scontrol reads slurm.conf but asks no controller); [] for
    an empty list."""
    if not hostlist or hostlist in ("(null)", "n/a"):
        return []
    names = run_slurm(["scontrol", "show", "hostnames", hostlist], env=env).stdout.split()
    if not names:
        raise SlurmError(f"`scontrol show hostnames {hostlist}` printed no names")
    return names


# --- durations ----------------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNIT_RE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(text: str | int | float) -> int:
    """Seconds in '90s', '10m', '1h30m', '2d', 'HH:MM:SS' or 'MM:SS'. A bare number is refused (seconds or
    minutes? sbatch reads minutes, most tools seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower()
        if re.fullmatch(r"\d+(:\d{1,2}){1,2}", s):
            parts = [int(p) for p in s.split(":")]
            if any(p >= 60 for p in parts[1:]):
                raise DurationError(f"duration {text!r}: minutes and seconds must be below 60")
            seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
        elif s and _UNIT_RE.sub("", s) == "" and _UNIT_RE.findall(s):
            seconds = sum(float(n) * _UNITS[u] for n, u in _UNIT_RE.findall(s))
        elif re.fullmatch(r"\d+(\.\d+)?", s):
            raise DurationError(f"duration {text!r} has no unit: write e.g. {s}m or {s}s (or HH:MM:SS)")
        else:
            raise DurationError(f"duration {text!r} is not understood: write e.g. 90s, 10m, 1h30m or 01:30:00")
    if not 1 <= seconds <= 7 * 86400:
        raise DurationError(f"duration {text!r} is out of range: give from 1 second to 7 days")
    return int(round(seconds))


def sbatch_minutes(seconds: float) -> int:
    """sbatch --time in whole minutes (Slurm's unit), rounded up so the script's own limit comes first."""
    return max(1, int(-(-(seconds + 30) // 60)))


