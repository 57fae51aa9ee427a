"""The Flux launch path with real brokers: a test instance on this machine (no Slurm), then Flux inside Slurm
blocks of the local cluster (FluxExecutor + SlurmProvider). Skipped, with the reason, where flux-core, its
Python bindings or matching versions are missing."""

import json
import time
from concurrent.futures import wait
from pathlib import Path

import parsl
import pytest
from click.testing import CliRunner
from flux_local import flux_local_config

from fluxmpi import placement, slurm
from fluxmpi.apps import MPITaskFailed, run_mpi_task
from fluxmpi.cli import main
from fluxmpi.launch.flux.executor import flux_config, flux_resource_spec
from fluxmpi.mpi_apps import app_command
from fluxmpi.runner import _cleanup_parsl, run_tasks
from fluxmpi.spec import MPITaskSpec, SpecError

pytestmark = pytest.mark.flux


def timing(what: str, seconds: float) -> None:
    print(f"\n[flux timing] {what}: {seconds:.1f} s")


def by_task(records_dir: Path) -> dict[str, placement.TaskPlacement]:
    records = placement.read_records(records_dir)
    assert not records.problems, records.problems
    return records.placements()


# ---- a test instance on this machine ------------------------------------------------------------

class TestLocalInstance:
    """`flux start --test-size=2` under FluxExecutor: every broker is this machine, so only the MPI side of
    placement (all ranks ran, one world) is checked here; nodes are checked on the cluster below."""

    @pytest.fixture(scope="class")
    def local_app(self, tmp_path_factory):
        run_dir = tmp_path_factory.mktemp("flux-local")
        dfk = parsl.load(flux_local_config(2, run_dir=str(run_dir / "runinfo")))
        try:
            yield parsl.python_app(run_mpi_task, executors=["flux_local"]), run_dir
        finally:
            _cleanup_parsl(dfk, timeout=60)

    def submit(self, app, spec, argv, task, timeout=120):
        return app(spec.to_dict(), "flux", argv, task, timeout,
                   parsl_resource_specification=flux_resource_spec(spec, 2))

    def test_each_flux_task_is_one_mpi_rank(self, local_app, tmp_path):
        app, _ = local_app
        spec = MPITaskSpec(nodes=2, ranks_per_node=1, exclusive=False)
        futures = [self.submit(app, spec, app_command("mpi4py", task=f"l{i}", out_dir=tmp_path), f"l{i}")
                   for i in range(2)]
        results = [f.result(timeout=240) for f in futures]
        assert [r["task"] for r in results] == ["l0", "l1"] and all(r["ranks"] == 2 for r in results)
        placements = by_task(tmp_path)
        for task in ("l0", "l1"):
            ranks = sorted((r.rank, r.size) for r in placements[task].records)
            assert ranks == [(0, 2), (1, 2)], f"{task}: not one MPI world of 2 ranks: {ranks}"

    def test_a_task_larger_than_the_instance_is_refused_not_queued(self, local_app, tmp_path):
        app, _ = local_app
        too_big = MPITaskSpec(nodes=3, ranks_per_node=1, exclusive=False)
        start = time.monotonic()
        future = self.submit(app, too_big, app_command("mpi4py", task="big", out_dir=tmp_path), "big")
        with pytest.raises(Exception, match="unsatisfiable request: need 3 node"):
            future.result(timeout=120)
        timing("local instance refused a 3-node task on 2 brokers", time.monotonic() - start)

    def test_rank_zero_failure_comes_back_as_the_task_error(self, local_app):
        app, _ = local_app
        argv = ["sh", "-c", '[ "$FLUX_TASK_RANK" != 0 ] || { echo "rank $FLUX_TASK_RANK broke" >&2; exit 5; }']
        with pytest.raises(MPITaskFailed, match=r"rank 0 of 2 \(sh\) exited with code 5") as err:
            self.submit(app, MPITaskSpec(2, 1, exclusive=False), argv, "bad0").result(timeout=120)
        assert "rank 0 broke" in str(err.value)

    def test_a_failure_on_another_rank_fails_the_task(self, local_app):
        app, run_dir = local_app
        argv = ["sh", "-c", '[ "$FLUX_TASK_RANK" = 0 ] || { echo "rank $FLUX_TASK_RANK broke" >&2; exit 6; }']
        with pytest.raises(Exception, match="exited abnormally: returned 6"):
            self.submit(app, MPITaskSpec(2, 1, exclusive=False), argv, "bad1").result(timeout=120)
        stderr = "".join(p.read_text() for p in (run_dir / "runinfo" / "flux_local").glob("*_stderr.txt"))
        assert "task bad1: rank 1 of 2 (sh) exited with code 6" in stderr


# ---- Flux inside Slurm blocks of the local cluster ----------------------------------------------

def job_ids(cluster) -> set[str]:
    """Every job slurmctld still remembers, finished ones included (MinJobAge keeps them a while)."""
    return {job.job_id for job in slurm.jobs(env=cluster.environ())}


def summary(result) -> str:
    return "\n".join([result.placement_report] + [f"{t.task}: {t.error}" for t in result.failed])


@pytest.mark.cluster
def test_four_concurrent_two_node_tasks_of_two_ranks_per_node(site, tmp_path):
    specs = [MPITaskSpec(nodes=2, ranks_per_node=2)] * 4
    result = run_tasks("flux", site, specs, app="c", workdir=tmp_path, sleep=2.0, nodes_per_block=4,
                       run_timeout=600)
    assert result.ok, summary(result)
    timing("4 x 2x2 tasks, load to last result", result.t_end - result.t_loaded)
    timing("4 x 2x2 tasks, compiled to last result", max(t.returned for t in result.tasks) - result.t_compiled)
    placements = by_task(Path(result.workdir) / "records")
    assert all(len(placements[t].nodes) == 2 for t in placements)
    ordered = sorted(placements.values(), key=lambda p: p.start)
    overlapping = [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:] if b.start < a.end]
    assert overlapping, "no two tasks ran at the same time: Flux did not run them concurrently"
    for a, b in overlapping:  # 2 ranks fill a 2-core node: concurrent tasks must be on different nodes
        assert not set(a.nodes) & set(b.nodes), f"{a.task} and {b.task} shared nodes while running"


@pytest.mark.cluster
def test_hello_world_case_twelve_three_node_tasks_on_three_node_blocks(site, tmp_path):
    """The case FluxExecutor was first tried on: 12 repeats of a 3-node task, 2 ranks per node."""
    specs = [MPITaskSpec(nodes=3, ranks_per_node=2)] * 12
    result = run_tasks("flux", site, specs, app="c", workdir=tmp_path, nodes_per_block=3, run_timeout=900)
    assert result.ok, summary(result)
    assert len(by_task(Path(result.workdir) / "records")) == 12
    timing("12 x 3x2 tasks, load to last result", result.t_end - result.t_loaded)
    timing("12 x 3x2 tasks, compiled to last result", max(t.returned for t in result.tasks) - result.t_compiled)


@pytest.fixture(scope="module")
def mixed_run(site, tmp_path_factory):
    """Exclusive and shared 2x1 tasks in one block, with an env file as the run's set-up lines."""
    workdir = tmp_path_factory.mktemp("flux-mixed")
    env_file = workdir / "env.sh"
    env_file.write_text(f"export FLUXMPI_ENV_FILE={env_file}\n")
    specs = [MPITaskSpec(2, 1), MPITaskSpec(2, 1), MPITaskSpec(2, 1, exclusive=False),
             MPITaskSpec(2, 1, exclusive=False)]
    result = run_tasks("flux", site, specs, app="mpi4py", workdir=workdir / "run", sleep=3.0, nodes_per_block=4,
                       worker_init=f"source {env_file}", run_timeout=600)
    assert result.ok, summary(result)
    return result, by_task(Path(result.workdir) / "records"), env_file


@pytest.mark.cluster
def test_exclusive_tasks_get_every_core_of_their_nodes(site, mixed_run):
    result, placements, _ = mixed_run
    for task in ("t0", "t1"):
        for record in placements[task].records:
            assert len(record.cpus) == site.cores_per_node, f"{task} rank {record.rank} got cpus {record.cpus}"
    others = [p for name, p in placements.items() if name not in ("t0", "t1")]
    for task in ("t0", "t1"):
        mine = placements[task]
        for other in others + [placements["t1" if task == "t0" else "t0"]]:
            if other.start < mine.end and mine.start < other.end:
                assert not set(mine.nodes) & set(other.nodes), f"{task} shared a node with {other.task}"


@pytest.mark.cluster
def test_shared_tasks_are_bound_to_their_own_cores(mixed_run):
    """Flux binds each job to the cores it allocated (default cpu-affinity); unbound, ranks would see both."""
    result, placements, _ = mixed_run
    for task in ("t2", "t3"):
        assert all(len(r.cpus) == 1 for r in placements[task].records), \
            {r.rank: sorted(r.cpus) for r in placements[task].records}
    assert result.placement_ok, result.placement_report  # no core shared between concurrent tasks


@pytest.mark.cluster
def test_the_runs_set_up_lines_reach_every_task(mixed_run):
    result, _, env_file = mixed_run
    assert [t.result["env_file"] for t in result.tasks] == [str(env_file)] * 4


@pytest.mark.cluster
def test_flux_in_the_block_refuses_a_task_larger_than_the_instance(site, tmp_path):
    """Bypassing fluxmpi's own check: Flux itself refuses what its instance cannot hold, promptly."""
    site.apply_env()
    dfk = parsl.load(flux_config(site, nodes_per_block=2, run_dir=str(tmp_path / "runinfo"), label="flux_direct"))
    try:
        app = parsl.python_app(run_mpi_task, executors=["flux_direct"])
        futures = {}
        for name, spec in (("fits", MPITaskSpec(2, 1)), ("big", MPITaskSpec(3, 1))):
            argv = app_command("mpi4py", task=name, out_dir=tmp_path / "records")
            futures[name] = app(spec.to_dict(), "flux", argv, name, 120,
                                parsl_resource_specification=flux_resource_spec(spec, site.cores_per_node))
        done, _ = wait(futures.values(), timeout=240)
        assert set(done) == set(futures.values()), "a task neither ran nor was refused within 240 s"
        assert futures["fits"].result()["ranks"] == 2
        # Refused at submit by the executor (FluxMPIExecutor), before Flux would answer "unsatisfiable request".
        with pytest.raises(SpecError, match="asks for 3 nodes but the Flux instance of flux_direct has 2"):
            futures["big"].result()
    finally:
        _cleanup_parsl(dfk, timeout=60)


@pytest.mark.cluster
def test_fluxmpi_refuses_an_oversized_task_before_any_job_exists(cluster, site, tmp_path):
    before = job_ids(cluster)
    with pytest.raises(SpecError, match="needs 5 nodes but the block has 4"):
        run_tasks("flux", site, [MPITaskSpec(5, 1)], workdir=tmp_path)
    time.sleep(0.2)
    assert job_ids(cluster) - before == set()      # no new job (Slurm may forget finished ones meanwhile)


@pytest.mark.cluster
def test_cli_runs_the_flux_path(cluster, tmp_path):
    result = CliRunner().invoke(main, ["run", "--path", "flux", "--cluster-name", cluster.layout.name,
                                       "-N", "2", "--ranks-per-node", "2", "--repeats", "2",
                                       "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "OK: 2 tasks placed as expected" in result.output
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["path"] == "flux" and run["ok"]
