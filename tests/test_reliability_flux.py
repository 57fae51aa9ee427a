"""Node and link faults on the Flux path (FluxExecutor, one Flux broker per node of one Slurm block), injected
for real on the local cluster (tests/faults.py) while tasks run.

What is checked (docs/reliability.md, "What each fault did"):
- a node other than the block's first dies: the Flux jobs with ranks there fail ("node failure on HOST"), Parsl
  reruns them in the same instance on the nodes left, the run completes and reports the node lost;
- the block's first node dies (Flux's leader and Parsl's instance manager): the instance is gone, the run ends
  within a bound, finished tasks are kept and `resume` runs the rest;
- a node's link is down for less than the brokers' link timeout (the run's heartbeat threshold): nothing is
  lost; for longer: the node is dropped like a dead one.

Thresholds are shortened as in test_reliability_faults.py: SlurmdTimeout 10 s, heartbeat threshold (= the
brokers' tbon.tcp_user_timeout on this path) 8 s, or 15 s in the short-outage test.
"""

import gc
import time

import faults
import pytest
from test_reliability_faults import SLURMD_TIMEOUT, in_background  # noqa: F401 - the same short SlurmdTimeout

from fluxmpi import placement
from fluxmpi.launch.resilience import Resilience
from fluxmpi.runner import run_tasks
from fluxmpi.spec import MPITaskSpec

pytestmark = [pytest.mark.cluster, pytest.mark.flux]

FAST = Resilience(heartbeat_period=2, heartbeat_threshold=8, status_period=3)
ONE_NODE = MPITaskSpec(nodes=1, ranks_per_node=2)     # fills a 2-core node: one task per node at a time


def busy_block_node(cluster, workdir, first: bool, timeout: float = 180) -> tuple[str, list[str]]:
    """A node of the run's block where a rank of one of its tasks runs: the block's first node (Flux's leader)
    or, with first=False, any other. Returns it and the block's nodes."""
    job, nodes = faults.wait_running_job(cluster, str(workdir), timeout)
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        busy = faults.busy_nodes(cluster, str(workdir / "records"))
        seen.update(busy)
        wanted = [n for n in busy if (n == nodes[0]) == first]
        if wanted:
            return wanted[0], nodes
        time.sleep(0.2)
    # Say what did happen, so a failure tells "nothing ran" (the instance never came up) from "ran elsewhere".
    finished = sorted({r.host for r in placement.read_records(workdir / "records").records}) \
        if (workdir / "records").is_dir() else []
    raise AssertionError(f"no task ran on {'the first' if first else 'a non-first'} node of {nodes} (job {job}) "
                         f"within {timeout:.0f}s; nodes seen busy: {sorted(seen)}; hosts of finished ranks: "
                         f"{finished}; still running: {sorted(faults.running_jobs(cluster, str(workdir)))}")


def finished_ranks(workdir) -> int:
    return len(list((workdir / "records").glob("*.json")))


def kill_busy(cluster, workdir, first: bool, after: float = 1.0, once_finished: int = 0):
    """Kill a busy node of the block (see busy_block_node), `after` s after it is seen busy; with
    `once_finished`, only once that many rank records exist (tasks finished before the fault)."""
    def kill(box):
        deadline = time.monotonic() + 300
        while finished_ranks(workdir) < once_finished and time.monotonic() < deadline:
            time.sleep(0.2)
        if once_finished:
            time.sleep(1.0)    # the finished ranks' processes exit; the next busy node runs a later task
        box["node"], box["nodes"] = busy_block_node(cluster, workdir, first)
        time.sleep(after)
        box["t"], box["epoch"] = time.monotonic(), time.time()
        box["killed"] = faults.kill_node(cluster, box["node"])
    return kill


def cut_link_of_busy(cluster, workdir, seconds: float):
    def cut(box):
        box["node"], box["nodes"] = busy_block_node(cluster, workdir, first=False)
        box["t"], box["epoch"] = time.monotonic(), time.time()
        faults.link_blip(cluster, box["node"], seconds).join()
    return cut


def report(box, result) -> None:
    """One line for docs/reliability.md (seen with pytest -s): when each task came back, after the fault."""
    back = ", ".join(f"{t.task} {'ok' if t.ok else 'failed'} x{t.attempts} at {t.returned - box['epoch']:+.1f}s"
                     for t in result.tasks if t.returned)
    print(f"\nfault on {box.get('node')}: {back}; lost {result.lost_nodes}; blocks {result.blocks}")


def hosts_of(workdir, task: str) -> set[str]:
    """Where the ranks of `task`'s successful attempt ran (its rank records)."""
    return {r.host for r in placement.read_records(workdir / "records").records if r.task == task}


def test_flux_node_death_reruns_its_tasks_on_the_other_nodes_and_reports_it(cluster, site, healthy, tmp_path):
    box = in_background(kill_busy(cluster, tmp_path, first=False))
    result = run_tasks("flux", site, [ONE_NODE] * 6, app="mpi4py", workdir=tmp_path, sleep=8.0, nodes_per_block=4,
                       retries=1, resilience=FAST, run_timeout=300)
    box["thread"].join(5)
    assert "error" not in box, box
    report(box, result)
    victim = box["node"]
    assert [t.error for t in result.tasks] == [None] * 6
    retried = [t for t in result.tasks if t.attempts > 1]
    assert retried, "no task was running on the node that died"
    for t in retried:
        assert f"node failure on {victim}" in t.earlier_errors[0], t.earlier_errors
        assert hosts_of(tmp_path, t.task) and victim not in hosts_of(tmp_path, t.task)   # rerun elsewhere
    assert victim in result.lost_nodes, result.lost_nodes
    # The same block ran everything: Slurm kept it (--no-kill) instead of failing it with NODE_FAIL.
    assert len(result.blocks) == 1 and all(b["state"] != "NODE_FAIL" for b in result.blocks.values()), result.blocks
    assert result.placement_ok, result.placement_report


def test_flux_first_node_death_ends_the_run_within_a_bound_and_resume_runs_the_rest(cluster, site, healthy,
                                                                                     tmp_path):
    # 8 one-node tasks on 4 nodes: two waves; the first node dies during the second.
    box = in_background(kill_busy(cluster, tmp_path, first=True, after=2.0, once_finished=8))
    specs = [ONE_NODE] * 8
    result = run_tasks("flux", site, specs, app="mpi4py", workdir=tmp_path, sleep=6.0, nodes_per_block=4,
                       retries=1, resilience=FAST, run_timeout=600)
    t_return = time.monotonic()
    # flux-python's job watchers of the dead instance raise BrokenPipeError in __del__: collect them now, not
    # inside a later import (seen once: pytest's own module compile then died with a SystemError).
    gc.collect()
    box["thread"].join(5)
    assert "error" not in box, box
    assert box["node"] == box["nodes"][0]
    report(box, result)
    print(f"first node {box['node']} killed; run returned {t_return - box['t']:.1f}s later; errors: "
          f"{sorted({t.error for t in result.tasks if not t.ok})}; blocks {result.blocks}; lost {result.lost_nodes}")
    assert t_return - box["t"] < 120, f"the run went on {t_return - box['t']:.0f}s after the instance died"
    unfinished = [t for t in result.tasks if not t.ok]
    assert unfinished, "no task was left when the first node died"
    assert len(unfinished) < len(specs), "no task finished before the first node died: the fault came too early"
    for t in unfinished:
        assert "Flux instance stopped answering" in t.error and box["node"] in t.error, t.error
    assert box["node"] in result.lost_nodes, result.lost_nodes
    assert all(t.result for t in result.tasks if t.ok)          # what finished is kept
    # Resume on the 3 nodes left while the node comes back (marked DOWN first, as an admin would, so Slurm stops
    # waiting for the cancelled block's end there): it reruns exactly the tasks that did not finish.
    cluster.run(["scontrol", "update", f"NodeName={box['node']}", "State=DOWN", "Reason=killed by the test"])
    reviving = in_background(lambda _: faults.revive_node(cluster, box["node"]))
    again = run_tasks("flux", site, specs, app="mpi4py", workdir=tmp_path, sleep=1.0, nodes_per_block=3,
                      resilience=FAST, run_timeout=300, resume=True)
    reviving["thread"].join(120)
    assert "error" not in reviving, reviving
    assert [t.error for t in again.tasks] == [None] * 8
    assert sorted(t.task for t in again.tasks if not t.skipped) == sorted(t.task for t in unfinished)


def test_flux_link_down_shorter_than_the_link_timeout_is_ridden_out(cluster, site, healthy, tmp_path):
    box = in_background(cut_link_of_busy(cluster, tmp_path, 4))
    result = run_tasks("flux", site, [ONE_NODE] * 4, app="mpi4py", workdir=tmp_path, sleep=10.0, nodes_per_block=4,
                       retries=1, resilience=Resilience(heartbeat_period=2, heartbeat_threshold=15, status_period=3),
                       run_timeout=300)
    box["thread"].join(10)
    assert "error" not in box and "node" in box, box
    report(box, result)
    assert [(t.error, t.attempts) for t in result.tasks] == [(None, 1)] * 4
    assert result.lost_nodes == {}, result.lost_nodes
    # The task on the cut node ran there all along.
    assert any(hosts_of(tmp_path, t.task) == {box["node"]} for t in result.tasks)


def test_flux_link_down_longer_than_the_link_timeout_is_a_lost_node(cluster, site, healthy, tmp_path):
    box = in_background(cut_link_of_busy(cluster, tmp_path, 30))   # > link timeout (8 s) and SlurmdTimeout
    result = run_tasks("flux", site, [ONE_NODE] * 4, app="mpi4py", workdir=tmp_path, sleep=10.0, nodes_per_block=4,
                       retries=1, resilience=FAST, run_timeout=300)
    box["thread"].join(40)
    assert "error" not in box, box
    report(box, result)
    victim = box["node"]
    assert [t.error for t in result.tasks] == [None] * 4
    retried = [t for t in result.tasks if t.attempts > 1]
    assert retried and all(f"node failure on {victim}" in t.earlier_errors[0] for t in retried), \
        [t.earlier_errors for t in result.tasks]
    assert all(victim not in hosts_of(tmp_path, t.task) for t in retried)
    assert victim in result.lost_nodes, result.lost_nodes
    # Once its link is back, Slurm returns the node to service by itself (ReturnToService=2).
    faults.wait_node_state(cluster, victim, ("idle",), 120)
