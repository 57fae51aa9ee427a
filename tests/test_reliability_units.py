"""The reliability pieces that need no cluster: what a resumed run skips, how launcher failures are read, how
block failures are tolerated. Inputs are real files and launcher output captured on the local cluster."""

import json

import pytest
from parsl.jobs.states import JobState, JobStatus

from fluxmpi.apps import launcher_failures
from fluxmpi.launch.resilience import Resilience
from fluxmpi.rankfault import RankFault, as_faults, task_fault_options
from fluxmpi.resume import ResumeError, finished_tasks
from fluxmpi.spec import MPITaskSpec, SpecError

SPEC = MPITaskSpec(nodes=1, ranks_per_node=2)


def record(task: str, rank: int, size: int = 2, host: str = "n1") -> dict:
    return {"app": "c", "task": task, "host": host, "rank": rank, "size": size, "pid": 100 + rank, "cpus": [rank],
            "t_init": 10.0, "t_end": 11.0}


def write_run(workdir, tasks: list[dict]) -> None:
    workdir.mkdir(exist_ok=True)
    (workdir / "run.json").write_text(json.dumps({"tasks": tasks}))


def test_resume_skips_what_run_json_says_finished(tmp_path):
    write_run(tmp_path, [{"task": "t0", "spec": SPEC.to_dict(), "ok": True, "returned": 5.0, "result": {"x": 1}},
                         {"task": "t1", "spec": SPEC.to_dict(), "ok": False, "returned": 6.0, "error": "boom"}])
    done = finished_tasks(tmp_path, ["t0", "t1", "t2"], [SPEC] * 3)
    assert set(done) == {"t0"} and done["t0"]["result"] == {"x": 1}


def test_resume_trusts_complete_rank_records_when_run_json_has_no_word(tmp_path):
    """A run killed before it could write run.json (SIGKILL): the ranks' own records tell what finished."""
    (tmp_path / "manifest.json").write_text("{}")
    records = tmp_path / "records"
    records.mkdir()
    for task, ranks in (("t0", [0, 1]), ("t1", [0])):      # t1 lost a rank: not finished
        for rank in ranks:
            (records / f"{task}.{rank}.json").write_text(json.dumps(record(task, rank)))
    done = finished_tasks(tmp_path, ["t0", "t1"], [SPEC] * 2)
    assert set(done) == {"t0"} and done["t0"]["result"]["from_records"]


def test_resume_reruns_a_finished_task_whose_command_changed(tmp_path):
    """The user's programs: a task is skipped only if it finished with the same command under its name."""
    write_run(tmp_path, [{"task": "quick", "spec": SPEC.to_dict(), "ok": True, "returned": 5.0, "command": ["app"]},
                         {"task": "slow", "spec": SPEC.to_dict(), "ok": True, "returned": 6.0, "command": ["app", "y"]}])
    done = finished_tasks(tmp_path, ["quick", "slow"], [SPEC] * 2, commands=[["app", "x"], ["app", "y"]])
    assert set(done) == {"slow"}


def test_resume_does_not_resurrect_a_task_run_json_says_failed(tmp_path):
    write_run(tmp_path, [{"task": "t0", "spec": SPEC.to_dict(), "ok": False, "returned": 6.0, "error": "boom"}])
    (tmp_path / "records").mkdir()
    for rank in (0, 1):   # records of an earlier attempt, all ranks: still the run said it failed
        (tmp_path / "records" / f"t0.{rank}.json").write_text(json.dumps(record("t0", rank)))
    assert finished_tasks(tmp_path, ["t0"], [SPEC]) == {}


def test_resume_refuses_a_workdir_of_other_tasks_or_no_run(tmp_path):
    write_run(tmp_path / "a", [{"task": "t0", "spec": MPITaskSpec(2, 1).to_dict(), "ok": True}])
    with pytest.raises(ResumeError, match="task t0 of the run in .* was 2x1 .*, this run asks 1x2"):
        finished_tasks(tmp_path / "a", ["t0"], [SPEC])
    (tmp_path / "b").mkdir()
    with pytest.raises(ResumeError, match="holds no earlier run"):
        finished_tasks(tmp_path / "b", ["t0"], [SPEC])
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "run.json").write_text("{not json")
    with pytest.raises(ResumeError, match="is not a fluxmpi run record"):
        finished_tasks(tmp_path / "c", ["t0"], [SPEC])


# stderr of failed tasks, as srun and Open MPI's mpirun printed it on the local cluster
SRUN_NODE_FAILURE = """salloc: error: Node failure on fxreltn2
srun: error: Node failure on fxreltn2
slurmstepd-fxreltn1: error: *** STEP 5.0 ON fxreltn1 CANCELLED AT 2026-11-21T21:14:06 DUE TO NODE FAILURE ***
srun: Job step aborted: Waiting up to 7 seconds for job step to finish.
srun: error: fxreltn1: tasks 0-1: Terminated"""
SRUN_EXIT = """mpi_hello: rank 1 on fxreltn1 fails on purpose (--fail-rank 1 --fail-mode exit)
srun: error: fxreltn1: task 1: Exited with exit code 3
slurmstepd-fxreltn1: error:  mpi/pmix_v4: _errhandler: fxreltn1 [0]: pmixp_client_v2.c:211: Error handler invoked
srun: error: fxreltn1: task 0: Killed
srun: error: fxreltn2: tasks 2-3: Killed"""
OMPI_SEGV = ("mpirun noticed that process rank 1 with PID 0 on node vm exited on signal 11 (Segmentation fault).")


@pytest.mark.parametrize("stderr, first", [
    (SRUN_NODE_FAILURE, ("?", "fxreltn2", "node failure")),
    (SRUN_EXIT, ("1", "fxreltn1", "Exited with exit code 3")),
    (OMPI_SEGV, ("1", "vm", "exited on signal 11 (Segmentation fault)")),
])
def test_launcher_failures_name_rank_node_and_cause(stderr, first):
    found = launcher_failures(stderr)
    assert found[0] == first, found


def test_one_failed_block_is_tolerated_three_in_a_row_are_not():
    class Executor:   # only what Parsl's error handler touches: recorded, not simulated behaviour
        def __init__(self):
            self.bad = None

        def set_bad_state_and_fail_all(self, err):
            self.bad = err
    handler = Resilience(max_block_failures=3).block_error_handler()
    failed, running = JobStatus(JobState.FAILED, message="NODE_FAIL"), JobStatus(JobState.RUNNING)
    ex = Executor()
    handler(ex, {"0": failed, "1": running})
    assert ex.bad is None
    handler(ex, {"0": failed, "1": failed, "2": failed})
    assert ex.bad is not None


def test_faults_choose_the_first_that_applies():
    faults = as_faults([RankFault(1, "segv", ("t0",)), RankFault(0, "exit", once=True)])
    assert task_fault_options(faults, "t0", "/m") == {"fail_rank": 1, "fail_mode": "segv"}
    assert task_fault_options(faults, "t3", "/m") == {"fail_rank": 0, "fail_mode": "exit",
                                                      "fail_once_marker": "/m/t3.failed-once"}
    with pytest.raises(SpecError, match="is not a RankFault"):
        as_faults(["t0"])


def test_the_stderr_tail_keeps_the_programs_last_words_over_srun_ending_the_step():
    """With --kill-on-bad-exit srun ends the step at a failed rank and says so for every other rank: those lines
    must not push the program's own last words out of the failure's stderr tail."""
    from fluxmpi.apps import _without_step_teardown
    err = "\n".join(["rank 1 on n4: fails on purpose", "srun: error: n4: task 1: Segmentation fault",
                     "slurmstepd-n1: error: *** STEP 46.4 ON n1 CANCELLED AT 2026-12-02T05:14:07 ***"]
                    + [f"srun: error: n{i}: task {i}: Terminated" for i in range(20)]
                    + ["srun: Force Terminated StepId=46.4", "srun: Job step aborted: Waiting up to 7 seconds"])
    assert _without_step_teardown(err).splitlines() == ["rank 1 on n4: fails on purpose"]
    only_slurm = "srun: error: n4: task 1: Exited with exit code 3"
    assert _without_step_teardown(only_slurm) == only_slurm      # nothing of the program's: keep Slurm's


def test_tasks_waiting_with_no_block_running_are_told_why_after_a_minute_then_every_five(monkeypatch):
    # Slurm's answers are fixed here: a replacement block pending for a node that is down.
    from fluxmpi.launch import watch as watch_mod
    states = {"5": {"state": "PENDING", "reason": "ReqNodeNotAvail", "nodes": ""}}
    monkeypatch.setattr(watch_mod.slurm, "job_states", lambda ids: {j: states[j] for j in ids})
    monkeypatch.setattr(watch_mod.slurm, "unusable_nodes", lambda partition: {})
    w = watch_mod.BlockWatch(lambda: ["5"], "debug")
    assert w.check(now=0.0) is None
    assert w.waiting_notice(now=30.0) is None
    notice = w.waiting_notice(now=61.0)
    assert notice and "61s" in notice and "job 5 PENDING (ReqNodeNotAvail)" in notice, notice
    assert "run's time limit" in notice
    assert w.waiting_notice(now=120.0) is None                  # not again within five minutes
    assert w.waiting_notice(now=362.0) is not None
    states["5"] = {"state": "RUNNING", "reason": "None", "nodes": ""}
    w.check(now=400.0)
    assert w.waiting_notice(now=1000.0) is None                 # a block runs: nothing to say
    timed = watch_mod.BlockWatch(lambda: ["5"], "debug", block_timeout=600)
    states["5"] = {"state": "PENDING", "reason": "Resources", "nodes": ""}
    timed.check(now=0.0)
    assert "--block-timeout 600s" in timed.waiting_notice(now=60.0)


def test_a_new_block_asks_for_the_nodes_that_are_up_and_leaves_the_others_out(monkeypatch):
    # Slurm's answers are fixed here: a 4-node partition, one node down, sinfo failing in the last case.
    from fluxmpi.launch import shaping
    from fluxmpi.slurm import SlurmError
    monkeypatch.setattr(shaping.slurm, "partition_nodes", lambda p: ["n1", "n2", "n3", "n4"])
    monkeypatch.setattr(shaping.slurm, "unusable_nodes", lambda p: {"n3": "Slurm lists it down* (Not responding)"})
    shape = shaping.usable_shape("debug", 4)
    assert (shape.nodes, shape.leave_out) == (3, ("n3",))
    assert shape.exclude_option() == "#SBATCH --exclude=n3" and "n3: Slurm lists it down*" in shape.why
    assert shaping.usable_shape("debug", 2).nodes == 2              # fewer than are up: as asked
    lost = shaping.usable_shape("debug", 4, {"n1": "lost by Flux 3s ago", "elsewhere": "not in the partition"})
    assert (lost.nodes, lost.leave_out) == (2, ("n1", "n3"))
    assert shaping.UsableShape(4).exclude_option() == ""

    def no_sinfo(p):
        raise SlurmError("sinfo: error: Unable to contact slurm controller")
    monkeypatch.setattr(shaping.slurm, "unusable_nodes", no_sinfo)
    assert shaping.usable_shape("debug", 4) == shaping.UsableShape(4)   # cannot ask: as configured


def test_a_shrunken_gate_holds_back_larger_tasks_without_refusing_them():
    from concurrent.futures import Future

    from fluxmpi.launch.gate import NodeGate
    gate, started = NodeGate(4), []

    def start(label):
        def go():
            started.append(label)
            return Future()
        return go
    gate.resize(3)                                     # the block came up with 3 of 4 nodes
    gate.submit(4, start("big"), label="big")          # waits: not refused, the next full block may run it
    gate.submit(2, start("small"), label="small")
    assert started == ["small"] and gate.smallest_waiting() == 4 and gate.free == 1
    with pytest.raises(SpecError, match="asks for 5 nodes but the block has 4"):
        gate.submit(5, start("huge"), label="huge")
    with pytest.raises(SpecError, match="1 to 4 nodes"):
        gate.resize(5)
    gate.resize(4)
    assert started == ["small"] and gate.free == 2     # 4 free in a 4-node block, 2 still held by "small"


def test_a_task_starts_only_while_its_walltime_fits_the_block_s_time_left():
    from concurrent.futures import Future

    from fluxmpi.launch.gate import NodeGate
    left = {"s": 30.0}
    gate, started, inner = NodeGate(4, time_left=lambda: left["s"]), [], {}

    def start(label):
        def go():
            started.append(label)
            inner[label] = Future()
            return inner[label]
        return go
    gate.submit(2, start("long"), label="long", seconds=60)      # 60 s + 2 s to start > 30 s left: waits
    gate.submit(2, start("short"), label="short", seconds=5)
    gate.submit(1, start("plain"), label="plain")                 # no walltime: as before
    assert started == ["short", "plain"] and gate.waiting == 1
    assert gate.idle_and_outlasted() == []                        # the block still runs tasks
    inner["short"].set_result(1)
    inner["plain"].set_result(1)
    import time
    for _ in range(50):                                           # the gate admits off the callback thread
        if gate.free == 4:
            break
        time.sleep(0.02)
    assert started == ["short", "plain"]                          # nodes free, but still too little time
    assert gate.idle_and_outlasted() == ["long, a walltime of 60s"]
    left["s"] = None                                              # the block ended; none runs: admitted
    gate.poke()
    assert started == ["short", "plain", "long"]


def test_run_json_is_rewritten_once_per_period_in_the_background_and_never_after_the_final_one(tmp_path):
    import time

    from fluxmpi import runner
    from fluxmpi.rundir import RunDir
    done = runner.TaskOutcome("t0", SPEC.to_dict(), submitted=1.0)
    writer = runner._RunJsonWriter("htex", "local:x", tmp_path, 0.0, [done], 0, {"t0": 0})
    dumps, dump = [], writer._dump_text
    writer._dump_text = lambda text: (dumps.append(1), dump(text))
    for _ in range(500):                      # 500 tasks finishing at once: one rewrite, not 500
        writer.note_change()
    run_json = RunDir.at(tmp_path).run_json
    deadline = time.monotonic() + 5 * runner.RUN_JSON_PERIOD
    while not run_json.exists():
        assert time.monotonic() < deadline, "no run.json within five periods of a finished task"
        time.sleep(0.05)
    first = json.loads(run_json.read_text())
    assert len(dumps) == 1
    assert first["complete"] is False and [t["task"] for t in first["tasks"]] == ["t0"]
    writer._finished.set()                    # what finish() does before it writes the final run.json
    run_json.write_text('{"final": true}')
    writer.note_change()
    writer.write_interim()
    time.sleep(2 * runner.RUN_JSON_PERIOD)
    assert json.loads(run_json.read_text()) == {"final": True}


def test_interim_run_json_holds_every_task_as_asdict_would_and_remakes_only_the_changed(tmp_path):
    from dataclasses import asdict

    from fluxmpi import runner
    from fluxmpi.rundir import RunDir
    outcomes = [runner.TaskOutcome(f"t{i}", SPEC.to_dict(), submitted=1.0) for i in range(3)]
    writer = runner._RunJsonWriter("flux-jobs", "local:x", tmp_path, 0.0, outcomes, 1, {})
    writer.write_interim()
    run_json = RunDir.at(tmp_path).run_json
    assert json.loads(run_json.read_text())["tasks"] == [asdict(o) for o in outcomes]
    # t1 finishes as runner._record sets it: new values, lists replaced, not changed in place.
    t1 = outcomes[1]
    t1.returned, t1.ok, t1.result, t1.attempts, t1.earlier_errors = 2.0, True, {"hosts": ["n1"]}, 2, ["rank 0 failed"]
    texts_before = dict(writer._texts)
    t0 = outcomes[0]
    t0.error = "changed, but the runner did not say so"      # not remade until it is said (or at the end)
    writer.note_change(t1)
    writer.write_interim()
    data = json.loads(run_json.read_text())
    assert data["complete"] is False and data["retries"] == 1
    assert data["tasks"][1:] == [asdict(o) for o in outcomes[1:]] and data["tasks"][0]["error"] is None
    assert data["tasks"][1]["result"] == {"hosts": ["n1"]} and data["tasks"][1]["earlier_errors"] == ["rank 0 failed"]
    changed = [o.task for o in outcomes if writer._texts[id(o)] is not texts_before[id(o)]]
    assert changed == ["t1"], changed
    assert writer._cost > 0


def test_the_final_run_json_is_the_results_to_json_made_from_the_kept_task_texts(tmp_path):
    from fluxmpi import runner
    outcomes = [runner.TaskOutcome(f"t{i}", SPEC.to_dict(), submitted=1.0, returned=2.0, ok=True,
                                   result={"hosts": [f"n{i}"]}) for i in range(3)]
    outcomes[2].ok, outcomes[2].error = False, "rank 1 on n2 exited 3"
    writer = runner._RunJsonWriter("flux-jobs", "local:x", tmp_path, 0.0, outcomes, 1, {})
    writer.write_interim()
    result = runner.RunResult(path="flux-jobs", site="local:x", workdir=str(tmp_path), t_start=0.0, t_loaded=0.5,
                              t_compiled=None, t_first_result=2.0, t_end=3.0, tasks=list(outcomes),
                              placement_ok=True, blocks={"7": {"state": "COMPLETED"}}, usage={"paid": 4.0})
    data = json.loads(writer._final_text(result))
    assert data == json.loads(json.dumps(result.to_json(), default=str))
    assert data["complete"] is True and data["ok"] is False and data["tasks"][2]["error"] == "rank 1 on n2 exited 3"
    assert all(writer._texts[id(o)][1] in writer._final_text(result) for o in outcomes)    # no task dumped again


def test_waiting_for_the_tasks_reports_progress_and_gives_up_only_on_those_not_done_at_the_time_limit():
    import threading
    import time
    from concurrent.futures import Future

    from fluxmpi import runner
    futures = {Future(): runner.TaskOutcome(f"t{i}", SPEC.to_dict(), submitted=1.0) for i in range(4)}
    futs = list(futures)
    futs[0].set_result(0)                                     # done before the wait began
    seen = []
    threading.Timer(0.3, futs[1].set_result, [1]).start()
    runner._wait_all(futures, timeout=1.5, on_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (2, 4) and all(total == 4 for _, total in seen)
    given_up = [o.task for o in futures.values() if o.error]
    assert given_up == ["t2", "t3"] and "time limit (2s)" in futures[futs[2]].error
    for f in futs[2:]:
        f.set_result(None)
    t0 = time.monotonic()
    runner._wait_all(futures, timeout=60, on_progress=None)   # all done: returns at once
    assert time.monotonic() - t0 < 0.5


def test_a_launch_is_done_only_when_every_rank_left_its_record(tmp_path):
    """srun was seen exiting 0 after a node of its step was killed mid-run: the rank there left no record. The
    task fails naming that rank and the node the launcher put it on (ranks_per_node consecutive ranks a node)."""
    from fluxmpi.apps import MPITaskFailed, check_every_rank_ended

    spec = MPITaskSpec(nodes=2, ranks_per_node=2)
    for rank in (0, 1, 3):
        (tmp_path / f"t0.{rank}.json").write_text(json.dumps(record("t0", rank, size=4)))
    with pytest.raises(MPITaskFailed) as err:
        check_every_rank_ended("t0", spec, ["n1", "n2"], str(tmp_path), ["srun"], "srun: error: Node failure on n2\n",
                               grace=0)
    assert err.value.failures == [("?", "n2", "node failure"), ("2", "n2", "never ended (no record)")]
    assert "1 of 4 ranks left no record" in str(err.value) and "(n2)" in str(err.value)
    (tmp_path / "t0.2.json").write_text(json.dumps(record("t0", 2, size=4)))
    check_every_rank_ended("t0", spec, ["n1", "n2"], str(tmp_path), ["srun"], "", grace=0)    # all four: done


def test_a_late_record_on_a_shared_file_system_is_waited_for_within_the_grace(tmp_path):
    import threading

    from fluxmpi.apps import check_every_rank_ended

    spec = MPITaskSpec(nodes=1, ranks_per_node=1)
    late = threading.Timer(0.6, lambda: (tmp_path / "t0.0.json").write_text("{}"))
    late.start()
    check_every_rank_ended("t0", spec, ["n1"], str(tmp_path), ["srun"], "", grace=10)
    late.join()


def test_a_retry_clears_only_its_own_task_s_earlier_records(tmp_path):
    """Task ids may contain dots: clearing t1's records before its retry leaves task t1.x's alone."""
    from fluxmpi.placement import clear_task_records, unreported_ranks

    for name in ("t1.0.json", "t1.1.json", "t1.x.0.json", "t10.0.json"):
        (tmp_path / name).write_text("{}")
    clear_task_records(tmp_path, "t1", 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.x.0.json", "t10.0.json"]
    assert unreported_ranks(tmp_path, "t1", 2) == [0, 1] and unreported_ranks(tmp_path, "t10", 1) == []


def test_a_node_flux_lost_is_back_once_slurm_saw_it_go_and_come_back():
    from fluxmpi.launch.flux.rejoin import LostNodes

    lost = LostNodes(rejoin_after=300)
    lost.lose(["n2", "n3"])
    assert set(lost.leave_out()) == {"n2", "n3"}
    # Slurm has not noticed yet (it lists neither unusable): not back, still left out of new blocks.
    assert lost.look({}) == [] and not lost.is_back("n2")
    assert lost.look({"n2": "Slurm lists it allocated*"}) == []
    assert lost.look({}) == ["n2"] and lost.is_back("n2") and not lost.is_back("n3")
    assert set(lost.leave_out()) == {"n3"} and lost.away["n2"] >= 0
    lost.lose(["n2"])           # lost again: back only after Slurm shows it go and come back once more
    assert not lost.is_back("n2") and lost.look({}) == []


def test_a_lost_node_slurm_never_listed_down_is_back_after_rejoin_after():
    from fluxmpi.launch.flux.rejoin import LostNodes

    lost = LostNodes(rejoin_after=0.0)
    lost.lose(["n4"])
    assert lost.leave_out() == {}
    assert lost.look({"n4": "Slurm lists it down*"}) == []      # down now: not back, whatever the time
    assert lost.look({}) == ["n4"]


def test_a_returned_node_gets_its_own_instance_as_a_step_of_its_block_job():
    from fluxmpi.launch.flux.executor import broker_step
    from fluxmpi.launch.flux.rejoin import rejoin_step

    argv = rejoin_step(broker_step("/opt/flux/bin/flux", 1, 8, link_timeout=10), "4711", "n3")
    assert argv[:4] == ["srun", "--jobid=4711", "--overlap", "--nodelist=n3"]
    assert "--nodes=1" in argv and "--no-kill" in argv and argv[-2:] == ["start", "-Stbon.tcp_user_timeout=10s"]
    with pytest.raises(ValueError, match="not an srun broker step"):
        rejoin_step(["mpiexec", "-n", "1", "flux", "start"], "1", "n3")


def test_fluxmpi_run_says_which_lost_nodes_came_back_and_run_json_keeps_it(capsys):
    from fluxmpi.cli.run import _report_failures
    from fluxmpi.runner import RunResult

    back = "back 16s after Flux lost it; taking tasks again 1.2s later in top-up block 1 (Slurm job 2)"
    result = RunResult(path="flux-jobs", site="local:x", workdir="/w", t_start=0.0, t_loaded=0.0, t_compiled=None,
                       t_first_result=None, t_end=1.0, lost_nodes={"n2": "Slurm lists it allocated*"},
                       nodes_back={"n2": back})
    _report_failures(result)
    err = capsys.readouterr().err
    assert "fluxmpi: node n2 was lost during the run: Slurm lists it allocated*" in err
    assert f"fluxmpi: node n2 came back: {back}" in err
    assert result.to_json()["nodes_back"] == {"n2": back}
