"""The one PBS Pro (OpenPBS) client: every qsub, qstat, qdel and pbsnodes fluxmpi runs goes through here.

The same failure rule as fluxmpi.slurm: a command that cannot run, does not answer within its bound, or fails
raises PBSError naming the command and what it said. Where a run's watch on its blocks reads job states, PBS's
one-letter states are given Slurm's names (`STATE_NAMES`), so one watch serves both schedulers; PBS's own letter
stays in the reason. The JSON forms (`-F json`, OpenPBS 19 and later, PBS Pro 2020 and later) are read, never
the column layouts, which differ between versions.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import time

from .errors import FluxmpiError

logger = logging.getLogger(__name__)

BATCH_SYSTEM = "PBS"                 # how messages name it

COMMAND_TIMEOUT = 30.0                 # bound on any one PBS client command

# PBS job states (qstat(1B)) by the Slurm name the block watch understands.
STATE_NAMES = {
    "Q": "PENDING", "W": "PENDING", "T": "PENDING", "H": "PENDING", "M": "PENDING",   # queued, waiting, moving, held
    "B": "RUNNING", "R": "RUNNING",
    "E": "COMPLETING",               # exiting: the job's processes are being ended and its files returned
    "S": "SUSPENDED", "U": "SUSPENDED",
    "F": "COMPLETED", "X": "COMPLETED",   # finished (kept with job_history_enable); FAILED when its exit says so
}
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "COMPLETING", "SUSPENDED"})
# pbsnodes states in which a node takes no new job (a node may list several, comma-separated).
UNUSABLE_NODE_STATES = frozenset({"down", "offline", "state-unknown", "stale", "unknown", "unresolvable",
                                  "maintenance", "sleep"})


class PBSError(FluxmpiError, RuntimeError):
    """A PBS command failed or did not answer in time; the message names the command and what it said."""


def _environ(env: dict | None) -> dict:
    return {**os.environ, **(env or {})}


def run_pbs(argv: list[str], env: dict | None = None, timeout: float = COMMAND_TIMEOUT,
            input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a PBS client command with `env` applied; PBSError if it is missing, hangs or (check) fails."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=_environ(env), timeout=timeout, input=input)
    except FileNotFoundError:
        raise PBSError(f"{argv[0]} not found: this machine has no PBS client commands on PATH "
                       f"(PBS_EXEC/bin, e.g. /opt/pbs/bin)") from None
    except subprocess.TimeoutExpired:
        raise PBSError(f"`{shlex.join(argv)}` did not answer within {timeout:.0f}s: is the PBS server reachable "
                       f"(PBS_CONF_FILE={_environ(env).get('PBS_CONF_FILE', '/etc/pbs.conf')})?") from None
    if check and proc.returncode != 0:
        raise PBSError(f"`{shlex.join(argv)}` failed (exit {proc.returncode}): "
                       f"{(proc.stderr or proc.stdout).strip()[:500]}")
    return proc


def _json(argv: list[str], env: dict | None = None, check: bool = True) -> dict:
    proc = run_pbs(argv, env=env, check=check)
    text = proc.stdout.strip()
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PBSError(f"`{shlex.join(argv)}` printed no JSON ({err}): {text[:200]!r}") from None


def qsub(script_path: str, options: list[str] | None = None, env: dict | None = None) -> str:
    """Submit a job script; returns the job id (e.g. "12.server")."""
    proc = run_pbs(["qsub", *(options or []), script_path], env=env)
    job_id = proc.stdout.strip().splitlines()[-1].strip() if proc.stdout.strip() else ""
    if not job_id:
        raise PBSError(f"qsub printed no job id: {proc.stdout.strip()!r} {proc.stderr.strip()!r}")
    return job_id


def qdel(job_ids: list[str], env: dict | None = None) -> None:
    """Delete jobs, finished ones included (PBS answers 'Job has finished' for those; that is not an error)."""
    if not job_ids:
        return
    proc = run_pbs(["qdel", "-W", "force", *job_ids], env=env, check=False)
    if proc.returncode and "finished" not in proc.stderr and "Unknown Job Id" not in proc.stderr:
        raise PBSError(f"`qdel -W force {' '.join(job_ids)}` failed (exit {proc.returncode}): "
                       f"{proc.stderr.strip()[:300]}")


cancel = qdel     # the name fluxmpi.schedulers' callers use for either batch system


# --- jobs ---------------------------------------------------------------------------------------

def exec_hosts(exec_host: str) -> list[str]:
    """["n1", "n2"] from PBS's exec_host "n1/0*2+n2/0*2" (a host once, in order); [] for an empty one."""
    hosts: list[str] = []
    for chunk in (exec_host or "").split("+"):
        host = chunk.split("/", 1)[0].strip()
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def _same_job(listed: str, asked: str) -> bool:
    # qstat answers with the full id ("12.server.domain"); callers may hold the short one qsub printed.
    return listed == asked or listed.split(".", 1)[0] == asked.split(".", 1)[0]


def job_state_of(job: dict) -> tuple[str, str]:
    """(Slurm-named state, reason) of one job of `qstat -f -F json`: a finished job with a non-zero exit is
    FAILED, one PBS deleted is CANCELLED (exit -1 or above 256: killed by a signal, e.g. qdel, 271 = 256 + 15)."""
    letter = job.get("job_state", "?")
    state = STATE_NAMES.get(letter, "UNKNOWN")
    reason = f"PBS state {letter}"
    comment = job.get("comment", "")
    if comment:
        reason += f": {comment}"
    if state == "COMPLETED" and "Exit_status" in job:
        code = int(job["Exit_status"])
        reason += f", Exit_status={code}"
        if code > 256 or code < 0:
            state = "CANCELLED"
        elif code:
            state = "FAILED"
    return state, reason


def job_states(job_ids: list[str], env: dict | None = None) -> dict[str, dict]:
    """{job id: {"state", "reason", "nodes"}} from `qstat -x -f -F json` (finished jobs too, where the server
    keeps history); "nodes" is comma-separated. A job PBS no longer lists is state "GONE"."""
    if not job_ids:
        return {}
    data = _json(["qstat", "-x", "-f", "-F", "json", *job_ids], env=env, check=False)
    found = {}
    for listed, job in (data.get("Jobs") or {}).items():
        for asked in job_ids:
            if _same_job(listed, asked):
                state, reason = job_state_of(job)
                found[asked] = {"state": state, "reason": reason,
                                "nodes": ",".join(exec_hosts(job.get("exec_host", "")))}
    if not found and len(job_ids) > 1 and not data:
        raise PBSError(f"`qstat -x -f -F json {' '.join(job_ids)}` listed none of the jobs")
    return {j: found.get(j, {"state": "GONE", "reason": "no longer listed by qstat -x", "nodes": ""})
            for j in job_ids}


def job_start_times(job_ids: list[str], env: dict | None = None) -> dict[str, float]:
    """{job id: when it started running (epoch seconds)} for the jobs that have started (qstat's `stime`)."""
    if not job_ids:
        return {}
    data = _json(["qstat", "-x", "-f", "-F", "json", *job_ids], env=env, check=False)
    out = {}
    for listed, job in (data.get("Jobs") or {}).items():
        stime = _pbs_time(job.get("stime"))
        if stime is None or job.get("job_state") in ("Q", "H", "W", "T"):
            continue
        for asked in job_ids:
            if _same_job(listed, asked):
                out[asked] = stime
    return out


def job_end_times(job_ids: list[str], env: dict | None = None) -> dict[str, float]:
    """{job id: when PBS will end it (its start plus its Resource_List.walltime)} for the jobs that have started."""
    starts = job_start_times(job_ids, env)
    if not starts:
        return {}
    data = _json(["qstat", "-x", "-f", "-F", "json", *starts], env=env, check=False)
    out = {}
    for listed, job in (data.get("Jobs") or {}).items():
        walltime = (job.get("Resource_List") or {}).get("walltime", "")
        parts = walltime.split(":")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            continue
        seconds = int(parts[0]) * 3600 + int(parts[1]) * 60 + int(parts[2])
        for asked, start in starts.items():
            if _same_job(listed, asked):
                out[asked] = start + seconds
    return out


def job_spans(job_ids: list[str], env: dict | None = None) -> dict[str, dict]:
    """{job id: {"start", "end", "nodes"}} from `qstat -x -f -F json`: stime (None for a job that never ran),
    obittime (None while it runs) and the hosts of exec_host."""
    if not job_ids:
        return {}
    data = _json(["qstat", "-x", "-f", "-F", "json", *job_ids], env=env, check=False)
    out = {}
    for listed, job in (data.get("Jobs") or {}).items():
        start, end = _pbs_time(job.get("stime")), _pbs_time(job.get("obittime"))
        if job.get("job_state") in ("Q", "H", "W", "T"):
            start = None
        for asked in job_ids:
            if _same_job(listed, asked):
                out[asked] = {"start": start, "end": end if job.get("job_state") in ("F", "X") else None,
                              "nodes": len(exec_hosts(job.get("exec_host", "")))}
    return out


def _pbs_time(text: str | None) -> float | None:
    try:
        return time.mktime(time.strptime(text or "", "%a %b %d %H:%M:%S %Y"))
    except ValueError:
        return None


def any_unresponsive(hostlist: str, env: dict | None = None) -> bool:
    """Whether PBS marks any node of the comma-separated `hostlist` down or unknown."""
    hosts = expand_hostlist(hostlist)
    return bool(hosts) and any(node in hosts for node in unusable_nodes(None, env))


def expand_hostlist(hostlist: str, env: dict | None = None) -> list[str]:
    """PBS lists hosts plainly: "n1,n2" -> ["n1", "n2"]."""
    return [h for h in (hostlist or "").split(",") if h and h not in ("(null)", "n/a")]


# --- nodes and queues -------------------------------------------------------------------------------

def nodes_info(env: dict | None = None) -> dict[str, dict]:
    """{node: its attributes} from `pbsnodes -a -F json`."""
    return _json(["pbsnodes", "-a", "-F", "json"], env=env).get("nodes") or {}


def node_queue(info: dict) -> str | None:
    """The queue a node is tied to (its `queue` attribute), None when any queue may use it."""
    return info.get("queue") or None


def queue_nodes(queue: str | None, env: dict | None = None, info: dict | None = None) -> list[str]:
    """The nodes jobs of `queue` may run on: those tied to it, or, when none is, every node not tied to another."""
    info = nodes_info(env) if info is None else info
    tied = sorted(n for n, a in info.items() if queue and node_queue(a) == queue)
    return tied or sorted(n for n, a in info.items() if node_queue(a) is None)


partition_nodes = queue_nodes    # the block-shaping rule's word for it (fluxmpi.launch.shaping)


def unusable_nodes(queue: str | None, env: dict | None = None) -> dict[str, str]:
    """{node: "PBS lists it STATE (comment)"} of the queue's nodes PBS will not start jobs on."""
    info = nodes_info(env)
    found = {}
    for node in queue_nodes(queue, info=info):
        states = {s.strip() for s in str(info[node].get("state", "")).split(",")}
        bad = states & UNUSABLE_NODE_STATES
        if bad:
            comment = info[node].get("comment", "")
            found[node] = f"PBS lists it {','.join(sorted(bad))}" + (f" ({comment})" if comment else "")
    return found


def server_info(env: dict | None = None) -> dict:
    """The server's attributes from `qstat -B -f -F json` (default_queue, job_history_enable, ...)."""
    servers = _json(["qstat", "-B", "-f", "-F", "json"], env=env).get("Server") or {}
    if not servers:
        raise PBSError("`qstat -B -f -F json` listed no server")
    return next(iter(servers.values()))


def queues_info(env: dict | None = None) -> dict[str, dict]:
    """{queue: its attributes} from `qstat -Q -f -F json`."""
    return _json(["qstat", "-Q", "-f", "-F", "json"], env=env).get("Queue") or {}
