"""Elastic mode of the local cluster: Slurm's power saving with real power-up latency.

slurmctld runs the cluster's ResumeProgram / SuspendProgram (`bin/resume`, `bin/suspend` in the state dir,
see configs.power_program) with a hostlist argument; both hand over to this module:

    python -m fluxmpi.cluster.elastic resume|suspend --state-dir DIR HOSTLIST

suspend stops every process on the nodes (their "power off"); resume waits the layout's resume_delay (the time
a cloud node takes to boot) and then starts slurmd (with -b: Slurm wants a fresh boot time from a node it
resumed) and sshd on each node, the same way `up` does. Both record what they did in the cluster's state under
its lock, so `status` knows the node is off rather than broken, and `down` stops everything they started.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..slurm import SlurmError, expand_hostlist, job_state, sbatch, wait_inactive
from ..warm import start_hold
from .layout import ClusterLayout, load_state
from .local import ClusterError, LocalCluster, state_lock
from .processes import alive

logger = logging.getLogger(__name__)

# sinfo's state suffixes in power saving (sinfo(1)): '~' powered off, '#' powering up, '%' powering down.
POWERED_DOWN, POWERING_UP, POWERING_DOWN = "~", "#", "%"


class ElasticError(ClusterError):
    """A power operation on the local cluster did not happen in time, or the cluster is not elastic."""


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def _cluster_at(state_dir: Path) -> LocalCluster | None:
    """The cluster whose state is in state_dir, or None if it is gone or going down."""
    state = load_state(state_dir.name)
    if not state or state.get("stopping"):
        return None
    return LocalCluster.running(state_dir.name)


def resume(state_dir: Path, nodes: list[str]) -> None:
    state = load_state(state_dir.name)
    if not state:
        _log(f"resume {','.join(nodes)}: cluster state {state_dir} is gone; nothing to do")
        return
    layout = ClusterLayout.from_json(state["layout"])
    _log(f"resume {','.join(nodes)}: powering up in {layout.resume_delay:g}s")
    time.sleep(layout.resume_delay)
    with state_lock(layout):
        cluster = _cluster_at(state_dir)
        if cluster is None:
            _log(f"resume {','.join(nodes)}: the cluster is going down; not starting them")
            return
        for node in nodes:
            pid = cluster._state["pids"].get(f"slurmd:{node}")
            if pid and alive(pid):
                _log(f"resume {node}: already up (slurmd pid {pid})")
                continue
            cluster.stop_node(node)     # leftovers of a half-done power-off would clash with the new daemons
            cluster.start_node(node, reboot=True)
            _log(f"resume {node}: slurmd pid {cluster._state['pids'][f'slurmd:{node}']}")


def suspend(state_dir: Path, nodes: list[str]) -> None:
    state = load_state(state_dir.name)
    if not state:
        _log(f"suspend {','.join(nodes)}: cluster state {state_dir} is gone; nothing to do")
        return
    layout = ClusterLayout.from_json(state["layout"])
    with state_lock(layout):
        cluster = _cluster_at(state_dir)
        if cluster is None:
            return
        for node in nodes:
            stopped = cluster.stop_node(node)
            _log(f"suspend {node}: stopped {stopped} processes")


# --- used by tests and measurements -----------------------------------------------------------

def node_states(cluster: LocalCluster) -> dict[str, str]:
    """sinfo's state of each node, with the power suffix (idle~, alloc#, idle%, ...)."""
    return cluster.node_states()


def wait_states(cluster: LocalCluster, nodes: list[str], ok, what: str, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        try:
            states = node_states(cluster)
        except (subprocess.TimeoutExpired, ValueError):
            states = {}
        if states and all(ok(states.get(n, "")) for n in nodes):
            return states
        time.sleep(0.5)
    raise ElasticError(f"timed out after {timeout:.0f}s waiting for {what}; node states: "
                       + ", ".join(f"{n}={states.get(n, 'unknown')}" for n in nodes))


def power_down(cluster: LocalCluster, nodes: list[str] | None = None, timeout: float = 60) -> None:
    """Ask Slurm to power `nodes` [all] down now (instead of after SuspendTime) and wait until they are off."""
    if not cluster.layout.elastic:
        raise ElasticError(f"cluster {cluster.layout.name!r} is not elastic: boot it with --elastic")
    nodes = nodes or cluster.layout.node_names
    wait_states(cluster, nodes, lambda s: s.startswith("idle"), "the nodes to be idle before powering down",
                timeout)
    proc = cluster.run(["scontrol", "update", f"NodeName={','.join(nodes)}", "State=POWER_DOWN"], timeout=20)
    if proc.returncode != 0 and "already powered down" not in proc.stderr.lower():
        raise ElasticError(f"scontrol update State=POWER_DOWN failed: {proc.stderr.strip()}")
    wait_states(cluster, nodes, lambda s: s.endswith(POWERED_DOWN), "the nodes to power down", timeout)


def time_to_first_result(cluster: LocalCluster, nodes: int, startup: float, warm: bool, batch: bool,
                         timeout: float = 300) -> dict:
    """One measurement on powered-down nodes: seconds from the workflow's start to its first result.

    The workflow is: `startup` seconds of start-up (a stand-in for loading Parsl, checking inputs, staging),
    then its first job on `nodes` nodes, which prints the nodes' hostnames: `srun -N nodes hostname`, or with
    `batch` the same as a batch job (how Parsl's blocks start; its end is polled every 0.3 s). With `warm`, a
    warm hold is started with the workflow and handed over (release_when_warm) right before the first job is
    submitted.
    """
    power_down(cluster)     # every node off, as after a quiet spell; not part of the time measured
    env = cluster.env()
    t0 = time.monotonic()
    hold = start_hold(nodes, "10m", env=env) if warm else None
    time.sleep(startup)
    handed_over = None
    if hold:
        hold.release_when_warm(timeout)
        handed_over = time.monotonic() - t0
        if hold.problem:
            raise ElasticError(f"the warm hold failed: {hold.problem}")
    with tempfile.TemporaryDirectory(dir=cluster.layout.state_dir) as tmp:
        out = Path(tmp) / "first.out"
        if batch:
            # Not `sbatch --wait`: it polls with a growing interval and would add up to half a minute.
            options = [f"-N{nodes}", f"--output={out}", "--wrap", f"srun -N{nodes} hostname"]
            argv = ["sbatch", *options]
            job_id = sbatch(options, "", env=env)
            wait_inactive([job_id], env, timeout)
            state = job_state(job_id, env)
            text = out.read_text() if out.exists() else ""
            rc, err = (0, "") if state == "COMPLETED" else (1, f"job {job_id} ended {state}")
        else:
            argv = ["srun", f"-N{nodes}", "hostname"]
            proc = cluster.run(argv, timeout=timeout)
            text, rc, err = proc.stdout, proc.returncode, proc.stderr
        t1 = time.monotonic() - t0
    hosts = text.split()
    if rc != 0 or len(set(hosts)) != nodes:
        raise ElasticError(f"`{' '.join(argv)}` failed (exit {rc}): {err.strip()} {text}")
    return {"warm": warm, "batch": batch, "nodes": nodes, "startup": startup,
            "resume_delay": cluster.layout.resume_delay, "first_result": round(t1, 2),
            "handed_over": None if handed_over is None else round(handed_over, 2)}


def _measure(args) -> int:
    cluster = LocalCluster.running(args.name)
    for batch in (False, True):
        for warm in (False, True):
            for _ in range(args.repeats):
                try:
                    print(json.dumps(time_to_first_result(cluster, args.nodes, args.startup, warm, batch)),
                          flush=True)
                except (ElasticError, SlurmError) as err:
                    print(f"error: {err}", file=sys.stderr)
                    return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fluxmpi.cluster.elastic",
                                     description="Power programs of an elastic fluxmpi local cluster, and the "
                                                 "time-to-first-result measurement with and without a warm hold.")
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("resume", "suspend"):
        p = sub.add_parser(action, help=f"slurmctld's {action.capitalize()}Program")
        p.add_argument("--state-dir", required=True, type=Path)
        p.add_argument("hostlist")
    m = sub.add_parser("measure", help="time to first result, cold and warm, srun and sbatch (JSON lines)")
    m.add_argument("--name", required=True, help="an elastic local cluster that is up")
    m.add_argument("--nodes", type=int, default=2)
    m.add_argument("--startup", type=float, default=5.0, help="seconds of workflow start-up")
    m.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    if args.action == "measure":
        return _measure(args)
    state = load_state(args.state_dir.name)
    if not state:
        _log(f"{args.action} {args.hostlist}: cluster state {args.state_dir} is gone; nothing to do")
        return 0
    try:
        nodes = expand_hostlist(args.hostlist, env=LocalCluster(ClusterLayout.from_json(state["layout"])).environ())
    except SlurmError as err:
        raise ElasticError(f"cannot expand hostlist {args.hostlist!r}: {err}") from None
    (resume if args.action == "resume" else suspend)(args.state_dir, nodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
