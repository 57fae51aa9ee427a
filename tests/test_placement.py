"""fluxmpi.placement on records built here, shaped like the MPI apps' output."""
import json
from types import SimpleNamespace

import pytest

from fluxmpi.placement import (
    PlacementInputError,
    Records,
    check_no_shared_cores,
    check_run,
    check_task,
    compress_hosts,
    group_by_task,
    parse_dir,
    parse_lines,
    read_records,
    render_table,
)

T0 = 1795290000.0
LIB = "Open MPI v4.1.4, package: Debian OpenMPI, ident: 4.1.4, repo rev: v4.1.4, May 26, 2022"


def record(task, rank, size, host, cpus, t_init, t_end, pid=None):
    """One rank's record as mpi_hello prints it."""
    return {
        "app": "c",
        "task": task,
        "host": host,
        "rank": rank,
        "size": size,
        "pid": pid if pid is not None else 1000 + rank,
        "cpus": sorted(cpus),
        "gpus": {},
        "mpi_library": LIB,
        "t_start": t_init - 0.3,
        "t_init": t_init,
        "t_end": t_end,
        "work": {"kind": "sleep", "seconds": t_end - t_init - 0.01},
    }


def task_records(task, layout, t_init, t_end):
    """layout: one (host, cpus) per rank, in rank order."""
    size = len(layout)
    return [record(task, rank, size, host, cpus, t_init + 0.001 * rank, t_end - 0.001 * rank)
            for rank, (host, cpus) in enumerate(layout)]


def lines(records):
    return [json.dumps(r) + "\n" for r in records]


def placement_of(records):
    parsed = parse_lines(lines(records))
    assert parsed.problems == []
    placements = parsed.placements()
    assert len(placements) == 1
    return next(iter(placements.values()))


# A correct 2 nodes x 2 ranks task: one core per rank.
GOOD_2x2 = [("node1", {0}), ("node1", {1}), ("node2", {0}), ("node2", {1})]


def test_correct_placement_passes_and_is_described():
    p = placement_of(task_records("t1", GOOD_2x2, T0 + 1, T0 + 2))
    assert p.task == "t1"
    assert p.nodes == ("node1", "node2")
    assert p.ranks_per_node == {"node1": 2, "node2": 2}
    assert [r.rank for r in p.records] == [0, 1, 2, 3]
    assert p.start == pytest.approx(T0 + 1)  # earliest t_init
    assert p.end == pytest.approx(T0 + 2)  # latest t_end
    assert p.elapsed == pytest.approx(1.0)
    assert check_task(p, nodes=2, ranks_per_node=2) == []


def test_the_same_task_fails_a_different_expectation():
    p = placement_of(task_records("t1", GOOD_2x2, T0 + 1, T0 + 2))
    problems = check_task(p, nodes=1, ranks_per_node=4)
    text = "\n".join(map(str, problems))
    assert "spanned 2 nodes (node1, node2), expected 1" in text
    assert {pr.host for pr in problems if "per node" in pr.message} == {"node1", "node2"}


def test_missing_rank_is_reported():
    recs = task_records("t1", GOOD_2x2, T0 + 1, T0 + 2)
    del recs[3]
    problems = check_task(placement_of(recs), nodes=2, ranks_per_node=2)
    missing = [p for p in problems if p.message == "no record for this rank"]
    assert [(p.task, p.rank) for p in missing] == [("t1", 3)]
    # node2 now has one rank only
    assert any(p.host == "node2" and "1 rank (2) on this node, expected 2" in p.message for p in problems)


def test_duplicated_rank_is_reported():
    recs = task_records("t1", GOOD_2x2, T0 + 1, T0 + 2)
    recs[1] = dict(recs[0], pid=4242)  # rank 0 twice, rank 1 never
    problems = check_task(placement_of(recs), nodes=2, ranks_per_node=2)
    dup = [p for p in problems if "reported 2 times" in p.message]
    assert len(dup) == 1 and dup[0].rank == 0
    assert "node1 pid 1000" in dup[0].message and "node1 pid 4242" in dup[0].message
    assert any(p.rank == 1 and p.message == "no record for this rank" for p in problems)


def test_rank_on_a_wrong_node_is_reported():
    layout = GOOD_2x2[:3] + [("node3", {1})]
    problems = check_task(placement_of(task_records("t1", layout, T0, T0 + 1)), nodes=2, ranks_per_node=2)
    text = [str(p) for p in problems]
    assert "task t1: spanned 3 nodes (node1, node2, node3), expected 2" in text
    assert {p.host for p in problems if p.host} == {"node2", "node3"}


def test_wrong_ranks_per_node_on_the_right_nodes_is_reported():
    layout = [("node1", {0}), ("node1", {1}), ("node1", {2}), ("node2", {0})]
    problems = check_task(placement_of(task_records("t1", layout, T0, T0 + 1)), nodes=2, ranks_per_node=2)
    assert [(p.host, p.message) for p in problems] == [
        ("node1", "3 ranks (0-2) on this node, expected 2 per node"),
        ("node2", "1 rank (3) on this node, expected 2 per node"),
    ]


def test_disagreeing_sizes_and_out_of_range_rank_are_reported():
    recs = task_records("t1", GOOD_2x2, T0, T0 + 1)
    recs[3]["size"] = 5
    recs[3]["rank"] = 4
    problems = check_task(placement_of(recs), nodes=2, ranks_per_node=2)
    text = "\n".join(map(str, problems))
    assert "ranks disagree on the MPI size: size 4 from ranks 0-2; size 5 from ranks 4" in text
    assert "MPI size 5, expected 4 (2 nodes x 2 ranks per node)" in text
    assert any(p.rank == 3 and "no record" in p.message for p in problems)


def test_check_task_rejects_a_bad_expectation():
    p = placement_of(task_records("t1", GOOD_2x2, T0, T0 + 1))
    with pytest.raises(PlacementInputError, match="ranks_per_node must be an integer >= 1, got 0"):
        check_task(p, nodes=2, ranks_per_node=0)


# ---- shared cores -----------------------------------------------------------


def two_tasks(second_start, second_cpus_on_node1, second_host="node1"):
    a = task_records("a", [("node1", {0}), ("node1", {1})], T0, T0 + 1)
    b = task_records("b", [(second_host, second_cpus_on_node1), ("node2", {0})],
                     second_start, second_start + 1)
    return group_by_task(parse_lines(lines(a + b)).records)


def test_concurrent_tasks_on_one_core_are_reported():
    problems = check_no_shared_cores(two_tasks(T0 + 0.5, {1, 2}))
    assert len(problems) == 1
    p = problems[0]
    assert (p.task, p.other_task, p.host) == ("a", "b", "node1")
    assert "shared cpus 1" in p.message
    assert "ranks 1 of a, ranks 0 of b" in p.message


def test_the_same_tasks_one_after_the_other_pass():
    assert check_no_shared_cores(two_tasks(T0 + 1.5, {1, 2})) == []


def test_concurrent_tasks_on_disjoint_cores_or_other_hosts_pass():
    assert check_no_shared_cores(two_tasks(T0 + 0.5, {2, 3})) == []
    assert check_no_shared_cores(two_tasks(T0 + 0.5, {0, 1}, second_host="node3")) == []


def test_sweep_finds_overlaps_beyond_the_neighbour():
    # "long" overlaps every short task; the short ones follow each other.
    recs = task_records("long", [("n1", {0})], T0, T0 + 10)
    for i in range(5):
        recs += task_records(f"s{i}", [("n1", {0})], T0 + 2 * i + 0.5, T0 + 2 * i + 1.5)
    problems = check_no_shared_cores(parse_lines(lines(recs)).placements())
    assert sorted((p.task, p.other_task) for p in problems) == [("long", f"s{i}") for i in range(5)]


def test_tasks_without_times_count_as_concurrent():
    a = [{k: v for k, v in r.items() if k in ("app", "task", "host", "rank", "size", "pid", "cpus")}
         for r in task_records("a", [("node1", {0})], T0, T0 + 1)]
    b = task_records("b", [("node1", {0})], T0 + 50, T0 + 51)
    problems = check_no_shared_cores(parse_lines(lines(a + b)).placements())
    assert len(problems) == 1 and "task a has no times: assumed concurrent" in problems[0].message


# ---- reading records --------------------------------------------------------


def test_bad_lines_are_reported_with_file_and_line(tmp_path):
    good = task_records("t1", GOOD_2x2, T0, T0 + 1)
    missing_key = {k: v for k, v in good[3].items() if k != "cpus"}
    path = tmp_path / "out.txt"
    path.write_text(lines(good[:3])[0] + '{"app": "c", "task": \n' + "\n" + json.dumps(missing_key) + "\n"
                    + "".join(lines(good[1:3])))
    parsed = read_records(path)
    assert len(parsed.records) == 3
    assert [p.where for p in parsed.problems] == [f"{path}:2", f"{path}:4"]
    assert "not JSON" in parsed.problems[0].message
    assert "record lacks cpus" in parsed.problems[1].message
    assert str(parsed.problems[0]).startswith(f"{path}:2: not JSON")

    report = check_run(parsed, {"t1": SimpleNamespace(nodes=2, ranks_per_node=2)})
    assert not report.ok
    assert f"{path}:2: not JSON" in str(report)
    assert any(p.rank == 3 and p.message == "no record for this rank" for p in report.problems)


@pytest.mark.parametrize("bad, reason", [
    ({"rank": -1}, "rank must be an integer >= 0"),
    ({"rank": True}, "rank must be an integer >= 0"),
    ({"cpus": [0, "1"]}, "cpus must be a list of CPU ids"),
    ({"host": ""}, "host must be a non-empty string"),
    ({"t_end": "late"}, "t_end must be epoch seconds"),
])
def test_invalid_fields_are_reported(bad, reason):
    rec = dict(record("t1", 0, 1, "n1", {0}, T0, T0 + 1), **bad)
    parsed = parse_lines([json.dumps(rec)], source="stdout")
    assert parsed.records == []
    assert parsed.problems[0].where == "stdout:1" and reason in parsed.problems[0].message


def test_launcher_chatter_can_be_ignored():
    text = ["--------------------------------------------------------------------------\n",
            "WARNING: There was an error initializing an OpenFabrics device.\n"] + lines(
        task_records("t1", [("n1", {0})], T0, T0 + 1))
    assert len(parse_lines(text).problems) == 2
    quiet = parse_lines(text, ignore_non_json=True)
    assert quiet.problems == [] and len(quiet.records) == 1


def test_a_directory_of_record_files_is_read(tmp_path):
    for r in task_records("t1", GOOD_2x2, T0, T0 + 1):
        (tmp_path / f"t1.{r['rank']}.json").write_text(json.dumps(r) + "\n")
    (tmp_path / ".t1.0.json.tmp.99").write_text('{"half')  # an app's unfinished temporary
    (tmp_path / "notes.txt").write_text("not a record")
    parsed = parse_dir(tmp_path)
    assert parsed.problems == [] and len(parsed.records) == 4
    assert read_records(tmp_path).records == parsed.records
    with pytest.raises(PlacementInputError, match="no records at"):
        read_records(tmp_path / "absent")


# ---- whole run and rendering -------------------------------------------------


def run_records():
    return (task_records("t1", GOOD_2x2, T0 + 0.2, T0 + 1.2)
            + task_records("t2", [("node3", {0}), ("node4", {0})], T0 + 0.7, T0 + 1.0)
            + task_records("t10", [("node1", {0, 1})], T0 + 2.0, T0 + 2.5))


def test_check_run_accepts_a_correct_run():
    expected = {"t1": SimpleNamespace(nodes=2, ranks_per_node=2),
                "t2": SimpleNamespace(nodes=2, ranks_per_node=1),
                "t10": SimpleNamespace(nodes=1, ranks_per_node=1)}
    report = check_run(parse_lines(lines(run_records())), expected)
    assert report.ok, str(report)
    assert list(report.placements) == ["t1", "t2", "t10"]
    assert str(report).endswith("OK: 3 tasks placed as expected, no CPU shared between concurrent tasks")


def test_check_run_reports_missing_and_unexpected_tasks():
    expected = {"t1": SimpleNamespace(nodes=2, ranks_per_node=2),
                "t2": SimpleNamespace(nodes=2, ranks_per_node=1),
                7: SimpleNamespace(nodes=1, ranks_per_node=1)}  # keys may be ints
    report = check_run(parse_lines(lines(run_records())).placements(), expected)
    assert not report.ok
    text = str(report)
    assert "task 7: expected task has no records at all" in text
    assert "task t10: records of a task that was not expected" in text
    assert "2 problem(s):" in text


def test_check_run_rejects_expectations_without_the_attributes():
    with pytest.raises(PlacementInputError, match=r"expected\['t1'\] must have .nodes and .ranks_per_node"):
        check_run({}, {"t1": {"nodes": 2, "ranks_per_node": 2}})


def test_table_is_plain_columns_relative_to_the_earliest_start():
    table = render_table(parse_lines(lines(run_records())).placements())
    rows = [line.split() for line in table.splitlines()]
    assert rows[0] == ["TASK", "NODES", "NODELIST", "RANKS", "START", "END", "ELAPSED"]
    assert rows[1] == ["t1", "2", "node[1-2]", "4", "0.000", "1.000", "1.000"]
    assert rows[2] == ["t2", "2", "node[3-4]", "2", "0.500", "0.800", "0.300"]
    assert rows[3] == ["t10", "1", "node1", "1", "1.800", "2.300", "0.500"]
    # columns line up: every row's NODELIST starts at the header's offset
    offset = table.splitlines()[0].index("NODELIST")
    assert all(line[offset - 2:offset] == "  " and line[offset] != " " for line in table.splitlines())


def test_compress_hosts():
    assert compress_hosts(["node2", "node1", "node3", "node5"]) == "node[1-3,5]"
    assert compress_hosts(["n01", "n02", "login"]) == "login,n[01-02]"
    assert compress_hosts(["node9", "node10"]) == "node[9-10]"
    assert compress_hosts(["vm"]) == "vm"


def test_records_extend_keeps_problems():
    a = parse_lines(lines(task_records("t1", [("n1", {0})], T0, T0 + 1)))
    b = parse_lines(["oops"], source="f")
    merged = Records()
    merged.extend(a)
    merged.extend(b)
    assert len(merged.records) == 1 and [p.where for p in merged.problems] == ["f:1"]


# ---- GPUs ----------------------------------------------------------------------------------------------
# The records' GPU variables are written here as a launcher sets them; no GPU exists on these machines.

def with_gpus(records, devices, variable="CUDA_VISIBLE_DEVICES"):
    """The records with each rank given its devices (a string as the launcher sets it, or None: not set)."""
    out = []
    for r, d in zip(records, devices):
        out.append({**r, "gpus": {} if d is None else {variable: d}})
    return out


def test_each_rank_must_see_exactly_its_gpus_and_no_other_rank_of_its_node_the_same():
    recs = task_records("t1", GOOD_2x2, T0 + 1, T0 + 2)
    good = placement_of(with_gpus(recs, ["0", "1", "0", "1"]))
    assert check_task(good, 2, 2, gpus_per_rank=1) == []
    assert check_task(placement_of(with_gpus(recs, ["0,1", "2,3", "0,1", "2,3"])), 2, 2, gpus_per_rank=2) == []
    # Rank 1 was not given its own device: it shares rank 0's.
    shared = check_task(placement_of(with_gpus(recs, ["0", "0", "0", "1"])), 2, 2, gpus_per_rank=1)
    assert [(p.rank, p.host) for p in shared] == [(1, "node1")]
    assert "GPU 0 was given to ranks 0 and 1 at once" in str(shared[0])
    # Too many, none, and no variable at all are each named; the AMD variable counts as well.
    problems = check_task(placement_of(with_gpus(recs, ["0,1", "", None, "3"])), 2, 2, gpus_per_rank=1)
    assert [(p.rank, p.message.split(" (")[0]) for p in problems] == [
        (0, "saw 2 GPU(s)"), (1, "saw 0 GPU(s)"), (2, "saw no GPU")]
    amd = placement_of(with_gpus(recs, ["0", "1", "0", "1"], "ROCR_VISIBLE_DEVICES"))
    assert check_task(amd, 2, 2, gpus_per_rank=1) == []
    assert check_task(placement_of(recs), 2, 2) == []          # no GPUs asked: none checked


def test_flux_s_no_gpu_value_is_no_device_so_concurrent_cpu_tasks_share_nothing():
    # Flux's job shell sets CUDA_VISIBLE_DEVICES=-1 in jobs that asked for no GPU (seen on the flux path).
    a = with_gpus(task_records("t1", [("node1", {0})], T0 + 1, T0 + 3), ["-1"])
    b = with_gpus(task_records("t2", [("node1", {1})], T0 + 2, T0 + 4), ["-1"])
    assert placement_of(a).records[0].devices == frozenset()
    spec = SimpleNamespace(nodes=1, ranks_per_node=1)
    assert check_run(parse_lines(lines(a + b)), {"t1": spec, "t2": spec}).ok
    assert placement_of(with_gpus(a, ["2,-1,3"])).records[0].devices == frozenset({"2"})


def test_concurrent_tasks_must_not_share_a_gpu_and_the_report_lists_every_rank():
    a = with_gpus(task_records("t1", [("node1", {0}), ("node1", {1})], T0 + 1, T0 + 3), ["0", "1"])
    b = with_gpus(task_records("t2", [("node1", {0}), ("node1", {1})], T0 + 2, T0 + 4), ["2", "3"])
    b = [{**r, "cpus": [2 + r["rank"]]} for r in b]        # other cores too: only GPUs can collide
    spec = SimpleNamespace(nodes=1, ranks_per_node=2, gpus_per_rank=1)
    report = check_run(parse_lines(lines(a + b)), {"t1": spec, "t2": spec})
    assert report.ok, report.render()
    text = report.render()
    assert "no CPU or GPU shared between concurrent tasks" in text
    affinity = text.split("TASK  RANK")[1]       # the per-rank table, after the per-task one
    assert [line.split() for line in affinity.splitlines() if line.startswith("t2 ")] == \
        [["t2", "0", "node1", "2", "2"], ["t2", "1", "node1", "3", "3"]]
    # The doctored record: t2's rank 1 was given t1's GPU 1 while t1 ran.
    doctored = b[:1] + [{**b[1], "gpus": {"CUDA_VISIBLE_DEVICES": "1"}}]
    report = check_run(parse_lines(lines(a + doctored)), {"t1": spec, "t2": spec})
    assert not report.ok
    (problem,) = report.problems
    assert "tasks t1 and t2 ran at the same time and shared GPUs 1: ranks 1 of t1, ranks 1 of t2" in str(problem)
    # One after the other, the same GPUs are fine.
    later = [{**r, "t_init": r["t_init"] + 10, "t_end": r["t_end"] + 10} for r in doctored]
    assert check_run(parse_lines(lines(a + later)), {"t1": spec, "t2": spec}).ok
