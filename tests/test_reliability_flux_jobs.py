"""Node, link, walltime and Ctrl-C faults on the flux-jobs path (fluxmpi's FluxJobsExecutor: each MPI task one Flux
job in one Flux instance inside one Slurm block), injected for real on the local cluster while tasks run.

The block's brokers start as on the Flux path, so the faults and their expected outcomes follow
test_reliability_flux.py, whose helpers (and fixtures: SlurmdTimeout 10 s for the module, every node back and idle
after each test) are reused here. What differs is the client: this process holds one connection (flux-python over
ssh to the block's first node) and follows every job through the job manager's journal.

Checked (docs/reliability.md, "What each fault did"):
- in one run, on the three non-first nodes: one dies and one's link stays down longer than the link timeout (their
  jobs fail with "node failure on HOST", Parsl reruns them in the same instance, the run completes and reports both
  nodes lost), while the third's link is down for less (ridden out);
- the block's first node dies: the connection ends, every task still out fails within a bound naming the node,
  finished tasks are kept and `resume` runs the rest;
- the block's walltime ends: the tasks not finished fail within a bound, saying so;
- Ctrl-C to `fluxmpi run --path flux-jobs`: the block is cancelled, run.json kept.
"""

import gc
import json
import os
import signal
import time

import faults
import test_reliability_flux as flux_faults
import test_reliability_signals as signals
from test_reliability_faults import SLURMD_TIMEOUT  # noqa: F401 - the same short SlurmdTimeout

from fluxmpi.launch.resilience import Resilience
from fluxmpi.runner import run_tasks

pytestmark = flux_faults.pytestmark

PATH = "flux-jobs"
FAST = flux_faults.FAST            # heartbeat threshold (= the brokers' link timeout) 8 s
ONE_NODE = flux_faults.ONE_NODE    # fills a 2-core node: one task per node at a time
in_background, report, hosts_of = flux_faults.in_background, flux_faults.report, flux_faults.hosts_of


def test_flux_jobs_lost_nodes_rerun_their_tasks_in_the_same_instance_and_a_short_outage_is_ridden_out(
        cluster, site, healthy, tmp_path):
    """One run, one task per node, three faults on the three non-first nodes at once: one node is killed, one
    loses its link for 20 s, one for 4 s; link timeout 10 s. The killed and the long-cut nodes are lost (their
    tasks rerun elsewhere in the same instance), the short outage is ridden out."""
    def three_faults(box):
        _, nodes = faults.wait_running_job(cluster, str(tmp_path), 180)
        deadline = time.monotonic() + 180
        while len(busy := [n for n in faults.busy_nodes(cluster, str(tmp_path / "records")) if n != nodes[0]]) < 3:
            assert time.monotonic() < deadline, f"the 3 non-first nodes of {nodes} did not all run tasks within 180s"
            time.sleep(0.2)
        time.sleep(1.0)
        box["killed"], box["node"], box["short"] = busy      # report() names box["node"]: the long outage
        box["t"], box["epoch"] = time.monotonic(), time.time()
        short, long = faults.link_blip(cluster, box["short"], 4), faults.link_blip(cluster, box["node"], 20)
        faults.kill_node(cluster, box["killed"])
        short.join()
        long.join()
    box = in_background(three_faults)
    result = run_tasks(PATH, site, [ONE_NODE] * 4, app="mpi4py", workdir=tmp_path, sleep=8.0, nodes_per_block=4,
                       retries=1, resilience=Resilience(heartbeat_period=2, heartbeat_threshold=10, status_period=3),
                       run_timeout=240)
    box["thread"].join(30)
    assert "error" not in box and "node" in box, box
    report(box, result)
    print(f"killed {box['killed']}; link down 20 s: {box['node']}; link down 4 s: {box['short']}")
    lost = {box["killed"], box["node"]}
    assert [t.error for t in result.tasks] == [None] * 4
    retried = [t for t in result.tasks if t.attempts > 1]
    assert len(retried) == 2, [t.earlier_errors for t in result.tasks]
    for t in retried:      # each failed once with its node named, then ran on a node that was not lost
        assert any(f"node failure on {host}" in t.earlier_errors[0] for host in lost), t.earlier_errors
        assert hosts_of(tmp_path, t.task) and not hosts_of(tmp_path, t.task) & lost
    # The task on the briefly cut node stayed there and finished on its first attempt.
    assert any(hosts_of(tmp_path, t.task) == {box["short"]} and t.attempts == 1 for t in result.tasks)
    assert set(result.lost_nodes) == lost, result.lost_nodes
    # The same block ran everything: Slurm kept it (--no-kill) instead of failing it with NODE_FAIL.
    assert len(result.blocks) == 1 and all(b["state"] != "NODE_FAIL" for b in result.blocks.values()), result.blocks
    assert result.placement_ok, result.placement_report


def test_flux_jobs_first_node_death_fails_the_rest_within_a_bound_and_resume_runs_them(cluster, site, healthy,
                                                                                       tmp_path):
    # 8 one-node tasks on 4 nodes: two waves; the first node dies during the second.
    box = in_background(flux_faults.kill_busy(cluster, tmp_path, first=True, after=1.0, once_finished=8))
    specs = [ONE_NODE] * 8
    result = run_tasks(PATH, site, specs, app="mpi4py", workdir=tmp_path, sleep=3.0, nodes_per_block=4,
                       retries=1, resilience=FAST, run_timeout=300)
    t_return = time.monotonic()
    gc.collect()     # flux-python objects of the dead connection: collected now, not inside a later import
    box["thread"].join(5)
    assert "error" not in box, box
    # Give the node back now, as an admin would: marked DOWN (Slurm then stops waiting for the cancelled block's
    # end there) and powered on; ReturnToService=2 returns it once its slurmd registers, while resume runs.
    cluster.run(["scontrol", "update", f"NodeName={box['node']}", "State=DOWN", "Reason=killed by the test"])
    reviving = in_background(lambda _: faults.revive_node(cluster, box["node"]))
    assert box["node"] == box["nodes"][0]
    report(box, result)
    print(f"first node {box['node']} killed; run returned {t_return - box['t']:.1f}s later; errors: "
          f"{sorted({t.error for t in result.tasks if not t.ok})}; lost {result.lost_nodes}")
    assert t_return - box["t"] < 60, f"the run went on {t_return - box['t']:.0f}s after the instance died"
    unfinished = [t for t in result.tasks if not t.ok]
    assert unfinished, "no task was left when the first node died"
    assert len(unfinished) < len(specs), "no task finished before the first node died: the fault came too early"
    for t in unfinished:
        assert "Flux instance stopped answering" in t.error and box["node"] in t.error, t.error
    assert box["node"] in result.lost_nodes, result.lost_nodes
    assert all(t.result for t in result.tasks if t.ok)          # what finished is kept
    # Resume on the 3 nodes left (the dead one comes back meanwhile): it runs exactly the unfinished tasks.
    again = run_tasks(PATH, site, specs, app="mpi4py", workdir=tmp_path, sleep=0.5, nodes_per_block=3,
                      resilience=FAST, run_timeout=240, resume=True)
    reviving["thread"].join(120)
    assert "error" not in reviving, reviving
    assert [t.error for t in again.tasks] == [None] * 8
    assert sorted(t.task for t in again.tasks if not t.skipped) == sorted(t.task for t in unfinished)


def test_flux_jobs_walltime_end_fails_the_rest_within_a_bound(cluster, site, healthy, tmp_path):
    def end(box):
        faults.wait_busy_node(cluster, str(tmp_path / "records"), 180)
        box["job"], _ = faults.wait_running_job(cluster, str(tmp_path), 30)
        box["t"] = time.monotonic()
        faults.end_walltime(cluster, box["job"])
    box = in_background(end)
    result = run_tasks(PATH, site, [ONE_NODE] * 8, app="mpi4py", workdir=tmp_path, sleep=10.0, nodes_per_block=2,
                       resilience=FAST, run_timeout=240)
    t_return = time.monotonic()
    gc.collect()
    box["thread"].join(5)
    assert "error" not in box and "t" in box, box
    unfinished = [t for t in result.tasks if not t.ok]
    print(f"\nwalltime of job {box['job']} ended; run returned {t_return - box['t']:.1f}s later; "
          f"{len(unfinished)} unfinished: {sorted({t.error.splitlines()[0] for t in unfinished})}; {result.blocks}")
    # slurmctld checks time limits about every 30 s (20-25 s here), before the 4th wave of tasks ends (40 s); then
    # every task still out fails.
    assert t_return - box["t"] < 75, "the run went on waiting for a block that had ended"
    assert unfinished, "every task finished before the walltime ended: the fault came too late"
    # Running: killed as the block ended ("[its block ended: ...]"); queued: failed when Parsl's block poll saw the
    # block end ("the Flux instance's block ended (...)") or when the run's own watch did ("every block of the run
    # has ended (...)"), whichever came first.
    for t in unfinished:
        assert "ended" in t.error and "TimeLimit" in t.error, t.error
    assert all(t.result for t in result.tasks if t.ok)     # those that finished are kept


def test_ctrl_c_on_the_flux_jobs_path_cancels_its_block_and_keeps_run_json(cluster, tmp_path):
    workdir = tmp_path / "run"
    proc = signals.fluxmpi(cluster, "--path", PATH, workdir=workdir)
    out, err, took = signals.interrupt_after_first_task(cluster, proc, workdir,
                                                        lambda: os.killpg(proc.pid, signal.SIGINT))
    print(f"\nSIGINT: exit {proc.returncode} {took:.1f}s after the signal")
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted by SIGINT" in err, err[-3000:]
    assert signals.active_jobs_of(cluster, workdir) == [], "the Flux block is still in squeue"
    run = json.loads((workdir / "run.json").read_text())
    assert run["interrupted"] == "SIGINT" and run["complete"]
    assert 1 <= len([t for t in run["tasks"] if t["ok"]]) < signals.TASKS, run["tasks"]
