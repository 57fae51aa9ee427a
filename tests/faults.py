"""Fault injection on the local cluster, for the reliability tests: kill a node, cut a node's link, end a block's
walltime, and wait for what Slurm then says.

The faults are real: a killed node's processes get SIGKILL, a cut link is the node's veth pair set down, an
ended walltime is Slurm's own time limit lowered under the running job. Nothing here fakes what Slurm, Parsl
or MPI then do; the tests (tests/test_reliability_*.py) observe that. A failing rank is a run option of the
package (fluxmpi.rankfault), re-exported here for the tests' convenience.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from fluxmpi.cluster import LocalCluster, network
from fluxmpi.cluster.processes import alive, command_of, pids_in_netns
from fluxmpi.rankfault import FAIL_EXIT_CODE, RankFault  # noqa: F401 - re-exported for the tests


class FaultError(RuntimeError):
    """A fault could not be injected or undone; says which node or job and what failed."""


# --- nodes ------------------------------------------------------------------------------------------------

def _netns_file(cluster: LocalCluster, node: str) -> Path:
    if node not in cluster.layout.node_names:
        raise FaultError(f"{node!r} is not a node of cluster {cluster.layout.name} "
                         f"({', '.join(cluster.layout.node_names)})")
    return network.NETNS_DIR / cluster.layout.netns(node)


def kill_node(cluster: LocalCluster, node: str, timeout: float = 10.0) -> int:
    """A node dies: SIGKILL every process in its network namespace (slurmd, job steps, ranks, worker pools,
    sshd) at once, with no warning, as a power loss would. Returns how many processes were killed."""
    netns = _netns_file(cluster, node)
    victims = [p for p in pids_in_netns(netns) if p != os.getpid()]
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids_in_netns(netns) if alive(p)]
        if not left:
            return len(victims)
        for pid in left:  # a step started while we were killing
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    raise FaultError(f"processes still alive on {node} {timeout:.0f}s after SIGKILL: {left}")


def revive_node(cluster: LocalCluster, node: str, timeout: float = 90.0) -> None:
    """Power a killed node back on (slurmd and sshd again) and wait until Slurm lists it usable.

    ReturnToService=2 in the local cluster's slurm.conf lets a node Slurm marked DOWN for not responding
    return by itself when its slurmd registers again.
    """
    _netns_file(cluster, node)
    if hasattr(cluster, "start_node"):
        cluster.start_node(node)
    else:  # a cluster module without start_node: the same two daemons up() starts
        lay = cluster.layout
        cluster._start_node_daemon(node, "slurmd", ["slurmd", "-D", "-N", node, "-f", str(lay.slurm_conf)])
        cluster._start_node_daemon(node, "sshd", [
            "/usr/sbin/sshd", "-D", "-e", "-f", str(lay.state_dir / "etc" / "sshd_config"),
            "-o", f"ListenAddress={lay.node_address(node)}",
            "-o", f"PidFile={lay.state_dir / 'run' / f'sshd-{node}.pid'}"])
    wait_node_state(cluster, node, ("idle", "mixed", "allocated"), timeout)


def force_idle(cluster: LocalCluster, node: str) -> None:
    """Make slurmctld let go of what it still holds on a node that came back (a job it lists COMPLETING there
    from before the node died waits for replies the restarted slurmd never sends): DOWN, then RESUME."""
    for state in ("down reason=fluxmpi-test-heal", "resume"):
        cluster.run(["scontrol", "update", f"nodename={node}", *f"state={state}".split()], timeout=20)


def slurmd_running(cluster: LocalCluster, node: str) -> bool:
    """Whether the node's slurmd runs (False after kill_node, until revive_node)."""
    return any(os.path.basename((command_of(pid) or [""])[0]) == "slurmd"
               for pid in pids_in_netns(_netns_file(cluster, node)))


def busy_nodes(cluster: LocalCluster, needle: str) -> list[str]:
    """The nodes running a process whose command line contains `needle` (e.g. a run's records directory,
    which every rank of its tasks has in its argv)."""
    found = []
    for node in cluster.layout.node_names:
        for pid in pids_in_netns(_netns_file(cluster, node)):
            if any(needle in arg for arg in command_of(pid)):
                found.append(node)
                break
    return found


def wait_busy_node(cluster: LocalCluster, needle: str, timeout: float) -> str:
    """The first node seen running a process with `needle` in its command line (polling every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nodes = busy_nodes(cluster, needle)
        if nodes:
            return nodes[0]
        time.sleep(0.2)
    raise FaultError(f"no node ran a process with {needle!r} in its command line within {timeout:.0f}s")


def set_link(cluster: LocalCluster, node: str, up: bool) -> None:
    """Take a node's only link down (it keeps running, unreachable) or bring it back up."""
    _netns_file(cluster, node)
    (network.link_up if up else network.link_down)(cluster.layout, node)


def link_blip(cluster: LocalCluster, node: str, seconds: float) -> threading.Thread:
    """Take a node's link down now and bring it back after `seconds`, in the background; join() the returned
    thread to wait for the link to be back."""
    if not 0 < seconds <= 600:
        raise FaultError(f"a link outage of {seconds!r}s: give 0 < seconds <= 600")
    set_link(cluster, node, up=False)

    def restore() -> None:
        time.sleep(seconds)
        set_link(cluster, node, up=True)
    thread = threading.Thread(target=restore, name=f"fluxmpi-link-{node}", daemon=True)
    thread.start()
    return thread


# --- Slurm state ------------------------------------------------------------------------------------------

def node_state(cluster: LocalCluster, node: str) -> tuple[str, str]:
    """(state, reason) of a node as slurmctld sees it, e.g. ("down*", "Not responding")."""
    proc = cluster.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T|%E"], timeout=20)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise FaultError(f"sinfo could not report node {node}: {proc.stderr.strip()}")
    state, _, reason = proc.stdout.splitlines()[0].partition("|")
    return state.strip(), reason.strip()


def wait_node_state(cluster: LocalCluster, node: str, states: tuple[str, ...], timeout: float,
                    responding: bool = False) -> str:
    """Wait until node's state (without Slurm's `*`/`~` flags) is one of `states`; returns it. With
    `responding`, also until Slurm no longer flags it not responding (`*`), e.g. after its link came back."""
    deadline = time.monotonic() + timeout
    state = "unknown"
    while time.monotonic() < deadline:
        try:
            state = node_state(cluster, node)[0]
        except (FaultError, subprocess.TimeoutExpired):
            state = "unknown"
        if state.rstrip("*~#!%$@^-") in states and not (responding and "*" in state):
            return state
        time.sleep(0.5)
    raise FaultError(f"node {node} did not reach state {'/'.join(states)} within {timeout:.0f}s "
                     f"(last seen: {state})")


def describe_node(cluster: LocalCluster, node: str) -> str:
    """What holds a node, for a message: slurmctld's view of it, the jobs it lists there (in any state), and the
    processes running in the node's namespace."""
    parts = []
    for argv in (["scontrol", "show", "node", node], ["squeue", "-h", "-t", "all", "-w", node, "-o", "%i %j %T %M %u"]):
        try:
            proc = cluster.run(argv, timeout=20)
            parts.append(f"$ {' '.join(argv)}\n{(proc.stdout + proc.stderr).strip() or '(nothing)'}")
        except subprocess.TimeoutExpired:
            parts.append(f"$ {' '.join(argv)}: no answer within 20s")
    try:
        procs = [" ".join(command_of(pid))[:160] for pid in pids_in_netns(_netns_file(cluster, node))]
    except FaultError as err:
        procs = [str(err)]
    parts.append(f"processes in {node}'s namespace:\n" + ("\n".join(procs) or "(none)"))
    return "\n".join(parts)


def set_slurmd_timeout(cluster: LocalCluster, seconds: int) -> int:
    """Set SlurmdTimeout (seconds of silence before slurmctld declares a node DOWN) in the cluster's slurm.conf
    and make slurmctld reread it. Returns the previous value, to restore it."""
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 5 <= seconds <= 3600:
        raise FaultError(f"SlurmdTimeout {seconds!r}: give whole seconds from 5 to 3600")
    conf = cluster.layout.slurm_conf
    text = conf.read_text()
    found = re.search(r"^SlurmdTimeout=(\d+)$", text, flags=re.M)
    previous = int(found.group(1)) if found else 300  # Slurm's default
    line = f"SlurmdTimeout={seconds}"
    text = re.sub(r"^SlurmdTimeout=\d+$", line, text, flags=re.M) if found else text + line + "\n"
    conf.write_text(text)
    proc = cluster.run(["scontrol", "reconfigure"], timeout=30)
    if proc.returncode != 0:
        raise FaultError(f"scontrol reconfigure failed after setting {line}: {proc.stderr.strip()}")
    return previous


def end_walltime(cluster: LocalCluster, job_id: str, in_seconds: float = 1.0) -> None:
    """Make a running job's walltime end `in_seconds` from now: its end time is moved there, and slurmctld
    times the job out (state TIMEOUT) as at the end of a real allocation (seen here within ~10 s)."""
    end = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + max(0.0, in_seconds)))
    proc = cluster.run(["scontrol", "update", f"JobId={job_id}", f"EndTime={end}"], timeout=30)
    if proc.returncode != 0:
        raise FaultError(f"could not move the end time of job {job_id} to {end}: {proc.stderr.strip()}")


def running_jobs(cluster: LocalCluster, command_contains: str = "") -> dict[str, list[str]]:
    """{job id: its nodes} of the cluster's running jobs; with `command_contains`, only the jobs whose batch
    script path contains it (a run's blocks: Parsl writes their scripts under the run's workdir)."""
    proc = cluster.run(["squeue", "-h", "-t", "R", "-o", "%i|%N|%o"], timeout=20)
    if proc.returncode != 0:
        raise FaultError(f"squeue failed: {proc.stderr.strip()}")
    jobs = {}
    for line in proc.stdout.splitlines():
        job, nodes, command = (line.split("|", 2) + ["", ""])[:3]
        if command_contains in command and nodes:
            hosts = cluster.run(["scontrol", "show", "hostnames", nodes], timeout=20).stdout.split()
            jobs[job] = hosts
    return jobs


def wait_running_job(cluster: LocalCluster, command_contains: str, timeout: float) -> tuple[str, list[str]]:
    """(job id, nodes) of the first running job whose batch script path contains `command_contains`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = running_jobs(cluster, command_contains)
        if jobs:
            return next(iter(jobs.items()))
        time.sleep(0.5)
    raise FaultError(f"no job of {command_contains!r} was running within {timeout:.0f}s")
