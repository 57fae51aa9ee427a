"""Both MPI apps on the real local cluster, through srun --mpi=pmix and through mpirun inside an allocation,
and the placement checker on their real output: accepted as is, rejected when doctored."""

import dataclasses
import json
import sys

import pytest
from conftest import REPO

from fluxmpi import placement
from fluxmpi.launch.blocks import SLURM_TASKS_FIX
from fluxmpi.mpi_apps import app_command

pytestmark = pytest.mark.cluster

LAUNCHES = {
    "srun-pmix": ["srun", "--mpi=pmix", "-N2", "--ntasks-per-node=2"],
    "salloc-mpirun": ["salloc", "-N2", "--ntasks-per-node=2", "mpirun"],
}


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



# Inside a 2-node allocation, on its first node: STREAMS threads each launch ROUNDS 2-node Open MPI tasks back to
# back through the htex-mpiexec path's own task body, so launches start while others end and clean up.
CONCURRENT_MPIRUNS = """
import glob, json, os, sys, tempfile, threading
sys.path.insert(0, {repo!r})
from fluxmpi.apps import run_mpi_task
from fluxmpi.spec import MPITaskSpec
spec = MPITaskSpec(nodes=2, ranks_per_node=1, exclusive=False).to_dict()
errors, done = [], []
def stream(s):
    for r in range({rounds}):
        try:
            run_mpi_task(spec, "mpiexec-openmpi", [{binary!r}], f"s{{s}}r{{r}}", 120)
            done.append(1)
        except Exception as err:
            errors.append(str(err))
threads = [threading.Thread(target=stream, args=(s,)) for s in range({streams})]
[t.start() for t in threads]
[t.join() for t in threads]
left = glob.glob(os.path.join(tempfile.gettempdir(), "fluxmpi-ompi-*"))
print(json.dumps({{"done": len(done), "errors": errors, "left": left}}))
"""


def test_concurrent_mpiruns_on_one_node_never_collide_in_the_session_directory(cluster, c_binary, tmp_path):
    """Issue 11: two mpiruns started at once on a block's first node (the nodes share /tmp) failed in
    orte/util/session_dir.c. Each launch now has a session directory base of its own."""
    streams, rounds = 4, 6
    script = tmp_path / "concurrent.py"
    script.write_text(CONCURRENT_MPIRUNS.format(repo=str(REPO), rounds=rounds, streams=streams,
                                                binary=str(c_binary)))
    batch = tmp_path / "job.sh"
    batch.write_text(f"#!/bin/bash\n{SLURM_TASKS_FIX}\nexec {sys.executable} {script}\n")
    proc = cluster.run(["sbatch", "-W", "-N2", "--exclusive", "-o", str(tmp_path / "out.txt"), str(batch)],
                       timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out.txt").read_text().strip().splitlines()[-1])
    assert not [e for e in report["errors"] if "session_dir" in e], report["errors"][:3]
    assert report["errors"] == [] and report["done"] == streams * rounds, report["errors"][:3]
    assert report["left"] == [], "session directory bases were left behind"
