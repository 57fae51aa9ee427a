"""`fluxmpi bench --quick` on the local cluster: consistent raw records, verified placements, the plots as files."""

import json

import pytest
from click.testing import CliRunner

from fluxmpi.bench import metrics
from fluxmpi.bench.driver import parse_names
from fluxmpi.cli.bench import bench

pytestmark = pytest.mark.cluster

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    result = CliRunner().invoke(bench, ["--quick", "--cluster-name", cluster.layout.name,
                                        "--cluster-nodes", str(cluster.layout.nodes), "--out", str(out),
                                        "--no-progress"])
    return result, out


def test_quick_run_succeeds_and_prints_the_table(quick_run):
    result, out = quick_run
    assert result.exit_code == 0, result.output
    assert "| run | status |" in result.output
    assert (out / "results.md").read_text() in result.output


def test_every_path_is_a_row_run_or_explained(quick_run):
    _, out = quick_run
    doc = json.loads((out / "results.json").read_text())
    (entry,) = doc["workloads"]
    runs = {r["name"]: r for r in entry["runs"]}
    assert set(runs) == set(parse_names("all"))   # no --container: no +ctr rows
    for r in runs.values():
        assert r["status"] in ("ok", "unavailable"), (r["name"], r["status"], r["reason"])
        if r["status"] == "unavailable":
            assert r["reason"], r["name"]
    # Slurm is here, so the srun-based paths and their baseline must have run.
    for name in ("bare-srun", "htex", "htex+wrap", "htex-mpiexec", "static", "bare-mpirun"):
        assert runs[name]["status"] == "ok", runs[name]["reason"]


def test_every_task_has_all_timestamps_in_order_and_verified_placement(quick_run):
    _, out = quick_run
    doc = json.loads((out / "results.json").read_text())
    (entry,) = doc["workloads"]
    sizes = entry["workload"]["sizes"]
    for r in entry["runs"]:
        if r["status"] != "ok":
            continue
        assert r["placement_ok"] is True and "OK:" in r["placement_report"], r["name"]
        assert len(r["tasks"]) == len(sizes)
        for t, size in zip(r["tasks"], sizes):
            assert metrics.timing_problems(t) == [], (r["name"], t)
            assert t["ok"] and metrics.complete(t), (r["name"], t)
            assert t["submitted"] <= t["started"] <= t["ended"] <= t["returned"]
            assert t["nodes_req"] == size and len(t["nodes"]) == size, (r["name"], t)
            assert t["rank_started"] <= t["started"]
        assert r["t_start"] <= r["t_first_result"] <= r["t_end"]


def test_stored_figures_follow_from_the_raw_records(quick_run):
    _, out = quick_run
    doc = json.loads((out / "results.json").read_text())
    for r in doc["workloads"][0]["runs"]:
        if r["status"] != "ok":
            continue
        again = metrics.summarize(r["tasks"], doc["site"]["nodes"], r["t_start"], r["t_first_result"])
        # Figures against another run (its baseline, its path without the wrapper) are not the run's own.
        stored = {k: v for k, v in r["summary"].items()
                  if k not in ("overhead_vs_baseline", "wrapper_cost", "startup_vs_baseline")}
        parts = stored.pop("components_mean"), again.pop("components_mean")
        assert stored.pop("startup_parts") == metrics.startup_parts(r["t_start"], r["startup"], r["t_first_result"])
        assert stored == pytest.approx(again)
        assert {k: v for k, v in parts[0].items() if v is not None} == \
            pytest.approx({k: v for k, v in parts[1].items() if v is not None})
        s = r["summary"]
        assert s["ok"] == s["tasks"] and s["overhead_median"] > 0
        assert s["makespan"] >= s["lower_bound"] > 0
        assert 0 < s["utilization"] <= 1


def test_paths_are_compared_with_their_baselines(quick_run):
    _, out = quick_run
    doc = json.loads((out / "results.json").read_text())
    runs = {r["name"]: r for r in doc["workloads"][0]["runs"]}
    htex = runs["htex"]["summary"]
    assert htex["overhead_vs_baseline"] == pytest.approx(
        htex["overhead_median"] / runs["bare-srun"]["summary"]["overhead_median"])
    assert any(t["target"] == "overhead" and t["path"] == "htex" and t["met"] in (True, False)
               for t in doc["targets"])
    assert htex["startup_vs_baseline"] == pytest.approx(htex["startup"] / runs["bare-srun"]["summary"]["startup"])


def test_the_start_up_is_split_where_each_run_has_stamps(quick_run):
    _, out = quick_run
    doc = json.loads((out / "results.json").read_text())
    runs = {r["name"]: r for r in doc["workloads"][0]["runs"]}
    # htex compiles as its first task; bare-srun compiles in its allocation; htex+wrap has no compile task.
    for name, missing in (("htex", set()), ("static", set()), ("bare-srun", set()), ("bare-mpirun", set()),
                          ("htex+wrap", {"ready", "compiled"})):
        r = runs[name]
        assert {k for k, v in r["startup"].items() if v is None} == missing, (name, r["startup"])
        parts = r["summary"]["startup_parts"]
        assert sum(v for v in parts.values() if v is not None) == pytest.approx(r["summary"]["startup"]), name
    assert runs["bare-srun"]["summary"]["startup_parts"]["pool"] == 0.0     # steps need nothing started
    assert runs["htex"]["summary"]["startup_parts"]["pool"] > 0             # the worker pool starts in the block
    assert "Where the start-up goes" in (out / "results.md").read_text()


def test_plots_are_written(quick_run):
    _, out = quick_run
    doc = json.loads((out / "results.json").read_text())
    assert sorted(p.split("/")[-1] for p in doc["plots"]) == ["overhead-uniform.png", "startup-uniform.png",
                                                                       "timeline-uniform.png"]
    for name in ("timeline-uniform.png", "overhead-uniform.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG and len(data) > 10_000
