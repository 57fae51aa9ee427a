"""The HTEX launch paths on the real local cluster (4 nodes)."""

import time
from concurrent.futures import wait

import parsl
import pytest
from click.testing import CliRunner
from parsl.executors import MPIExecutor

from fluxmpi import slurm
from fluxmpi.apps import run_mpi_task
from fluxmpi.cli import main
from fluxmpi.launch.blocks import BlockShape, slurm_provider
from fluxmpi.mpi_apps import app_command
from fluxmpi.runner import _cleanup_parsl, run_tasks
from fluxmpi.spec import MPITaskSpec, SpecError

pytestmark = pytest.mark.cluster


def job_ids(cluster) -> set[str]:
    """Every job slurmctld still remembers, finished ones included (MinJobAge keeps them a while)."""
    return {job.job_id for job in slurm.jobs(env=cluster.environ())}


@pytest.mark.parametrize("path", ["htex", "htex-mpiexec", "static"])
def test_two_concurrent_two_node_tasks(site, tmp_path, path):
    specs = [MPITaskSpec(nodes=2, ranks_per_node=2)] * 2
    result = run_tasks(path, site, specs, app="c", workdir=tmp_path, sleep=2.0,
                       nodes_per_block=None if path == "static" else 4, run_timeout=300)
    assert [t.error for t in result.tasks] == [None, None]
    assert result.placement_ok, result.placement_report
    nodes = [set(t.result["nodes"]) for t in result.tasks]
    assert all(len(n) == 2 for n in nodes)
    assert nodes[0].isdisjoint(nodes[1]), f"the two tasks shared a node: {nodes}"
    # The blocks go out as the executor starts (fluxmpi.launch.executors.EarlyBlocks); the strategy's own
    # initial scale-out must not add more.
    assert len(result.blocks) == (2 if path == "static" else 1), result.blocks
    if path != "static":  # one block: the gate admits both at once, so they must overlap in time
        (a0, a1), (b0, b1) = [(t.result["t_launch"], t.result["t_done"]) for t in result.tasks]
        assert a0 < b1 and b0 < a1, "the two tasks did not run concurrently"


def test_out_of_the_box_config_cannot_run_multi_node_tasks(site, tmp_path):
    """The limitation the other paths fix: mpirun inside a per-node worker waits on its own block and is killed."""
    result = run_tasks("plain", site, [MPITaskSpec(nodes=2, ranks_per_node=2)], app="c", workdir=tmp_path,
                       task_timeout=10, run_timeout=240)     # it hangs: working, it takes under 2 s
    assert not result.ok
    assert "did not finish within 10s" in (result.tasks[0].error or "")


MIXED = [MPITaskSpec(nodes=2, ranks_per_node=1), MPITaskSpec(nodes=2, ranks_per_node=1),
         MPITaskSpec(nodes=3, ranks_per_node=1)]


def test_mixed_sizes_complete_through_fluxmpi(site, tmp_path):
    result = run_tasks("htex", site, MIXED, app="mpi4py", workdir=tmp_path, sleep=3.0, nodes_per_block=4,
                       run_timeout=300)
    assert [t.error for t in result.tasks] == [None, None, None]
    assert result.placement_ok, result.placement_report
    three = result.tasks[2].result
    assert three["t_launch"] >= min(t.result["t_done"] for t in result.tasks[:2]) - 0.5


def test_plain_parsl_drops_results_of_the_mixed_backlog(site, tmp_path):
    """The same workload submitted straight to MPIExecutor: what the gate exists for. If this starts failing,
    Parsl has fixed its backlog (the recursion in the manager) and the gate is only a convenience."""
    site.apply_env()
    stock = MPIExecutor(label="plain_mpi", address=site.address, max_workers_per_block=4, mpi_launcher="srun",
                        provider=slurm_provider(site, BlockShape.build(site, 4)))
    dfk = parsl.load(parsl.Config(executors=[stock], run_dir=str(tmp_path / "runinfo")))
    try:
        app = parsl.python_app(run_mpi_task, executors=["plain_mpi"])
        futures = []
        for i, spec in enumerate(MIXED):
            argv = app_command("mpi4py", task=f"p{i}", out_dir=tmp_path / "records", sleep=3.0)
            futures.append(app(spec.to_dict(), "srun", argv, f"p{i}", 120,
                               parsl_resource_specification=spec.parsl_resource_spec()))
        # 3 s tasks on a block that starts in ~10 s: 30 s is ample for all three had nothing been dropped.
        done, not_done = wait(futures, timeout=30)
        assert not_done, "every task completed on plain MPIExecutor: the backlog defect is gone"
    finally:
        _cleanup_parsl(dfk, timeout=30)


BAD_INPUTS = [
    (["-N", "0"], "0"),
    (["-N", "-1"], "-1"),
    (["-N", "1.5"], "1.5"),
    (["-N", "two"], "two"),
    (["-N", "2", "-n", "5"], "ranks=5"),
    (["-N", "2", "--ranks-per-node", "2", "-n", "5"], "5"),
    (["-N", "5"], "5 nodes"),
    (["-N", "2", "--ranks-per-node", "3"], "3"),
    (["-N", "2", "-c", "0"], "0"),
    (["-N", "2", "--repeats", "0"], "--repeats 0"),
    (["-N", "2", "--nodes-per-block", "9"], "9"),
    (["-N", "2", "--path", "nope"], "nope"),
]


@pytest.mark.parametrize("args, named", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_refused_before_any_job_exists(cluster, tmp_path, args, named):
    before = job_ids(cluster)
    result = CliRunner().invoke(main, ["run", "--cluster-name", cluster.layout.name,
                                       "--workdir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert named in result.output
    time.sleep(0.2)
    # Slurm may forget finished jobs meanwhile (MinJobAge): only a new one would mean a submission.
    assert job_ids(cluster) - before == set(), "a Slurm job was submitted for bad input"


# --- the node gate's admission order (no cluster: the gate only sees futures) ---------------------------------

def _gated_run(policy: str, sizes: list[int], capacity: int = 4) -> list[int]:
    """Submit tasks of `sizes` nodes through a NodeGate; return the order in which they were handed on."""
    from concurrent.futures import Future

    from fluxmpi.launch.gate import NodeGate
    gate, started, inner = NodeGate(capacity, policy=policy), [], {}

    def starter(i):
        def start():
            started.append(i)
            inner[i] = Future()
            return inner[i]
        return start
    proxies = [gate.submit(n, starter(i), label=f"task t{i}") for i, n in enumerate(sizes)]
    deadline = time.monotonic() + 10
    while len(started) < len(sizes) and time.monotonic() < deadline:
        running = [i for i in started if not inner[i].done()]
        if running:   # finish the oldest running task; the gate admits the next on its own thread
            inner[running[0]].set_result(running[0])
        time.sleep(0.2)
    for i in started:
        if not inner[i].done():
            inner[i].set_result(i)
    assert all(p.result(timeout=5) is not None for p in proxies)
    return started


@pytest.mark.parametrize("policy, order", [("largest-first", [0, 3, 1, 4, 2]), ("in-order", [0, 1, 2, 3, 4])])
def test_gate_admits_by_its_policy(policy, order):
    # The 4-node task t0 holds every node while the others queue; then each finish frees nodes for the next.
    assert _gated_run(policy, [4, 1, 1, 3, 3]) == order


@pytest.mark.parametrize("policy", ["largest-first", "in-order"])
def test_gate_picks_as_pick_next_over_all_waiting_tasks_would(policy):
    """The gate keeps one queue per size; its choice must be pick_next's over the whole queue in submission
    order, a task whose walltime no longer fits the time left counting as too large."""
    import random
    from concurrent.futures import Future

    from fluxmpi.launch.gate import NodeGate, fits_in, pick_next
    rng = random.Random(7)
    gate = NodeGate(8, policy=policy)
    gate.free = 0                                   # nothing is admitted while the queue fills
    tasks = [(rng.randint(1, 8), rng.choice([None, None, 30.0, 300.0])) for _ in range(300)]
    for i, (nodes, seconds) in enumerate(tasks):
        gate.submit(nodes, Future, label=f"t{i}", seconds=seconds)
    left_queue = list(range(len(tasks)))
    while left_queue:
        gate.free, left = rng.randint(0, 8), rng.choice([None, 100.0, 1000.0])
        needs = [tasks[i][0] if fits_in(tasks[i][1], left) else gate.capacity + 1 for i in left_queue]
        k = pick_next(needs, gate.free, policy)
        with gate._lock:
            item = gate._next(left)
        assert (item.label if item else None) == (f"t{left_queue[k]}" if k is not None else None)
        if k is not None:
            del left_queue[k]
    assert gate.waiting == 0 and gate.smallest_waiting() is None


def test_gate_admits_after_finishes_on_one_thread_that_ends_when_idle_and_comes_back(monkeypatch):
    from concurrent.futures import Future

    from fluxmpi.launch import gate as gate_module
    monkeypatch.setattr(gate_module, "ADMITTER_IDLE_EXIT", 0.2)
    gate, inner = gate_module.NodeGate(1), []

    def start():
        inner.append(Future())
        return inner[-1]
    proxies = [gate.submit(1, start, label=f"t{i}") for i in range(3)]
    assert len(inner) == 1 and gate.waiting == 2
    inner[0].set_result(0)                       # t0 ends: the admitting thread starts t1
    deadline = time.monotonic() + 5
    while len(inner) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    first = gate._admitter
    assert len(inner) == 2 and first is not None and first.name == "fluxmpi-gate"
    while gate._admitter is not None and time.monotonic() < deadline:   # nothing ends: it ends itself
        time.sleep(0.05)
    first.join(1)
    assert gate._admitter is None and not first.is_alive()
    inner[1].set_result(1)                       # a new one comes for the next finish
    while len(inner) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    inner[2].set_result(2)
    assert [p.result(timeout=5) for p in proxies] == [0, 1, 2] and gate.waiting == 0


def test_gate_refuses_an_unknown_policy():
    from fluxmpi.launch.gate import NodeGate
    with pytest.raises(SpecError, match="'smallest-first' is not known"):
        NodeGate(4, policy="smallest-first")


def test_block_paths_submit_their_first_block_within_a_second_of_load(tmp_path):
    """Parsl sends a config's initial blocks at its strategy's first tick: 5 s after load by default."""
    from fluxmpi.launch.htex import htex_mpi_config
    from fluxmpi.launch.static import static_blocks_config
    from fluxmpi.site import Site
    site = Site(name="test", partition="debug", nodes=4, cores_per_node=2, address="10.0.0.1")
    for config in (htex_mpi_config(site, run_dir=str(tmp_path)),
                   static_blocks_config(site, nodes_per_block=2, run_dir=str(tmp_path))):
        assert config.strategy == "simple" and config.strategy_period <= 1, config.strategy_period


def test_htex_starts_a_task_only_where_its_walltime_fits_and_refuses_one_no_block_can_hold(site, tmp_path):
    """Walltime-aware admission on HTEX, blocks of 60 s (Slurm's limits are whole minutes). Four 4-node tasks
    declaring 8 s and sleeping 4 s run one after another and leave the block about 35-40 s; a 4-node task
    declaring 45 s then does not fit what is left: it is not started there (it would be cut short), the block,
    now idle, is ended, and the task starts in the next block. A 120 s task fits no block: refused at submit."""
    from fluxmpi.launch.resilience import Resilience
    short = MPITaskSpec(nodes=4, ranks_per_node=1, walltime=8)
    specs = [short] * 4 + [MPITaskSpec(nodes=4, ranks_per_node=1, walltime=45),
                           MPITaskSpec(nodes=1, ranks_per_node=1, walltime=120)]
    result = run_tasks("htex", site, specs, app="mpi4py", workdir=tmp_path, sleep=4.0, walltime=60, run_timeout=300,
                       resilience=Resilience(status_period=3))
    errors = [t.error for t in result.tasks]
    print(f"\nblocks: {result.blocks}\nerrors: {errors}")
    assert errors[:5] == [None] * 5, errors
    assert "has a walltime of 120s but a block of htex_srun runs for at most 60s" in errors[5], errors[5]
    assert all(t.attempts == 1 for t in result.tasks[:5]), [(t.task, t.earlier_errors) for t in result.tasks]
    assert len(result.blocks) == 2, result.blocks          # the long task ran in a second block
    starts = slurm.job_start_times(list(result.blocks))
    first, second = sorted(starts.values())
    long_task = result.tasks[4]
    assert long_task.admitted >= second - 1, (long_task.admitted, starts)   # not before the fresh block ran
    assert all(b["state"] != "TIMEOUT" for b in result.blocks.values()), result.blocks
    assert result.placement_ok, result.placement_report
