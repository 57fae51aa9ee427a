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
- a node whose link was down past the link timeout, and one killed and powered on again, run tasks again once
  Slurm lists them usable: the first in a Flux instance of its own inside the block's job, the second in a
  top-up block;
- the block's first node dies: the connection ends, the tasks it held fail once naming the node, and the run goes
  on in a new block of the nodes left, where they rerun;
- the block's walltime ends early (its end time moved): a new block takes the tasks left, the ones cut short rerun;
- a campaign longer than a block, with walltimes declared: each task starts only where its walltime fits, in
  successive blocks, none cut short; one longer than any block is refused at submit;
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

from fluxmpi import placement
from fluxmpi.launch.resilience import Resilience
from fluxmpi.runner import run_tasks
from fluxmpi.spec import MPITaskSpec

pytestmark = flux_faults.pytestmark

PATH = "flux-jobs"
FAST = flux_faults.FAST            # heartbeat threshold (= the brokers' link timeout) 8 s
ONE_NODE = flux_faults.ONE_NODE    # fills a 2-core node: one task per node at a time
in_background, report, hosts_of = flux_faults.in_background, flux_faults.report, flux_faults.hosts_of


def busy_non_first_nodes(cluster, workdir, count: int, timeout: float = 180) -> list[str]:
    """`count` nodes of the run's block, not its first, each running a rank of a task (then 1 s more)."""
    _, nodes = faults.wait_running_job(cluster, str(workdir), timeout)
    deadline = time.monotonic() + timeout
    while len(busy := [n for n in faults.busy_nodes(cluster, str(workdir / "records")) if n != nodes[0]]) < count:
        assert time.monotonic() < deadline, f"{count} non-first nodes of {nodes} did not run tasks within {timeout}s"
        time.sleep(0.2)
    time.sleep(1.0)
    return busy


def test_flux_jobs_lost_nodes_rerun_their_tasks_in_the_same_instance_and_a_short_outage_is_ridden_out(
        cluster, site, healthy, tmp_path):
    """One run, one task per node, three faults on the three non-first nodes at once: one node is killed, one
    loses its link for 20 s, one for 4 s; link timeout 10 s. The killed and the long-cut nodes are lost (their
    tasks rerun elsewhere in the same instance), the short outage is ridden out."""
    def three_faults(box):
        busy = busy_non_first_nodes(cluster, tmp_path, 3)
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


OUTAGE = 25.0    # seconds a link is down: past the link timeout (10 s) and SlurmdTimeout (10 s)


def test_flux_jobs_nodes_back_after_a_long_outage_run_tasks_again_before_the_run_ends(
        cluster, site, healthy, tmp_path):
    """Two busy non-first nodes of a 4-node block are lost: one's link is down 25 s (link timeout 10 s), the other
    is killed and powered on again once Slurm has set it DOWN. Flux drops both brokers for good; their tasks rerun
    on the two nodes left. The cut node mostly stays in the block's job (Slurm lists it not responding, then
    usable): the executor starts a Flux instance on it alone as a step of that job. The killed node leaves the job
    (a `--no-kill` job loses a node Slurm sets DOWN): once it is back, a top-up block of free nodes takes it (and
    the cut node too, when Slurm set that one DOWN as well).
    Either way the queued work is spread over every instance and both nodes run tasks again well before the run
    ends, not after rejoin_after (300 s) or the block's end."""
    def two_faults(box):
        busy = busy_non_first_nodes(cluster, tmp_path, 2)
        box["node"], box["killed"] = busy[:2]        # report() names box["node"]: the cut one
        box["t"], box["epoch"] = time.monotonic(), time.time()
        cut = faults.link_blip(cluster, box["node"], OUTAGE)
        faults.kill_node(cluster, box["killed"])
        faults.wait_node_state(cluster, box["killed"], ("down",), 120)
        faults.revive_node(cluster, box["killed"])
        box["revived"] = time.time()
        cut.join()
    box = in_background(two_faults)
    result = run_tasks(PATH, site, [ONE_NODE] * 28, app="mpi4py", workdir=tmp_path, sleep=5.0, nodes_per_block=4,
                       retries=1, resilience=Resilience(heartbeat_period=2, heartbeat_threshold=10, status_period=3),
                       run_timeout=300)
    t_end = time.time()
    box["thread"].join(OUTAGE + 15)
    assert "error" not in box and "revived" in box, box
    cut, killed = box["node"], box["killed"]
    report(box, result)
    assert [t.error for t in result.tasks] == [None] * 28, [t.error for t in result.tasks]
    retried = [t for t in result.tasks if t.attempts > 1]
    assert retried and all(any(f"node failure on {h}" in t.earlier_errors[0] for h in (cut, killed))
                           for t in retried), [t.earlier_errors for t in retried]
    assert {cut, killed} <= set(result.lost_nodes), result.lost_nodes
    records = placement.read_records(tmp_path / "records").records
    # The cut node stays in the block's job unless Slurm set it DOWN meanwhile (seen in 1 run of 4): then a
    # top-up block takes it too. The killed node is always set DOWN, so it always comes back in a top-up block.
    in_job = "a Flux instance of its own inside block" in result.nodes_back.get(cut, "")
    for host, back, how in ((cut, box["epoch"] + OUTAGE, "inside block" if in_job else "top-up block"),
                            (killed, box["revived"], "top-up block")):
        again = sorted(r.t_start for r in records if r.host == host and r.t_start and r.t_start > back)
        print(f"{host} back at +{back - box['epoch']:.1f}s: first task since {again[0] - back:.1f}s later, "
              f"{len(again)} rank(s) there since, the run ended {t_end - back:.1f}s after it was back"
              if again else f"{host} ran nothing after it was back")
        assert again, f"{host} ran no task after it was back; blocks {result.blocks}; back {result.nodes_back}"
        assert again[0] - back < 30, f"{host} took its first task {again[0] - back:.1f}s after it was back"
        assert how in result.nodes_back.get(host, ""), result.nodes_back
    print(f"nodes back: {result.nodes_back}")
    # The run's block and one top-up (the cut node's own instance, if any, ran inside the run's block's job).
    assert len(result.blocks) == 2, result.blocks
    assert result.placement_ok, result.placement_report


def test_flux_jobs_first_node_death_goes_on_in_a_new_block_without_that_node(cluster, site, healthy, tmp_path):
    # 8 one-node tasks on 4 nodes: two waves; the first node (the instance's leader) dies during the second.
    box = in_background(flux_faults.kill_busy(cluster, tmp_path, first=True, after=1.0, once_finished=8))
    specs = [ONE_NODE] * 8
    result = run_tasks(PATH, site, specs, app="mpi4py", workdir=tmp_path, sleep=3.0, nodes_per_block=4,
                       retries=1, resilience=FAST, run_timeout=300)
    t_return = time.monotonic()
    gc.collect()     # flux-python objects of the dead connection: collected now, not inside a later import
    box["thread"].join(5)
    assert "error" not in box, box
    dead = box["node"]
    assert dead == box["nodes"][0]
    report(box, result)
    print(f"first node {dead} killed; run returned {t_return - box['t']:.1f}s later; blocks {result.blocks}; "
          f"lost {result.lost_nodes}")
    assert [t.error for t in result.tasks] == [None] * 8, [t.error for t in result.tasks]
    retried = [t for t in result.tasks if t.attempts > 1]
    assert retried, "no task was running when the first node died: the fault came too late"
    for t in retried:       # failed once naming the dead leader, then ran in the new block, elsewhere
        assert "Flux instance stopped answering" in t.earlier_errors[0] and dead in t.earlier_errors[0], t
        assert hosts_of(tmp_path, t.task) and dead not in hosts_of(tmp_path, t.task)
    assert len(result.blocks) == 2, result.blocks       # the replacement was shaped to the 3 nodes left
    assert dead in result.lost_nodes, result.lost_nodes
    assert all(t.result for t in result.tasks)
    assert t_return - box["t"] < 120, f"the run took {t_return - box['t']:.0f}s after the leader died"


def test_flux_jobs_walltime_end_gets_a_new_block_and_the_run_finishes(cluster, site, healthy, tmp_path):
    def end(box):
        faults.wait_busy_node(cluster, str(tmp_path / "records"), 180)
        box["job"], _ = faults.wait_running_job(cluster, str(tmp_path), 30)
        box["t"] = time.monotonic()
        faults.end_walltime(cluster, box["job"])
    box = in_background(end)
    # No task declares a walltime, so nothing holds them back: those running when the block ends are cut short.
    result = run_tasks(PATH, site, [ONE_NODE] * 8, app="mpi4py", workdir=tmp_path, sleep=10.0, nodes_per_block=2,
                       retries=1, resilience=FAST, run_timeout=300)
    gc.collect()
    box["thread"].join(5)
    assert "error" not in box and "t" in box, box
    print(f"\nwalltime of job {box['job']} ended; blocks {result.blocks}; "
          f"retried: {[(t.task, t.earlier_errors) for t in result.tasks if t.attempts > 1]}")
    assert [t.error for t in result.tasks] == [None] * 8, [t.error for t in result.tasks]
    assert len(result.blocks) >= 2, result.blocks
    assert any(b["state"] == "TIMEOUT" for b in result.blocks.values()), result.blocks
    for t in result.tasks:
        if t.attempts > 1:      # cut short by the block's end, then rerun in the next block
            assert "stopped answering" in t.earlier_errors[0] or "ended" in t.earlier_errors[0], t.earlier_errors


def test_flux_jobs_campaign_longer_than_a_block_runs_in_successive_blocks_by_each_tasks_walltime(
        cluster, site, healthy, tmp_path):
    """12 tasks of 3 nodes (one at a time), each declaring 4 s, on blocks whose instance runs 15 s: a block holds
    about a third of them. Each starts only while its 4 s fit the block's time left; the rest go to the next
    block. A 9 s task fits only a block that has run little (9 s + 2 s to start, of 15 s: a fresh block comes up
    with about 14 s left here, so 12 s was too tight on a loaded machine); a 60 s task fits none and is refused
    at submit."""
    short = MPITaskSpec(nodes=3, ranks_per_node=1, walltime=4)
    specs = [short] * 12 + [MPITaskSpec(nodes=3, ranks_per_node=1, walltime=9),
                            MPITaskSpec(nodes=3, ranks_per_node=1, walltime=60)]
    result = run_tasks(PATH, site, specs, app="mpi4py", workdir=tmp_path, sleep=2.0, nodes_per_block=3,
                       walltime=25, resilience=FAST, run_timeout=420)
    gc.collect()
    errors = [t.error for t in result.tasks]
    print(f"\nblocks: {result.blocks}\nerrors: {errors}")
    assert errors[:13] == [None] * 13, errors
    assert "has a walltime of 60s but a block's Flux instance runs jobs for at most 15s" in errors[13], errors[13]
    assert len(result.blocks) >= 3, result.blocks
    # Nothing ran twice, nothing was cut short: every task ran once, in a block that still had its time.
    assert all(t.attempts == 1 for t in result.tasks[:13]), [(t.task, t.earlier_errors) for t in result.tasks]
    assert all(b["state"] != "TIMEOUT" for b in result.blocks.values()), result.blocks
    assert result.placement_ok, result.placement_report


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
