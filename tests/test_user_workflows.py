"""Users' own MPI applications, as their own scripts write them, on the real local cluster (4 nodes).

Only the config comes from fluxmpi (`fluxmpi.config`): a stock `@bash_app` compiles the user's C program as the
first task, then node-spanning `@bash_app`s run it with `$PARSL_MPI_PREFIX` and `parsl_resource_specification`.
The executor itself carries the node gate, so the mixed sizes that make stock MPIExecutor drop results
(tests/test_htex_paths.py keeps that defect in view) all complete here.
"""

import json
import subprocess
import sys
from pathlib import Path

import parsl
import pytest
from conftest import REPO
from parsl import bash_app

import fluxmpi
from fluxmpi import placement
from fluxmpi.runner import _cleanup_parsl

pytestmark = pytest.mark.cluster

EXAMPLES = REPO / "examples"


def users_apps():
    """The user's app, made inside a function as a user's script makes it in __main__: Parsl then ships it
    by value (a test module's functions would be shipped by name, which the workers cannot import)."""
    @bash_app
    def run_mpitest(exe, seconds, stdout=None, stderr=None, parsl_resource_specification=None):
        return f"sleep {seconds}; $PARSL_MPI_PREFIX {exe}"
    return run_mpitest


def test_users_own_bash_apps_of_mixed_sizes_all_complete_on_the_fluxmpi_htex_config(cluster, tmp_path):
    """examples/mixed_sizes_bash_apps.py, run as a user runs it: compile task first, then tasks of 2, 2, 3, 1
    nodes on a 4-node block. Every task completes on exactly the nodes it asked for (the program's own output)."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / "mixed_sizes_bash_apps.py"), "--cluster-name",
                           cluster.layout.name, "--workdir", str(tmp_path)], capture_output=True, text=True,
                          timeout=900, env={**cluster.environ(), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["nodes_asked"] for r in report] == [2, 2, 3, 1]
    for r in report:
        assert r["ok"], r
        assert r["ranks"] == list(range(2 * r["nodes_asked"])), r
        assert len(r["hosts"]) == r["nodes_asked"], r
        assert set(r["hosts"]) <= set(cluster.layout.node_names)


def test_a_task_larger_than_the_block_is_refused_at_submit(site, tmp_path):
    run_mpitest = users_apps()
    dfk = parsl.load(fluxmpi.config("htex", site=site, nodes_per_block=2, run_dir=str(tmp_path / "runinfo")))
    try:
        fut = run_mpitest("true", 0, parsl_resource_specification={"num_nodes": 3, "ranks_per_node": 1})
        with pytest.raises(Exception, match="asks for 3 nodes but the block has 2"):
            fut.result(timeout=30)
        bad = run_mpitest("true", 0, parsl_resource_specification={"num_nodes": 2, "num_ranks": 3})
        with pytest.raises(Exception, match="does not split evenly"):
            bad.result(timeout=30)
    finally:
        _cleanup_parsl(dfk, timeout=30)


PATHS = ["htex", "htex-mpiexec", "static",
         pytest.param("flux", marks=pytest.mark.flux), pytest.param("flux-jobs", marks=pytest.mark.flux)]


@pytest.mark.parametrize("path", PATHS)
def test_one_mpi_app_runs_unchanged_on_every_path_each_rank_once_where_asked(cluster, tmp_path, path):
    """examples/hello_mpi_app.py: one @fluxmpi.mpi_app function, a compile task first, 2-node x 2-rank tasks;
    only --path changes. Every rank ran exactly once, on the nodes asked, placement checked from the wrapper."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / "hello_mpi_app.py"), "--path", path, "--cluster-name",
                           cluster.layout.name, "--workdir", str(tmp_path), "--repeats", "2", "--sleep", "1"],
                          capture_output=True, text=True, timeout=900,
                          env={**cluster.environ(), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] and sorted(summary["tasks"]) == ["hello-0", "hello-1"], summary
    for task, placed in summary["tasks"].items():
        assert placed["ranks"] == [0, 1, 2, 3], f"{task}: each rank exactly once"
        assert len(placed["hosts"]) == 2 and set(placed["hosts"]) <= set(cluster.layout.node_names)
    records = placement.read_records(summary["records_dir"])
    assert records.problems == [] and {r.app for r in records.records} == {"wrapper"}
    # The program's own output is in the task's stdout file, one line per rank.
    out = (Path(summary["records_dir"]).parent / "tasks" / "hello-0.out").read_text()
    assert out.count("rank ") == 4, out[:500]
