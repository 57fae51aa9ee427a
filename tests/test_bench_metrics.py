"""fluxmpi bench without a cluster: workloads, per-task and per-run figures, targets, report and plots."""

import json

import pytest
from click.testing import CliRunner

from fluxmpi.bench import metrics, plots, report, targets
from fluxmpi.bench.driver import BenchError, not_applicable_reason, parse_names
from fluxmpi.bench.workload import Workload, WorkloadError, load_file, preset, resolve
from fluxmpi.cli.bench import bench


def task(index, nodes, submitted, started, ended, returned, *, ok=True, **stamps):
    row = {"task": f"t{index}", "index": index, "nodes_req": len(nodes), "ranks_per_node": 1, "nodes": list(nodes),
           "submitted": submitted, "admitted": None, "launched": None, "rank_started": None, "started": started,
           "ended": ended, "done": None, "returned": returned, "ok": ok, "error": None if ok else "boom"}
    row.update(stamps)
    return row


# Two nodes. t0 spans both; t1 (node a) and t2 (node b) wait for it.
SCHEDULE = [
    task(0, "ab", 0.0, 1.0, 3.0, 3.5),
    task(1, "a", 0.0, 4.0, 5.0, 5.2),
    task(2, "b", 0.0, 3.5, 4.5, 4.6),
]


# ---- per task ----------------------------------------------------------------------------------------------

def test_ready_is_when_the_tasks_nodes_were_freed():
    assert metrics.ready_times(SCHEDULE) == [0.0, 3.0, 3.0]


def test_overhead_excludes_waiting_for_nodes_and_the_run_itself():
    rows = {r["task"]: r for r in metrics.task_figures(SCHEDULE)}
    assert rows["t0"]["overhead"] == pytest.approx(1.0 + 0.5)
    assert rows["t1"]["overhead"] == pytest.approx(1.0 + 0.2)
    assert rows["t1"]["wait"] == pytest.approx(3.0)
    assert rows["t2"]["overhead"] == pytest.approx(0.5 + 0.1)
    assert rows["t2"]["run"] == pytest.approx(1.0)


def test_ready_uses_the_last_task_that_ended_on_any_of_its_nodes():
    tasks = [task(0, "a", 0, 1, 2, 2.1), task(1, "b", 0, 1, 6, 6.1), task(2, "ab", 0, 7, 8, 8.5)]
    assert metrics.ready_times(tasks)[2] == 6


def test_components_add_up_to_the_overhead():
    t = task(0, "ab", 10.0, 12.0, 15.0, 16.0, admitted=10.2, launched=10.5, rank_started=11.0, done=15.3)
    row = metrics.task_figures([t])[0]
    c = {k: row[k] for k in metrics.COMPONENTS}
    assert c == pytest.approx({"admit": 0.2, "dispatch": 0.3, "spawn": 0.5, "wireup": 1.0, "teardown": 0.3,
                               "result": 0.7})
    assert sum(c.values()) == pytest.approx(row["overhead"])


def test_an_unknown_stamp_merges_its_neighbours():
    t = task(0, "a", 10.0, 12.0, 15.0, 16.0, rank_started=11.0)   # no admitted, launched, done
    row = metrics.task_figures([t])[0]
    assert row["admit"] is None and row["dispatch"] is None and row["teardown"] is None
    assert row["spawn"] == pytest.approx(1.0) and row["wireup"] == pytest.approx(1.0)
    assert row["result"] == pytest.approx(1.0)


def test_admitted_before_ready_costs_nothing():
    # handed to an executor that queued it until its nodes were free
    tasks = [task(0, "a", 0.0, 1.0, 5.0, 5.5, admitted=0.0, launched=0.5),
             task(1, "a", 0.0, 6.0, 7.0, 7.5, admitted=0.0, launched=5.8)]
    row = metrics.task_figures(tasks)[1]
    assert row["admit"] == 0 and row["dispatch"] == pytest.approx(0.8)


def test_a_stamp_out_of_order_in_one_task_is_dropped_for_the_whole_run():
    # t1's launcher stamp comes after its first rank started (a per-rank launcher reporting rank 0 only)
    tasks = [task(0, "a", 0.0, 1.0, 2.0, 2.5, launched=0.2, rank_started=0.6),
             task(1, "b", 0.0, 1.0, 2.0, 2.5, launched=0.9, rank_started=0.6)]
    rows = metrics.task_figures(tasks)
    assert [r["dispatch"] for r in rows] == [None, None]
    assert [r["spawn"] for r in rows] == pytest.approx([0.6, 0.6])
    s = metrics.summarize(tasks, nodes=2)
    assert s["components_mean"]["dispatch"] is None
    assert sum(v for v in s["components_mean"].values() if v is not None) == pytest.approx(s["overhead_mean"])


def test_complete_and_timing_problems():
    assert metrics.complete(SCHEDULE[0])
    missing = task(0, "a", 0.0, None, 1.0, 2.0)
    assert not metrics.complete(missing) and metrics.timing_problems(missing) == ["no started"]
    backwards = task(0, "a", 0.0, 2.0, 1.0, 3.0)
    assert not metrics.complete(backwards)
    assert any("started" in p and "after ended" in p for p in metrics.timing_problems(backwards))
    assert not metrics.complete(task(0, "a", 0.0, 1.0, 2.0, 3.0, ok=False))


# ---- statistics and bounds ---------------------------------------------------------------------------------

def test_percentile_interpolates_between_ranks():
    assert metrics.percentile([4, 1, 3, 2], 50) == 2.5
    assert metrics.percentile([1, 2, 3, 4], 95) == pytest.approx(3.85)
    assert metrics.percentile([], 50) is None
    with pytest.raises(ValueError):
        metrics.percentile([1], 101)


def test_slope_of_a_line_and_of_too_few_points():
    xs = list(range(10))
    assert metrics.slope(xs, [2 * x + 1 for x in xs]) == pytest.approx(2)
    assert metrics.slope([0, 1], [0, 1]) is None
    assert metrics.slope([1, 1, 1], [0, 1, 2]) is None


def test_slope_stderr_is_zero_on_a_line_and_grows_with_noise():
    xs = list(range(20))
    assert metrics.slope_stderr(xs, [0.5 * x for x in xs]) == pytest.approx(0)
    noisy = [0.5 * x + (1 if x % 2 else -1) for x in xs]
    loud = [0.5 * x + (3 if x % 2 else -3) for x in xs]
    assert 0 < metrics.slope_stderr(xs, noisy) < metrics.slope_stderr(xs, loud)
    assert metrics.slope_stderr([0, 1], [0, 1]) is None


def test_lower_bound_is_area_or_longest_task():
    assert metrics.lower_bound([4, 1, 1], [1, 3, 3], 4) == pytest.approx(3)       # longest task
    assert metrics.lower_bound([4, 4, 2], [1, 1, 2], 4) == pytest.approx(3)       # area (4+4+4)/4
    with pytest.raises(ValueError):
        metrics.lower_bound([1], [1], 0)


@pytest.mark.parametrize("policy", ["largest-first", "in-order"])
def test_packing_fills_gaps_with_later_tasks(policy):
    # 3 runs with 1 beside it, then the two 2-node tasks together
    assert metrics.packed_makespan([3, 2, 1, 2], [1, 1, 1, 1], 4, policy) == pytest.approx(2)
    # nothing fits beside a 4-node task
    assert metrics.packed_makespan([4, 1, 4], [2, 1, 2], 4, policy) == pytest.approx(5)
    with pytest.raises(ValueError):
        metrics.packed_makespan([5], [1], 4, policy)


def test_largest_first_packs_what_submission_order_cannot():
    # In order, the two 1-node tasks start together and each 3-node task then runs alone: 3 rounds.
    # Largest first pairs each 3 with a 1: 2 rounds, the lower bound.
    assert metrics.packed_makespan([1, 1, 3, 3], [1] * 4, 4, "in-order") == pytest.approx(3)
    assert metrics.packed_makespan([1, 1, 3, 3], [1] * 4, 4) == pytest.approx(2)


def test_summary_of_a_run():
    s = metrics.summarize(SCHEDULE + [task(3, "a", 0.0, None, None, 9.0, ok=False)], nodes=2, t_start=-10.0,
                          t_first_result=3.5)
    assert (s["tasks"], s["ok"], s["failed"]) == (4, 3, 1)
    assert s["startup"] == pytest.approx(13.5)
    assert s["makespan"] == pytest.approx(5.2)                   # failed task's return does not count
    assert s["lower_bound"] == pytest.approx(3.0)                # (2*2 + 1 + 1) / 2
    assert s["makespan_ratio"] == pytest.approx(5.2 / 3.0)
    assert s["utilization"] == pytest.approx(6 / (2 * 5.2))
    assert s["throughput"] == pytest.approx(3 / 5.2)
    assert s["overhead_median"] == pytest.approx(1.2)
    assert s["overhead_slope"] == pytest.approx(-0.45)


def test_overhead_growth_is_the_fitted_rise_over_the_median():
    tasks = [task(i, "a", 10.0 * i, 10.0 * i + 1, 10.0 * i + 2, 10.0 * i + 2 + 0.5 + 0.01 * i) for i in range(101)]
    s = metrics.summarize(tasks, nodes=1)
    assert s["overhead_slope"] == pytest.approx(0.01)
    assert s["overhead_growth"] == pytest.approx(0.01 * 100 / s["overhead_median"])


# ---- workloads ---------------------------------------------------------------------------------------------

def test_uniform_and_mixed_specs():
    assert {(s.nodes, s.ranks_per_node) for s in Workload("u", "uniform", 5, 2, 2).specs()} == {(2, 2)}
    sizes = [s.nodes for s in Workload("m", "mixed", 12, 4, seed=3).specs()]
    assert sorted(sizes) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    assert sizes == [s.nodes for s in Workload("m", "mixed", 12, 4, seed=3).specs()]
    assert any([s.nodes for s in Workload("m", "mixed", 12, 4, seed=s).specs()] != sizes for s in range(4, 8))


@pytest.mark.parametrize("kwargs, words", [
    ({"kind": "spread"}, "kind 'spread'"),
    ({"tasks": 0}, "tasks=0"),
    ({"nodes": 1.5}, "nodes=1.5"),
    ({"work": "nap"}, "work 'nap'"),
    ({"seconds": -1}, "-1"),
    ({"name": "Bad Name"}, "'Bad Name'"),
])
def test_bad_workloads_are_refused(kwargs, words):
    args = {"name": "w", "kind": "uniform", "tasks": 2, "nodes": 2, **kwargs}
    with pytest.raises(WorkloadError) as err:
        Workload(**args)
    assert words in str(err.value)
    assert isinstance(err.value, ValueError)


def test_workload_fits_the_nodes():
    Workload("w", "mixed", 4, 4, 2).check_fits(4, 2)
    with pytest.raises(WorkloadError, match="--cluster-nodes 5"):
        Workload("w", "uniform", 4, 5).check_fits(4, 2)
    with pytest.raises(WorkloadError, match="--ranks-per-node 2 or less"):
        Workload("w", "uniform", 4, 1, 3).check_fits(4, 2)


def test_workload_files(tmp_path):
    y = tmp_path / "w.yaml"
    y.write_text("workloads:\n - {kind: uniform, tasks: 3, nodes: 2, busy: 0.5}\n"
                 " - {name: big, kind: mixed, tasks: 8, nodes: 4, sleep: 2, seed: 7}\n")
    a, b = load_file(y)
    assert (a.name, a.work, a.seconds, a.ranks_per_node) == ("uniform", "busy", 0.5, 1)
    assert (b.name, b.kind, b.seed, b.seconds) == ("big", "mixed", 7, 2)
    j = tmp_path / "w.json"
    j.write_text(json.dumps({"kind": "uniform", "tasks": 2, "nodes": 1}))
    assert load_file(j)[0].tasks == 2
    j.write_text(json.dumps({"kind": "uniform", "tasks": 2, "nodes": 1, "ranks": 4}))
    with pytest.raises(WorkloadError, match=r"unknown key\(s\) \['ranks'\]"):
        load_file(j)
    j.write_text(json.dumps({"kind": "uniform", "tasks": 2, "nodes": 1, "sleep": 1, "busy": 1}))
    with pytest.raises(WorkloadError, match="not both"):
        load_file(j)
    j.write_text("{not json")
    with pytest.raises(WorkloadError, match="not valid JSON"):
        load_file(j)


def test_resolve_flags_presets_and_quick(tmp_path):
    (wl,) = resolve([], nodes=4)
    assert (wl.kind, wl.tasks, wl.nodes, wl.seconds) == ("uniform", 20, 2, 1.0)
    (wl,) = resolve([], nodes=4, quick=True)
    assert wl.tasks <= 4 and wl.seconds <= 0.2
    (m,) = resolve(["mixed"], nodes=3, tasks=6, busy=0.3, seed=2)
    assert (m.nodes, m.work, m.seconds, m.seed) == (3, "busy", 0.3, 2)
    assert [w.name for w in resolve(["full"], nodes=4)] == [w.name for w in preset("full", 4)]
    assert max(w.tasks for w in preset("full", 4)) >= 200
    with pytest.raises(WorkloadError, match="--tasks set the sizes"):
        resolve(["full"], nodes=4, tasks=3)
    with pytest.raises(WorkloadError, match="exclude each other"):
        resolve(["uniform"], nodes=4, sleep=1, busy=1)
    with pytest.raises(WorkloadError, match="neither"):
        resolve([str(tmp_path / "missing.yaml")], nodes=4)
    names = [w.name for w in resolve(["uniform", "uniform"], nodes=4)]
    assert len(set(names)) == 2


def test_paths_selection():
    assert parse_names(None) == parse_names("all")
    assert parse_names("flux,bare-srun,htex") == ["bare-srun", "htex", "flux"]
    with pytest.raises(BenchError, match="'nope' not known|nope not known"):
        parse_names("htex,nope")
    # The rows inside an image come with an image only.
    assert not any(n.endswith("+ctr") for n in parse_names("all"))
    assert parse_names("all", container=True) == [*parse_names("all")[:3], "htex+ctr", *parse_names("all")[3:9],
                                                  "flux-jobs+ctr", "flux"]
    with pytest.raises(BenchError, match="give --container RUNTIME:IMAGE"):
        parse_names("htex+wrap,htex+ctr")
    assert parse_names("htex+ctr,htex+wrap", container=True) == ["htex+wrap", "htex+ctr"]
    assert not_applicable_reason("static", Workload("m", "mixed", 4, 2)) == \
        "not applicable: mixed sizes (static blocks run one task size)"
    assert not_applicable_reason("static", Workload("u", "uniform", 4, 2)) is None
    assert not_applicable_reason("flux", Workload("m", "mixed", 4, 2)) is None


# ---- targets, report, plots --------------------------------------------------------------------------------

def _run(name, kind, overhead, *, baseline=None, status="ok", reason="", n=4, nodes=2):
    tasks, t = [], overhead          # one after the other on the same nodes, `overhead` apart
    for i in range(n):
        tasks.append(task(i, ["a", "b"][:nodes], 0.0, t, t + 1, t + 1))
        t += 1 + overhead
    run = {"name": name, "kind": kind, "status": status, "reason": reason, "baseline": baseline, "workdir": None,
           "t_start": -5.0, "t_ready": -4.0, "t_first_result": tasks[0]["returned"], "t_end": 100.0,
           "tasks": tasks if status in ("ok", "failed") else [], "placement_ok": True if status == "ok" else None,
           "placement_report": "", "summary": {}}
    if run["tasks"]:
        run["summary"] = metrics.summarize(run["tasks"], 2, run["t_start"], run["t_first_result"])
    return run


def _bench(tasks=4, sizes=(2, 2, 2, 2)):
    runs = [_run("bare-srun", "baseline", 0.5, n=tasks), _run("htex", "path", 0.6, baseline="bare-srun", n=tasks),
            _run("static", "path", 0, baseline="bare-srun", status="not applicable",
                 reason="not applicable: mixed sizes (static blocks run one task size)"),
            _run("bare-flux", "baseline", 0, status="unavailable", reason="flux-core is not installed"),
            _run("flux", "path", 0, baseline="bare-flux", status="unavailable", reason="flux-core is not installed")]
    for r in runs:
        base = next((b for b in runs if b["name"] == r["baseline"]), None)
        if r["summary"] and base and base["summary"]:
            r["summary"]["overhead_vs_baseline"] = metrics.ratio(r["summary"]["overhead_median"],
                                                                 base["summary"]["overhead_median"])
    wl = {"name": "w", "kind": "mixed", "tasks": tasks, "sizes": list(sizes)}
    doc = {"command": "fluxmpi bench --quick", "time": "now", "host": "h", "cpus": 2,
           "versions": {"fluxmpi": "0", "parsl": "0", "flux-core": None, "python": "3"},
           "site": {"name": "local:x", "partition": "debug", "nodes": 2, "cores_per_node": 2},
           "workloads": [{"workload": wl, "description": "w: test", "runs": runs}]}
    doc["targets"] = targets.evaluate(doc)
    return doc


def test_targets():
    doc = _bench(tasks=200, sizes=(1, 2))
    by = {(t["target"], t["path"]): t for t in doc["targets"]}
    htex = by[("overhead", "htex")]
    assert htex["value"] == pytest.approx(0.6 / 0.5) and htex["met"] is True
    assert by[("overhead", "flux")]["met"] is None and "flux-core is not installed" in by[("overhead", "flux")]["note"]
    assert by[("makespan", "htex")]["value"] == pytest.approx(doc["workloads"][0]["runs"][1]["summary"]
                                                              ["makespan_ratio"])
    assert by[("makespan", "htex")]["met"] is False          # sequential tasks on 2 nodes: twice the bound
    assert by[("growth", "htex")]["met"] is True             # constant overhead
    assert ("growth", "static") not in by                    # did not run
    assert not any(t["target"] == "makespan" for t in _bench(sizes=(2, 2))["targets"])
    # flux-jobs against htex on mixed sizes: not selected here, and said so.
    assert by[("packing", "flux-jobs")]["met"] is None and by[("packing", "flux-jobs")]["note"] == "not selected"
    entry = doc["workloads"][0]
    for overhead, met in ((0.6, True), (0.9, False)):     # the same packing with less / more overhead than htex
        entry["runs"].append(_run("flux-jobs", "path", overhead, baseline="bare-flux", n=200))
        (t,) = [t for t in targets.evaluate(doc) if t["target"] == "packing"]
        htex_ratio = entry["runs"][1]["summary"]["makespan_ratio"]
        assert t["value"] == pytest.approx(entry["runs"][-1]["summary"]["makespan_ratio"] / htex_ratio)
        assert t["met"] is met and t["limit"] == 1.0
        entry["runs"].pop()


def test_markdown_keeps_every_path_with_its_reason():
    text = report.render_markdown(_bench())
    assert "| static | not applicable: mixed sizes (static blocks run one task size) |" in text
    assert "| flux | unavailable: flux-core is not installed |" in text
    assert "| htex | ok | 4/4 |" in text and "1.20x (bare-srun)" in text
    assert "fluxmpi bench --quick" in text and "## Targets" in text


def test_json_is_written_whole(tmp_path):
    doc = _bench()
    report.write_json(doc, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(doc))
    assert not list(tmp_path.glob("*.tmp"))


def test_plots_are_png_files(tmp_path):
    written = plots.write_all(_bench(), tmp_path)
    assert sorted(p.name for p in written) == ["overhead-w.png", "startup-w.png", "timeline-w.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_cli_refuses_bad_input_before_any_cluster():
    runner = CliRunner()
    for args, words in ((["--paths", "htex,bogus"], "bogus not known"),
                        (["--workload", "uniform", "--nodes", "9"], "--cluster-nodes 9"),
                        (["--workload", "full", "--sleep", "1"], "--sleep set the sizes"),
                        (["--cluster-nodes", "0"], "--cluster-nodes 0"),
                        (["--paths", "htex+ctr"], "give --container RUNTIME:IMAGE"),
                        (["--container", "docker:ubuntu"], "runtime 'docker' is not known"),
                        (["--container", "charliecloud:/nonexistent/img"], "/nonexistent/img does not exist"),
                        (["--rounds", "0"], "--rounds 0 must be at least 1"),
                        (["--rounds", "3", "--workload", "scale"], "--rounds goes with the uniform and mixed")):
        result = runner.invoke(bench, args)
        assert result.exit_code == 2, result.output
        assert result.output.startswith("fluxmpi: error: ") and words in result.output


def test_the_mpirun_baseline_gives_mpirun_the_whole_allocation():
    # Inside its one-task step the driver would otherwise show mpirun one node with one slot.
    from fluxmpi.bench.mpirun_driver import allocation_env
    env = allocation_env(["n1", "n2", "n3"], 2)
    assert env["SLURM_NODELIST"] == "n1,n2,n3" and env["SLURM_NNODES"] == "3"
    assert env["SLURM_TASKS_PER_NODE"] == "2(x3)" and env["SLURM_NTASKS"] == "6"
    assert env["SLURM_OVERLAP"] == "1"


def test_the_wrapper_cost_is_the_user_app_rows_launch_time_beyond_its_paths():
    """A +wrap row runs the same workload through the same path with the rank wrapper in front of every rank:
    the difference of their median launch-to-done times is what the wrapper costs a task."""
    from fluxmpi.bench import report
    from fluxmpi.bench.driver import _compare_with_baselines

    def run(name, launch_to_done, baseline=None):
        return {"name": name, "baseline": baseline, "status": "ok", "reason": None,
                "summary": {"overhead_median": 0.4, "launch_to_done_median": launch_to_done}}
    entry = {"runs": [run("bare-srun", 1.40), run("htex", 1.475, "bare-srun"), run("htex+wrap", 1.4775, "bare-srun")]}
    _compare_with_baselines(entry)
    runs = {r["name"]: r["summary"] for r in entry["runs"]}
    assert runs["htex+wrap"]["wrapper_cost"] == pytest.approx(0.0025)
    assert "wrapper_cost" not in runs["htex"]
    text = "\n".join(report.render_wrapper_cost(entry))
    assert "| htex+wrap | 1.475 | 1.478 | 2.5 ms |" in text, text
    assert report.render_wrapper_cost({"runs": [run("htex", 1.4)]}) == []


def test_the_image_cost_is_the_ranks_run_beyond_the_same_command_on_the_host():
    """A +ctr row runs the +wrap row's command inside an image; the rank wrapper stays on the host and times the
    runtime with the program, so the image's cost is the difference of the median runs, and it is counted into
    the overhead the target compares (within 1.1x of the +wrap row's)."""
    from fluxmpi.bench import report, targets
    from fluxmpi.bench.driver import _compare_with_baselines

    def run(name, run_median, overhead, baseline="bare-srun"):
        return {"name": name, "kind": "path", "baseline": baseline, "status": "ok", "reason": "",
                "summary": {"overhead_median": overhead, "run_median": run_median, "launch_to_done_median": None}}
    entry = {"workload": {"name": "uniform", "tasks": 4, "sizes": [2] * 4},
             "runs": [run("htex+wrap", 1.20, 0.40), run("htex+ctr", 1.23, 0.41),
                      run("flux-jobs+wrap", 1.10, 0.20, "bare-flux"), run("flux-jobs+ctr", 1.19, 0.21, "bare-flux")]}
    _compare_with_baselines(entry)
    runs = {r["name"]: r["summary"] for r in entry["runs"]}
    assert runs["htex+ctr"]["container_cost"] == pytest.approx(0.03)
    assert runs["htex+ctr"]["overhead_with_image"] == pytest.approx(0.44)
    assert runs["htex+ctr"]["container_overhead_ratio"] == pytest.approx(1.10)
    assert runs["flux-jobs+ctr"]["container_overhead_ratio"] == pytest.approx(0.30 / 0.20)
    assert "container_cost" not in runs["htex+wrap"]
    text = "\n".join(report.render_container_cost(entry))
    assert "| htex+ctr | 1.200 | 1.230 | 30.0 ms | 0.400 | 0.440 | 1.10x |" in text, text
    met = {t["path"]: t["met"] for t in targets.evaluate({"workloads": [entry]}) if t["target"] == "container"}
    assert met == {"htex+ctr": True, "flux-jobs+ctr": False}
    # Without its +wrap row there is nothing to set the image against, and the target says why.
    alone = {"workload": entry["workload"], "runs": [run("htex+ctr", 1.23, 0.41)]}
    _compare_with_baselines(alone)
    assert "container_cost" not in alone["runs"][0]["summary"]
    (t,) = [t for t in targets.evaluate({"workloads": [alone]}) if t["target"] == "container"]
    assert t["met"] is None and "+wrap row was not selected" in t["note"]


def test_the_start_up_splits_at_the_stamps_a_run_has():
    stamps = {"granted": 3.0, "ready": 5.5, "compiled": 7.0, "first_launch": 7.25}
    parts = metrics.startup_parts(1.0, stamps, 9.0)
    assert parts == pytest.approx({"allocation": 2.0, "pool": 2.5, "compile": 1.5, "dispatch": 0.25,
                                   "first_task": 1.75})
    assert sum(parts.values()) == pytest.approx(8.0)     # the parts add up to the start-up
    # No compile task (a +wrap row): its part is None and the next one holds the time.
    parts = metrics.startup_parts(1.0, {**stamps, "ready": None, "compiled": None}, 9.0)
    assert parts["pool"] is None and parts["compile"] is None and parts["dispatch"] == pytest.approx(4.25)
    # Slurm's StartTime is whole seconds: one before the run's start counts as the start.
    assert metrics.startup_parts(1.4, {"granted": 1.0}, 3.0)["allocation"] == 0.0
    assert metrics.startup_parts(None, stamps, 9.0) == {p: None for p in metrics.STARTUP_PARTS}


def test_the_start_up_table_and_target_set_each_path_against_its_baseline():
    doc = _bench()
    entry = doc["workloads"][0]
    base, htex = entry["runs"][0], entry["runs"][1]
    base["summary"].update(startup=2.0, startup_parts={"allocation": 1.0, "pool": 0.0, "compile": 0.5,
                                                      "dispatch": 0.1, "first_task": 0.4})
    htex["summary"].update(startup=5.0, startup_vs_baseline=2.5,
                           startup_parts={"allocation": 1.0, "pool": 2.0, "compile": 1.0, "dispatch": 0.5,
                                          "first_task": 0.5})
    text = "\n".join(report.render_startup(entry))
    assert "| bare-srun | 1.0 | 0.0 | 0.5 | 0.1 | 0.4 | 2.0 | - |" in text, text
    assert "| htex | 1.0 | 2.0 | 1.0 | 0.5 | 0.5 | 5.0 | 2.50x (bare-srun) |" in text, text
    (t,) = [t for t in targets.evaluate(doc) if t["target"] == "startup" and t["path"] == "htex"]
    assert t["value"] == 2.5 and t["met"] is False and t["limit"] == 1.5
    htex["warm"] = {"nodes": 2}           # a warm run counts from its hold: no start-up target
    assert not [t for t in targets.evaluate(doc) if t["target"] == "startup" and t["path"] == "htex"]


def test_start_up_over_rounds_is_the_median_of_each_part_and_its_ratio_the_medians():
    """--rounds 3: a path's start-up target is judged on the median of its rounds against its baseline's
    median, not on one round (start-up swings by seconds on a shared machine)."""
    def one(startup, pool):
        return {"startup": startup, "startup_parts": {"allocation": 1.0, "pool": pool, "compile": 0.4,
                                                      "dispatch": 0.0, "first_task": startup - 1.4 - pool}}
    rounds = {"bare-flux": [one(6.0, 3.8), one(6.4, 4.0), one(5.0, 3.0)],
              "flux-jobs": [one(9.9, 7.0), one(6.6, 4.5), one(6.9, 4.6)],
              "flux": [{"startup": None, "startup_parts": None}, one(8.0, 5.0)]}
    med = metrics.startup_medians(rounds, {"flux-jobs": "bare-flux", "flux": "bare-flux"})
    assert med["bare-flux"]["startup"] == 6.0 and med["bare-flux"]["parts"]["pool"] == 3.8
    assert (med["flux-jobs"]["startup"], med["flux-jobs"]["min"], med["flux-jobs"]["max"]) == (6.9, 6.6, 9.9)
    assert med["flux-jobs"]["vs_baseline"] == pytest.approx(6.9 / 6.0)
    assert med["flux"]["rounds"] == 1 and med["flux"]["vs_baseline"] == pytest.approx(8.0 / 6.0)
    assert med["bare-flux"]["vs_baseline"] is None
    entry = {"workload": {"name": "w", "tasks": 4, "sizes": [1]}, "description": "w", "startup_median": med,
             "runs": [{"name": "bare-flux", "kind": "baseline", "status": "ok", "baseline": None,
                       "summary": {"startup": 6.0}},
                      {"name": "flux-jobs", "kind": "path", "status": "ok", "baseline": "bare-flux",
                       "summary": {"startup": 9.9, "startup_vs_baseline": 9.9 / 6.0}}]}
    (t,) = [t for t in targets.evaluate({"workloads": [entry]}) if t["target"] == "startup"]
    assert t["met"] is True and t["value"] == pytest.approx(1.15) and t["rounds"] == 3   # round 1 alone: 1.65x
    table = "\n".join(report.render_startup_medians(entry))
    assert "| flux-jobs | 3 | 1.0 | 4.6 |" in table and "| 6.9 | 6.6-9.9 | 1.15x (bare-flux) |" in table
    assert "(median of 3 rounds)" in "\n".join(report.render_targets([t]))
