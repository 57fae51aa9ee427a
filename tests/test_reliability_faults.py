"""Real faults during runs on the local cluster: a failing rank, a node that dies, a walltime that ends, a link
that goes down. Each fault is injected for real (tests/faults.py) and the test checks what the run did with it:
nothing finished is lost, the run completes on what is left or stops within a bound with a message.

Thresholds are shortened so the faults show within seconds (docs/reliability.md has the production values):
Slurm declares a silent node DOWN after SlurmdTimeout (set to 10 s for this module), a worker pool is declared
lost after heartbeat_threshold seconds, and Parsl polls the blocks' states every status_period seconds.
"""

import os
import subprocess
import threading
import time

import faults
import pytest

from fluxmpi.launch.resilience import Resilience
from fluxmpi.mpi_apps import app_command
from fluxmpi.runner import run_tasks
from fluxmpi.spec import MPITaskSpec

SLURMD_TIMEOUT = 10      # conftest's `site` sets it for this module
FAST = dict(heartbeat_period=2, heartbeat_threshold=8, status_period=3)


# --- the apps' fault options, on this machine (no cluster) ---------------------------------------------------

MPIRUN = ["mpirun", "--oversubscribe", "-np", "2"]
ROOT_OK = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_btl": "self,tcp"}


@pytest.mark.parametrize("app", ["c", "mpi4py"])
def test_apps_fail_the_chosen_rank_once_then_run(app, c_binary, tmp_path):
    marker = tmp_path / "failed-once"
    argv = app_command(app, task="f0", out_dir=tmp_path / "rec", c_binary=c_binary, fail_rank=1,
                       fail_mode="exit", fail_once_marker=marker)
    env = {**os.environ, **ROOT_OK}
    first = subprocess.run(MPIRUN + argv, capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == faults.FAIL_EXIT_CODE, first.stderr
    assert "rank 1 on" in first.stderr and "fails on purpose" in first.stderr
    assert marker.exists() and not (tmp_path / "rec" / "f0.1.json").exists()
    again = subprocess.run(MPIRUN + argv, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (tmp_path / "rec").glob("f0.*.json")) == ["f0.0.json", "f0.1.json"]


@pytest.mark.parametrize("app", ["c", "mpi4py"])
def test_apps_segfault_for_real(app, c_binary, tmp_path):
    argv = app_command(app, task="s0", out_dir=None, c_binary=c_binary, fail_rank=0, fail_mode="segv")
    proc = subprocess.run(MPIRUN + argv, capture_output=True, text=True, timeout=120, env={**os.environ, **ROOT_OK})
    assert proc.returncode != 0
    assert "Segmentation fault" in proc.stderr or "signal 11" in proc.stderr, proc.stderr[-2000:]


# --- faults on the cluster -----------------------------------------------------------------------------------

def in_background(fn) -> dict:
    """Run the fault injector `fn(box)` in a thread while the run goes on; box collects what it did."""
    box: dict = {}

    def guarded():
        try:
            fn(box)
        except Exception as err:  # noqa: BLE001 - surfaced by the test's assertions
            box["error"] = err
    box["thread"] = threading.Thread(target=guarded, daemon=True)
    box["thread"].start()
    return box


@pytest.mark.cluster
def test_failing_rank_is_named_and_retried_while_other_tasks_finish(cluster, site, healthy, tmp_path):
    specs = [MPITaskSpec(nodes=2, ranks_per_node=1)] * 3
    result = run_tasks("htex", site, specs, app="c", workdir=tmp_path, nodes_per_block=4, retries=1,
                       fault=[faults.RankFault(1, "segv", ("t0",)), faults.RankFault(1, "exit", ("t1",), once=True)],
                       resilience=Resilience(**FAST), run_timeout=300)
    t0, t1, t2 = result.tasks
    # t0 segfaults on every attempt: it fails, naming the rank, its node and the app's last words.
    assert not t0.ok and t0.attempts == 2
    assert "rank 1 on " in t0.error and "Segmentation fault" in t0.error, t0.error
    assert "fails on purpose" in t0.error           # the stderr tail
    assert any(node in t0.error for node in cluster.layout.node_names)
    # t1 fails once (exit 3) and its retry succeeds.
    assert t1.ok and t1.attempts == 2
    assert "Exited with exit code 3" in t1.earlier_errors[0], t1.earlier_errors
    assert t2.ok and t2.attempts == 1 and not t2.earlier_errors
    assert result.placement_ok, result.placement_report   # t1's retry and t2 ran where they were put


def _victim_of_busy_node(cluster, workdir, after: float = 0.0):
    def kill(box):
        box["node"] = faults.wait_busy_node(cluster, str(workdir / "records"), 120)
        time.sleep(after)
        box["killed"] = faults.kill_node(cluster, box["node"])
        box["t"] = time.monotonic()
    return kill


def _victim_not_first(cluster, workdir, after: float = 0.5):
    """Kill a busy node of the run's block that is not its first (where the HTEX pool runs), while the task
    there still runs (the tasks sleep 8 s: a poll that first sees the node late in its task must not kill it
    after the task ended, as happened once with 5 s tasks and a 1 s delay)."""
    def kill(box):
        _, nodes = faults.wait_running_job(cluster, str(workdir), 120)
        deadline = time.monotonic() + 120
        while not (busy := [n for n in faults.busy_nodes(cluster, str(workdir / "records")) if n != nodes[0]]):
            assert time.monotonic() < deadline, f"no node of {nodes[1:]} ran a task within 120s"
            time.sleep(0.2)
        time.sleep(after)
        box["node"], box["killed"] = busy[0], faults.kill_node(cluster, busy[0])
        box["t"] = time.monotonic()
    return kill


@pytest.mark.cluster
def test_node_death_on_htex_path_goes_on_in_a_block_of_the_nodes_left(cluster, site, healthy, tmp_path):
    """A block as large as the cluster loses a non-first node: Slurm fails the block (its pool goes with it),
    and the replacement asks for the 3 nodes left instead of pending for the dead one; every task finishes."""
    box = in_background(_victim_not_first(cluster, tmp_path))
    two = MPITaskSpec(nodes=2, ranks_per_node=1)
    result = run_tasks("htex", site, [two] * 3, app="mpi4py", workdir=tmp_path, sleep=8.0,
                       nodes_per_block=len(cluster.layout.node_names), retries=2, resilience=Resilience(**FAST),
                       run_timeout=240)
    box["thread"].join(5)
    victim = box["node"]
    assert [t.error for t in result.tasks] == [None] * 3, [t.error for t in result.tasks]
    retried = [t for t in result.tasks if t.attempts > 1]
    assert retried, "no task was running when the node died"
    assert all(victim not in t.result["nodes"] for t in result.tasks if t.attempts > 1)     # rerun elsewhere
    assert victim in result.lost_nodes, result.lost_nodes
    # The block that ran the retries had the nodes left: 3, without the dead one (Slurm's own node list).
    ran = [set(cluster.run(["scontrol", "show", "hostnames", i["nodes"]]).stdout.split())
           for i in result.blocks.values() if i["nodes"]]
    assert any(len(n) == 3 and victim not in n for n in ran), result.blocks
    assert result.placement_ok, result.placement_report


@pytest.mark.cluster
def test_a_node_back_in_service_is_used_again_by_a_full_block_on_htex(cluster, site, healthy, tmp_path):
    """A node out of service when the run starts (drained): the 4-node block comes up with the 3 others, and a
    4-node task waits (it is not refused) while 1-node tasks run there. Once they are done the node is put back:
    at the next block poll the idle 3-node block is ended and a full one runs the 4-node task on every node."""
    back = cluster.layout.node_names[-1]
    cluster.run(["scontrol", "update", f"nodename={back}", "state=drain", "reason=fluxmpi-test"])

    def resume_when_the_small_ones_are_done(box):
        deadline = time.monotonic() + 90
        while len(list((tmp_path / "records").glob("t[01]*"))) < 2 or faults.running_jobs(cluster) == {}:
            assert time.monotonic() < deadline, "the 1-node tasks did not run within 90s"
            time.sleep(0.2)
        time.sleep(2)        # their ends, and the block idle
        cluster.run(["scontrol", "update", f"nodename={back}", "state=resume"])
        box["t"] = time.time()
    box = in_background(resume_when_the_small_ones_are_done)
    one, four = MPITaskSpec(nodes=1, ranks_per_node=1), MPITaskSpec(nodes=4, ranks_per_node=1)
    try:
        result = run_tasks("htex", site, [one, one, four], app="mpi4py", workdir=tmp_path, sleep=1.0,
                           nodes_per_block=4, resilience=Resilience(**FAST), run_timeout=180)
    finally:
        box["thread"].join(5)
        cluster.run(["scontrol", "update", f"nodename={back}", "state=resume"])
    assert "t" in box, box.get("error")
    assert [t.error for t in result.tasks] == [None] * 3, [t.error for t in result.tasks]
    assert all(back not in t.result["nodes"] for t in result.tasks[:2])
    assert sorted(result.tasks[2].result["nodes"]) == cluster.layout.node_names     # the node is used again
    assert len(result.blocks) == 2, result.blocks
    started = result.tasks[2].result["t_launch"]
    print(f"\n4-node task launched {started - box['t']:.1f}s after the node was back in service")
    assert started > box["t"]
    assert result.placement_ok, result.placement_report


@pytest.mark.cluster
@pytest.mark.parametrize("path", ["htex", pytest.param("flux-jobs", marks=pytest.mark.flux)])
def test_a_block_pending_for_a_node_that_went_down_is_asked_again_smaller(path, cluster, site, healthy, tmp_path):
    """The run's 4-node block pends (another job holds a node for 10 s); that node is drained meanwhile. The
    block is cancelled and a 3-node one, without the drained node, runs the tasks."""
    held = cluster.layout.node_names[-1]
    # Never requeued (Slurm requeues a batch job its node fails under, and -w would pin it there again) and
    # limited to a minute: whatever happens to it, it cannot hold the node for the tests after this one.
    holder = cluster.run(["sbatch", "--parsable", "--no-requeue", "-t", "1", "-w", held, "-o", "/dev/null",
                          "--wrap", "sleep 10"]).stdout.strip()
    assert holder.isdigit(), f"the holder job was not submitted: {holder!r}"

    def drain_when_pending(box):
        deadline = time.monotonic() + 60
        while not set(cluster.run(["squeue", "-h", "-t", "PD", "-o", "%i"]).stdout.split()) - {holder}:
            assert time.monotonic() < deadline, "the run's block was not pending within 60s"
            time.sleep(0.2)
        cluster.run(["scontrol", "update", f"nodename={held}", "state=drain", "reason=fluxmpi-test"])
        box["ok"] = True
    box = in_background(drain_when_pending)
    try:
        result = run_tasks(path, site, [MPITaskSpec(nodes=1, ranks_per_node=2)] * 2, app="mpi4py", workdir=tmp_path,
                           sleep=1.0, nodes_per_block=4, resilience=Resilience(**FAST), run_timeout=120)
    finally:
        box["thread"].join(5)
        cluster.run(["scancel", holder])
        cluster.run(["scontrol", "update", f"nodename={held}", "state=resume"])
    assert box.get("ok"), "the node was not drained while the block pended"
    assert [t.error for t in result.tasks] == [None, None]
    states = [i["state"] for i in result.blocks.values()]
    ran = [set(cluster.run(["scontrol", "show", "hostnames", i["nodes"]]).stdout.split())
           for i in result.blocks.values() if i["nodes"]]
    assert states[0] == "CANCELLED" and len(states) == 2, result.blocks
    assert len(ran) == 1 and len(ran[0]) == 3 and held not in ran[0], result.blocks


@pytest.mark.cluster
def test_node_death_on_static_blocks_finishes_on_the_other_blocks(cluster, site, healthy, tmp_path):
    box = in_background(_victim_of_busy_node(cluster, tmp_path, after=1.0))
    result = run_tasks("static", site, [MPITaskSpec(nodes=1, ranks_per_node=2)] * 4, app="mpi4py",
                       workdir=tmp_path, sleep=4.0, nodes_per_block=1, retries=2, resilience=Resilience(**FAST),
                       run_timeout=240)
    box["thread"].join(5)
    victim = box["node"]
    assert [t.error for t in result.tasks] == [None] * 4
    retried = [t for t in result.tasks if t.attempts > 1]
    assert len(retried) == 1 and f"on host {victim}" in retried[0].earlier_errors[0]
    assert victim not in retried[0].result["nodes"]
    assert victim in result.lost_nodes, result.lost_nodes
    assert result.placement_ok, result.placement_report


def _end_walltime_when_busy(cluster, workdir):
    def end(box):
        faults.wait_busy_node(cluster, str(workdir / "records"), 180)
        box["job"], _ = faults.wait_running_job(cluster, str(workdir), 30)
        faults.end_walltime(cluster, box["job"])
        deadline = time.monotonic() + 90     # slurmctld checks time limits about every 30 s
        while time.monotonic() < deadline:
            state = cluster.run(["squeue", "-h", "-t", "all", "-j", box["job"], "-o", "%T"]).stdout.strip()
            if state not in ("RUNNING", "COMPLETING"):
                box["state"], box["t"] = state, time.monotonic()
                return
            time.sleep(0.5)
    return end


@pytest.mark.cluster
def test_walltime_end_on_htex_path_gets_a_new_block_and_finishes(cluster, site, healthy, tmp_path):
    box = in_background(_end_walltime_when_busy(cluster, tmp_path))
    result = run_tasks("htex", site, [MPITaskSpec(nodes=1, ranks_per_node=2)] * 6, app="mpi4py",
                       workdir=tmp_path, sleep=10.0, nodes_per_block=2, retries=2, resilience=Resilience(**FAST),
                       run_timeout=300)
    box["thread"].join(5)
    assert box.get("state") == "TIMEOUT", box
    assert [t.error for t in result.tasks] == [None] * 6
    assert result.blocks[box["job"]]["state"] == "TIMEOUT" and len(result.blocks) >= 2, result.blocks
    assert result.placement_ok, result.placement_report


@pytest.mark.cluster
@pytest.mark.flux
def test_walltime_end_on_flux_path_fails_the_rest_within_a_bound(cluster, site, healthy, tmp_path):
    """FluxExecutor never starts a second block: once its block is gone the run stops waiting, with a message."""
    box = in_background(_end_walltime_when_busy(cluster, tmp_path))
    result = run_tasks("flux", site, [MPITaskSpec(nodes=1, ranks_per_node=2)] * 6, app="mpi4py",
                       workdir=tmp_path, sleep=10.0, nodes_per_block=2, run_timeout=300)
    box["thread"].join(5)
    assert box.get("state") == "TIMEOUT", box
    t_return = time.monotonic()
    assert t_return - box["t"] < 90, "the run went on waiting for a block that had ended"
    unfinished = [t for t in result.tasks if not t.ok]
    assert unfinished, "every task finished before the walltime ended: the fault came too late"
    for t in unfinished:
        assert "its block ended" in t.error and "TimeLimit" in t.error, t.error
    assert all(t.result for t in result.tasks if t.ok)     # those that finished are kept


def _cut_link_when_busy(cluster, workdir, seconds):
    def cut(box):
        _, nodes = faults.wait_running_job(cluster, str(workdir), 120)
        faults.wait_busy_node(cluster, str(workdir / "records"), 120)
        box["node"] = nodes[0]     # the block's first node: its worker pool's heartbeats cross this link
        faults.link_blip(cluster, box["node"], seconds).join()
    return cut


@pytest.mark.cluster
def test_link_down_shorter_than_the_heartbeat_threshold_is_ridden_out(cluster, site, healthy, tmp_path):
    box = in_background(_cut_link_when_busy(cluster, tmp_path, 4))
    result = run_tasks("htex", site, [MPITaskSpec(nodes=1, ranks_per_node=2)] * 2, app="mpi4py",
                       workdir=tmp_path, sleep=6.0, nodes_per_block=2, retries=2,
                       resilience=Resilience(heartbeat_period=2, heartbeat_threshold=12, status_period=3),
                       run_timeout=240)
    box["thread"].join(10)
    assert "node" in box, box
    assert [t.error for t in result.tasks] == [None] * 2
    # The pool was not declared lost and the block was kept. (A step launched during the outage may fail to
    # reach slurmctld and be retried: that is a task failure, not a lost node.)
    errors = [e for t in result.tasks for e in t.earlier_errors]
    assert not any("loss of manager" in e for e in errors), errors
    assert result.lost_nodes == {} and len(result.blocks) == 1, (result.lost_nodes, result.blocks)


@pytest.mark.cluster
def test_link_down_longer_than_the_thresholds_is_a_lost_node(cluster, site, healthy, tmp_path):
    box = in_background(_cut_link_when_busy(cluster, tmp_path, 20))   # > heartbeat threshold and SlurmdTimeout
    result = run_tasks("htex", site, [MPITaskSpec(nodes=1, ranks_per_node=2)] * 2, app="mpi4py",
                       workdir=tmp_path, sleep=5.0, nodes_per_block=2, retries=2, resilience=Resilience(**FAST),
                       run_timeout=240)
    box["thread"].join(30)
    victim = box["node"]
    assert [t.error for t in result.tasks] == [None] * 2
    assert any(t.attempts > 1 and f"on host {victim}" in t.earlier_errors[0] for t in result.tasks)
    assert victim in result.lost_nodes, result.lost_nodes
    # The node is back once its link is: Slurm returns it to service by itself (ReturnToService=2).
    faults.wait_node_state(cluster, victim, ("idle",), 90)
