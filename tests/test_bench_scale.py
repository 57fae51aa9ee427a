"""The scale workload without a cluster: its plan, its rows and targets from bench documents, its table, its
plot, and the CLI refusing what does not go with it. (The scale run itself is in docs/benchmarks.md.)"""

import pytest
from click.testing import CliRunner

from fluxmpi.bench import scale
from fluxmpi.cli.bench import bench


def bench_doc(tasks: int, runs: dict[str, tuple[float, float, float]]) -> dict:
    """A bench document with one uniform workload of `tasks` 1-node tasks; runs: name -> (overhead median,
    tasks/s, driver CPU s)."""
    return {"workloads": [{"workload": {"name": f"t{tasks}-n1", "tasks": tasks, "nodes": 1}, "runs": [
        {"name": name, "status": "ok", "reason": "", "placement_ok": True, "cpu": {"self": cpu * 0.75, "children": cpu * 0.25},
         "summary": {"ok": tasks, "overhead_median": med, "overhead_p95": med * 1.5, "throughput": rate,
                     "makespan_ratio": 1.2, "overhead_slope": 0.0004 if name == "htex" else -0.002, "startup": 5.0}}
        for name, (med, rate, cpu) in runs.items()]}]}


def test_counts_and_plans_are_checked_before_anything_runs():
    assert scale.parse_counts("16,4,8,4", (1,), "--scale-nodes") == (4, 8, 16)
    assert scale.parse_counts(None, (4, 8), "--scale-nodes") == (4, 8)
    for bad in ("4,x", "0,4", ","):
        with pytest.raises(scale.ScaleError, match="--scale-nodes"):
            scale.parse_counts(bad, (4,), "--scale-nodes")
    with pytest.raises(scale.ScaleError, match="task sizes \\[8\\] do not fit the smallest node count 4"):
        scale.ScalePlan(nodes=(4, 16), sizes=(1, 8))
    plan = scale.ScalePlan(nodes=(4, 8), tasks=(20, 200), sizes=(1, 2))
    assert [w.name for w in plan.workloads()] == ["t20-n1", "t20-n2", "t200-n1", "t200-n2"]
    assert plan.runs() == 8 and {w.seconds for w in plan.workloads()} == {scale.DEFAULT_SLEEP}


def test_rows_marginal_cpu_and_targets():
    rows = []
    for nodes in (4, 32):
        rows += scale.scale_rows(bench_doc(20, {"htex": (0.4, 6.0, 2.0), "flux-jobs": (0.3, 7.0, 1.0),
                                                "bare-flux": (0.3, 8.0, 0.1)}), nodes)
        rows += scale.scale_rows(bench_doc(200, {"htex": (0.4, 6.0, 2.9), "flux-jobs": (0.3, 6.0, 2.8),
                                                 "bare-flux": (0.3, 8.0, 0.2)}), nodes)
    rows = scale.with_marginal_cpu(rows)
    htex200 = next(r for r in rows if (r["nodes"], r["tasks"], r["name"]) == (4, 200, "htex"))
    assert htex200["cpu_per_task"] == pytest.approx(2.9 / 200)
    assert htex200["cpu_marginal"] == pytest.approx((2.9 - 2.0) / 180)          # 5.0 ms per added task
    assert htex200["cpu_own_marginal"] == pytest.approx((2.9 - 2.0) * 0.75 / 180)  # the process alone: 3.75 ms (3.7 shown)
    assert next(r for r in rows if r["tasks"] == 20)["cpu_marginal"] is None     # nothing smaller to compare
    found = {(t["target"], t["workload"], t["name"]): t for t in scale.scale_targets(rows)}
    assert found[("slope", "4 nodes, 200 x 1-node", "htex")]["met"]                # +0.4 ms/task
    assert not found[("slope", "4 nodes, 200 x 1-node", "flux-jobs")]["met"]       # -2 ms/task
    assert ("slope", "4 nodes, 20 x 1-node", "htex") not in found                  # too few tasks for a slope
    assert not found[("driver cpu", "32 nodes, 200 x 1-node", "flux-jobs")]["met"]  # own 7.5 ms per added task
    # judged on the fluxmpi process itself (3.75 ms), its children (an interchange) shown beside it
    assert found[("driver cpu", "4 nodes, 200 x 1-node", "htex")]["met"]
    assert "3.7 ms of the fluxmpi process's CPU per added task (limit 5 ms); 5.0 ms with its children" in \
        found[("driver cpu", "4 nodes, 200 x 1-node", "htex")]["detail"]
    # tasks/s only at the largest node count: bare-flux 8 / flux-jobs 6 = 1.33x at 200 tasks, 1.14x at 20
    assert not found[("tasks/s", "32 nodes, 200 x 1-node", "flux-jobs")]["met"]
    assert found[("tasks/s", "32 nodes, 20 x 1-node", "flux-jobs")]["met"]
    assert not any(t["workload"].startswith("4 nodes") and t["target"] == "tasks/s" for t in found.values())
    assert not any(t["name"].startswith("bare-") for t in found.values())        # baselines have no targets


def test_table_and_plot(tmp_path):
    rows = scale.with_marginal_cpu(scale.scale_rows(bench_doc(20, {"htex": (0.4, 6.0, 2.0)}), 4)
                                   + scale.scale_rows(bench_doc(200, {"htex": (0.45, 6.5, 2.9)}), 4)
                                   + scale.scale_rows(bench_doc(200, {"htex": (0.5, 12.0, 3.0)}), 8))
    doc = {"plan": {"nodes": (4, 8), "tasks": (20, 200), "sizes": (1,), "sleep": 0.2}, "rows": rows,
           "targets": scale.scale_targets(rows)}
    text = scale.render(doc)
    assert "| 4 | 200 | 1 | htex | ok | 200 | 0.450 | 0.675 | 6.50 | 1.20 | 0.40 | 14.5 | 5.0 | 3.7 | verified |" in text
    assert "| slope | 4 nodes, 200 x 1-node | htex |" in text
    png = scale.plot(doc, tmp_path / "scale.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_the_cli_refuses_what_does_not_go_with_the_scale_workload():
    runner = CliRunner()
    for args, words in ((["--workload", "scale", "--workload", "mixed"], "--workload scale runs alone"),
                        (["--workload", "scale", "--tasks", "5"], "--tasks do not apply to --workload scale"),
                        (["--scale-nodes", "4,8"], "go with --workload scale"),
                        (["--workload", "scale", "--scale-nodes", "4,x"], "--scale-nodes '4,x'"),
                        (["--workload", "scale", "--scale-nodes", "1,4"], "task sizes [2] do not fit"),
                        (["--workload", "bursts", "--workload", "mixed"],
                         "--workload bursts runs alone (flux-jobs held against elastic); drop mixed")):
        result = runner.invoke(bench, args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("fluxmpi: error: ") and words in result.output, result.output
