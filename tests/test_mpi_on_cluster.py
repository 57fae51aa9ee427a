"""Both MPI apps on the real local cluster, through srun --mpi=pmix and through mpirun inside an allocation,
and the placement checker on their real output: accepted as is, rejected when doctored."""

import dataclasses
import shutil

import pytest

from fluxmpi import placement
from fluxmpi.mpi_apps import app_command, compile_c_app

pytestmark = pytest.mark.cluster

LAUNCHES = {
    "srun-pmix": ["srun", "--mpi=pmix", "-N2", "--ntasks-per-node=2"],
    "salloc-mpirun": ["salloc", "-N2", "--ntasks-per-node=2", "mpirun"],
}


@pytest.fixture(scope="module")
def c_binary(tmp_path_factory):
    if shutil.which("mpicc") is None:
        pytest.skip("mpicc not installed: run install_scripts/install-cluster-deps.sh")
    return compile_c_app(tmp_path_factory.mktemp("bin"))


def run_app(cluster, launch, app, c_binary, out_dir, task, sleep=None):
    argv = LAUNCHES[launch] + app_command(app, task=task, out_dir=out_dir, c_binary=c_binary, sleep=sleep)
    proc = cluster.run(argv, timeout=120)
    assert proc.returncode == 0, f"{' '.join(argv)} failed:\n{proc.stderr}"
    return placement.read_records(out_dir).placements()[task]


@pytest.mark.parametrize("launch", list(LAUNCHES))
@pytest.mark.parametrize("app", ["c", "mpi4py"])
def test_app_spans_two_nodes_with_two_ranks_each(cluster, c_binary, tmp_path, launch, app):
    placed = run_app(cluster, launch, app, c_binary, tmp_path, "t0")
    assert placement.check_task(placed, nodes=2, ranks_per_node=2) == []
    assert len(placed.nodes) == 2 and set(placed.nodes) <= set(cluster.layout.node_names)
    assert all(r.size == 4 and r.cpus for r in placed.records)
    assert all(r.t_start <= r.t_init <= r.t_end for r in placed.records)
    library = placed.records[0].mpi_library
    assert "Open MPI" in library, library


def test_checker_rejects_doctored_real_output(cluster, c_binary, tmp_path):
    placed = run_app(cluster, "srun-pmix", "c", c_binary, tmp_path, "t0")
    spec = type("Spec", (), {"nodes": 2, "ranks_per_node": 2})
    assert placement.check_run([placed], {"t0": spec}).ok

    missing = placement.TaskPlacement("t0", placed.records[1:])
    assert any(p.rank == 0 and "no record" in p.message for p in placement.check_task(missing, 2, 2))

    other = next(n for n in cluster.layout.node_names if n not in placed.nodes)
    moved = [dataclasses.replace(placed.records[0], host=other)] + list(placed.records[1:])
    problems = placement.check_task(placement.TaskPlacement("t0", moved), 2, 2)
    assert problems and any(other in str(p) for p in problems)

    # A second real task, then doctored to sit on the first one's node at the same time, on the same cores.
    second = run_app(cluster, "srun-pmix", "c", c_binary, tmp_path / "b", "t1")
    fake = [dataclasses.replace(r, host=placed.records[i].host, t_init=placed.start, t_end=placed.end)
            for i, r in enumerate(second.records)]
    report = placement.check_run([placed, placement.TaskPlacement("t1", fake)], {"t0": spec, "t1": spec})
    assert not report.ok
    assert any(p.other_task for p in report.problems), report.render()
