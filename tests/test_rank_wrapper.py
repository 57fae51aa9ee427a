"""The rank wrapper (fluxmpi/_rank_wrapper.sh) run for real: directly, with the variables each launcher sets, and as
every rank of mpirun (Open MPI) and mpiexec.mpich where those are installed. No Slurm needed."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from fluxmpi.mpi_apps import compile_c_app
from fluxmpi.placement import RankRecord, check_task, read_records
from fluxmpi.rank_wrapper import WRAPPER_PATH, WrapperError, wrap

NEEDS_OPENMPI = pytest.mark.skipif(shutil.which("mpirun") is None,
                                   reason="Open MPI's mpirun not installed (apt-get install openmpi-bin)")
NEEDS_MPICH = pytest.mark.skipif(shutil.which("mpiexec.mpich") is None,
                                 reason="MPICH's mpiexec.mpich not installed (apt-get install mpich)")
TIMEOUT = 120  # seconds for one launch of up to 4 ranks on a small shared machine
GPU_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ZE_AFFINITY_MASK",
            "GPU_DEVICE_ORDINAL")
LAUNCHER_PREFIXES = ("PMIX_", "PMI_", "OMPI_", "FLUX_", "SLURM_")


def clean_env(**extra):
    """This process's environment without any launcher's rank variables (the suite may itself run in a Slurm job)
    or GPU variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(LAUNCHER_PREFIXES) and k not in GPU_VARS and k != "FLUXMPI_TASK_ID"}
    return env | extra


def run_wrapped(out, argv, env, task="t0", **kw):
    return subprocess.run(wrap(argv, task, out), env=env, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False, **kw)


def only_record(out, task="t0"):
    """The one record in ``out``, checked to be the only file (no temporary left behind) and to parse."""
    files = sorted(p.name for p in out.iterdir())
    assert len(files) == 1 and files[0].startswith(f"{task}.") and files[0].endswith(".json"), files
    data = json.loads((out / files[0]).read_text())
    record = RankRecord.from_dict(data)
    assert files[0] == f"{task}.{record.rank}.json"
    return data, record


# ---- one rank at a time, as each launcher would start it -----------------------------------------------------

LAUNCHERS = {
    # name: (variables the launcher sets, expected rank, size, variable the rank is read from)
    "mpirun (Open MPI)": ({"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "4", "PMIX_RANK": "1"},
                          1, 4, "OMPI_COMM_WORLD_RANK"),
    "srun": ({"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "3", "SLURM_NTASKS": "8"}, 2, 3, "SLURM_PROCID"),
    "srun --mpi=pmix": ({"PMIX_RANK": "2", "SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "4"}, 2, 4, "SLURM_PROCID"),
    "sbatch step (no step size)": ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, 0, 2, "SLURM_PROCID"),
    "flux run": ({"FLUX_TASK_RANK": "5", "FLUX_JOB_SIZE": "6"}, 5, 6, "FLUX_TASK_RANK"),
    "flux run in a Slurm job": ({"FLUX_TASK_RANK": "3", "FLUX_JOB_SIZE": "4", "SLURM_PROCID": "0",
                                 "SLURM_NTASKS": "1"}, 3, 4, "FLUX_TASK_RANK"),
    "mpiexec (MPICH, PMI-1)": ({"PMI_RANK": "0", "PMI_SIZE": "2"}, 0, 2, "PMI_RANK"),
    "PMIx with a size": ({"PMIX_RANK": "007", "PMIX_SIZE": "8"}, 7, 8, "PMIX_RANK"),
}


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_record_of_one_rank_under_each_launchers_variables(launcher, tmp_path):
    variables, rank, size, source = LAUNCHERS[launcher]
    out = tmp_path / "records" / "nested"  # created by the wrapper
    proc = run_wrapped(out, ["/bin/true"], clean_env(**variables))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    data, r = only_record(out)
    assert (r.app, r.task, r.rank, r.size) == ("wrapper", "t0", rank, size)
    assert r.host == socket.gethostname()
    assert r.cpus == frozenset(os.sched_getaffinity(0))
    assert r.gpus == {}
    assert r.pid > 1 and data["child_pid"] > 1 and data["child_pid"] != r.pid
    assert r.t_start == r.t_init <= r.t_end
    assert abs(r.t_start - time.time()) < 60
    assert (data["exit"], data["argv0"], data["rank_from"]) == (0, "/bin/true", source)
    parsed = read_records(out)
    assert parsed.problems == [] and parsed.records == [RankRecord.from_dict(data, source=parsed.records[0].source)]


@pytest.mark.parametrize("script, status", [("exit 7", 7), ("exit 0", 0), ("kill -TERM $$", 128 + signal.SIGTERM)])
def test_the_programs_exit_status_is_passed_on_and_recorded(script, status, tmp_path):
    proc = run_wrapped(tmp_path, ["sh", "-c", script], clean_env(PMI_RANK="0", PMI_SIZE="1"))
    assert proc.returncode == status, proc.stderr
    data, _ = only_record(tmp_path)
    assert data["exit"] == status and data["argv0"] == "sh"


def test_a_missing_program_is_recorded_with_status_127(tmp_path):
    proc = run_wrapped(tmp_path, ["./no-such-program"], clean_env(PMI_RANK="0", PMI_SIZE="1"))
    assert proc.returncode == 127 and "no-such-program" in proc.stderr
    data, _ = only_record(tmp_path)
    assert data["exit"] == 127 and data["argv0"] == "./no-such-program"


def test_cpus_are_the_affinity_the_launcher_gave(tmp_path):
    mine = os.sched_getaffinity(0)
    cpu = max(mine)
    os.sched_setaffinity(0, {cpu})  # the wrapper inherits it, as from a launcher that binds the rank
    try:
        proc = run_wrapped(tmp_path, ["/bin/true"], clean_env(PMI_RANK="0", PMI_SIZE="1"))
    finally:
        os.sched_setaffinity(0, mine)
    assert proc.returncode == 0, proc.stderr
    assert only_record(tmp_path)[1].cpus == {cpu}


@pytest.mark.parametrize("cpu_list", ["0-3,8", "0", "7-33,40,95-101", "9-20", "0-1023"])
def test_cpu_ranges_are_expanded(cpu_list, tmp_path):
    """A machine with that many CPUs is not at hand: a copy of the wrapper reads a status file with that list."""
    status = tmp_path / "status"
    status.write_text(f"Name:\tsh\nCpus_allowed:\tff\nCpus_allowed_list:\t{cpu_list}\n")
    source = WRAPPER_PATH.read_text()
    assert source.count("</proc/self/status") == 1
    copy = tmp_path / "wrapper.sh"
    copy.write_text(source.replace("</proc/self/status", f"<'{status}'"))
    out = tmp_path / "out"
    proc = subprocess.run(["sh", str(copy), "--task", "t0", "--out", str(out), "/bin/true"],
                          env=clean_env(PMI_RANK="0", PMI_SIZE="1"), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    expected = []
    for part in cpu_list.split(","):
        lo, _, hi = part.partition("-")
        expected += range(int(lo), int(hi or lo) + 1)
    assert json.loads((out / "t0.0.json").read_text())["cpus"] == expected


def test_times_bracket_the_program(tmp_path):
    before = time.time()
    proc = run_wrapped(tmp_path, ["sleep", "0.2"], clean_env(SLURM_PROCID="0", SLURM_STEP_NUM_TASKS="1"))
    after = time.time()
    assert proc.returncode == 0, proc.stderr
    _, r = only_record(tmp_path)
    assert r.t_end - r.t_start >= 0.2
    assert before <= r.t_start <= r.t_end <= after


def test_gpu_variables_are_recorded_when_set(tmp_path):
    """A stand-in: this machine has no GPU, so only the variables a launcher would set are checked."""
    gpus = {"CUDA_VISIBLE_DEVICES": "1", "ROCR_VISIBLE_DEVICES": "0,1", "ZE_AFFINITY_MASK": "",
            "GPU_DEVICE_ORDINAL": 'odd "value" \\'}
    proc = run_wrapped(tmp_path, ["/bin/true"], clean_env(FLUX_TASK_RANK="0", FLUX_JOB_SIZE="1", **gpus))
    assert proc.returncode == 0, proc.stderr
    _, r = only_record(tmp_path)
    assert r.gpus == gpus  # set-but-empty counts as set; HIP_VISIBLE_DEVICES is unset and absent


def test_strings_are_json_escaped(tmp_path):
    odd = tmp_path / 'bin "quoted" back\\slash\ttab'
    odd.mkdir()
    program = odd / "prog"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    out = tmp_path / "out"
    proc = run_wrapped(out, [str(program)], clean_env(PMI_RANK="0", PMI_SIZE="1"), task="a.b-c_1")
    assert proc.returncode == 0, proc.stderr
    data, r = only_record(out, task="a.b-c_1")
    assert data["argv0"] == str(program) and r.task == "a.b-c_1"


def test_stdin_reaches_the_program(tmp_path):
    proc = run_wrapped(tmp_path, ["cat"], clean_env(PMI_RANK="0", PMI_SIZE="1"), input="line for rank 0\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "line for rank 0\n"


def test_task_id_defaults_like_the_c_app(tmp_path):
    env = clean_env(PMI_RANK="0", PMI_SIZE="1", FLUXMPI_TASK_ID="from-env")
    proc = subprocess.run(["sh", str(WRAPPER_PATH), "--out", str(tmp_path), "/bin/true"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert only_record(tmp_path, task="from-env")[1].task == "from-env"


# ---- refusals: exit 2 before the program runs ----------------------------------------------------------------

def refused(tmp_path, env, args):
    marker = tmp_path / "ran"
    proc = subprocess.run(["sh", str(WRAPPER_PATH), *args, "--", "sh", "-c", f"touch '{marker}'"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists(), "the program ran although the wrapper refused"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return proc.stderr


def test_no_rank_variable_exits_2_naming_the_variables(tmp_path):
    err = refused(tmp_path, clean_env(), ["--task", "t0", "--out", str(tmp_path / "out")])
    for var in ("PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "FLUX_TASK_RANK", "SLURM_PROCID",
                "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "FLUX_JOB_SIZE"):
        assert var in err
    assert "cannot tell this process's MPI rank" in err


def test_a_rank_without_a_size_is_named(tmp_path):
    err = refused(tmp_path, clean_env(PMIX_RANK="3"), ["--task", "t0", "--out", str(tmp_path / "out")])
    assert "only a rank, no size: PMIX_RANK" in err


@pytest.mark.parametrize("variables, message", [
    ({"PMI_RANK": "4", "PMI_SIZE": "4"}, "PMI_RANK=4 is not below PMI_SIZE=4"),
    ({"PMI_RANK": "-1", "PMI_SIZE": "4"}, "PMI_RANK='-1' is not a whole number"),
    ({"PMI_RANK": "0", "PMI_SIZE": "0"}, "an MPI size is at least 1"),
])
def test_bad_rank_values_exit_2(variables, message, tmp_path):
    assert message in refused(tmp_path, clean_env(**variables), ["--task", "t0", "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("args, message", [
    (["--task", "../x", "--out", "OUT"], "invalid --task '../x'"),
    (["--task", ".hidden", "--out", "OUT"], "invalid --task '.hidden'"),
    (["--task", "x" * 129, "--out", "OUT"], "more than 128 characters"),
    (["--task", "t0"], "--out DIR is required"),
    (["--task", "t0", "--out", "OUT", "--bogus"], "unknown option '--bogus'"),
])
def test_bad_usage_exits_2(args, message, tmp_path):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    err = refused(tmp_path, clean_env(PMI_RANK="0", PMI_SIZE="1"), args)
    assert message in err and "usage:" in err


# ---- signals --------------------------------------------------------------------------------------------------

HANDLES_INT = [sys.executable, "-c", ("import signal, time\nsignal.signal(signal.SIGINT, lambda *a: exit(5))\n"
                                     "print('ready', flush=True)\ntime.sleep(60)")]
SLEEPS = [sys.executable, "-c", "import time\nprint('ready', flush=True)\ntime.sleep(60)"]


@pytest.mark.parametrize("sig, program, status", [
    (signal.SIGTERM, SLEEPS, 128 + signal.SIGTERM),
    (signal.SIGUSR1, SLEEPS, 128 + signal.SIGUSR1),
    # sh starts the program with SIGINT ignored: one that left it so gets SIGTERM, one with a handler gets SIGINT.
    (signal.SIGINT, SLEEPS, 128 + signal.SIGTERM),
    (signal.SIGINT, HANDLES_INT, 5),
])
def test_a_signal_to_the_wrapper_reaches_the_program(sig, program, status, tmp_path):
    # As a launcher starts a rank: with SIGINT's default action. A suite run from a background job would hand it
    # down ignored (a shell cannot trap a signal ignored at its start); a handled signal is default after exec.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(wrap(program, "t0", tmp_path), env=clean_env(PMI_RANK="0", PMI_SIZE="1"),
                                stdout=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == status
    finally:
        proc.kill()
        proc.wait()
    data, _ = only_record(tmp_path)
    assert data["exit"] == status
    assert not os.path.exists(f"/proc/{data['child_pid']}"), "the program outlived the wrapper"


# ---- wrap() ---------------------------------------------------------------------------------------------------

def test_wrap_builds_the_command(tmp_path):
    assert WRAPPER_PATH.is_file() and WRAPPER_PATH.parent.name == "fluxmpi"
    assert wrap(["./app", "--x", "y"], "t3", tmp_path) == [
        "/bin/sh", str(WRAPPER_PATH), "--task", "t3", "--out", str(tmp_path), "--", "./app", "--x", "y"]
    assert wrap([tmp_path / "app"], "t", "out", shell="dash")[0] == "dash"
    assert wrap([tmp_path / "app"], "t", "out")[-1] == str(tmp_path / "app")


@pytest.mark.parametrize("kwargs, message", [
    ({"argv": []}, "argv is empty"),
    ({"argv": "./app --x"}, "not one string"),
    ({"argv": [""]}, "argv\\[0\\] is empty"),
    ({"argv": ["./app", 3]}, "argv\\[1\\] must be a string or path, got int 3"),
    ({"task": "bad/id"}, "invalid task id 'bad/id'"),
    ({"task": ""}, "invalid task id ''"),
    ({"task": 3}, "invalid task id 3"),
    ({"out_dir": ""}, "out_dir is empty"),
    ({"out_dir": None}, "out_dir must be a string or path"),
    ({"shell": ""}, "shell must name a POSIX shell"),
])
def test_wrap_refuses_bad_arguments(kwargs, message):
    args = {"argv": ["./app"], "task": "t0", "out_dir": "out"} | kwargs
    with pytest.raises(WrapperError, match=message) as err:
        wrap(**args)
    assert isinstance(err.value, ValueError)


# ---- real launchers -------------------------------------------------------------------------------------------

def ompi_env(**extra):
    return clean_env(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_btl="self,tcp",
                     **extra)


def launch(cmd, env):
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def check_four_ranks(out, source):
    assert sorted(p.name for p in out.iterdir()) == [f"t0.{r}.json" for r in range(4)]  # no temporaries left
    parsed = read_records(out)
    assert parsed.problems == []
    p = parsed.placements()["t0"]
    assert sorted(r.rank for r in p.records) == [0, 1, 2, 3]
    assert {r.size for r in p.records} == {4}
    assert len({r.pid for r in p.records}) == 4
    assert check_task(p, nodes=1, ranks_per_node=4) == []
    assert p.nodes == (socket.gethostname(),)
    for f in out.iterdir():
        data = json.loads(f.read_text())
        assert data["exit"] == 0 and data["rank_from"] == source
    return p


@NEEDS_OPENMPI
def test_four_ranks_under_mpirun(tmp_path):
    launch(["mpirun", "--oversubscribe", "-np", "4", *wrap(["/bin/true"], "t0", tmp_path)], ompi_env())
    check_four_ranks(tmp_path, "OMPI_COMM_WORLD_RANK")


@NEEDS_OPENMPI
def test_failing_rank_under_mpirun_fails_the_launch(tmp_path):
    cmd = wrap(["sh", "-c", 'exit "$((OMPI_COMM_WORLD_RANK == 1 ? 3 : 0))"'], "t0", tmp_path)
    proc = subprocess.run(["mpirun", "--oversubscribe", "-np", "2", *cmd], env=ompi_env(), capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode != 0
    assert json.loads((tmp_path / "t0.1.json").read_text())["exit"] == 3


@NEEDS_MPICH
def test_four_ranks_under_mpiexec_mpich(tmp_path):
    launch(["mpiexec.mpich", "-n", "4", *wrap(["/bin/true"], "t0", tmp_path)], clean_env())
    check_four_ranks(tmp_path, "PMI_RANK")


def check_pairs_with_the_apps_records(out):
    """Each wrapper record and the record the MPI app wrote as its child agree on rank, size, host and cpus."""
    assert read_records(out).problems == []
    records = [json.loads(f.read_text()) for f in sorted(out.glob("*.json"))]
    wrapper = {d["child_pid"]: RankRecord.from_dict(d) for d in records if d["app"] == "wrapper"}
    app = [RankRecord.from_dict(d) for d in records if d["app"] == "c"]
    assert len(app) == len(wrapper) == 4
    for r in app:
        w = wrapper[r.pid]  # the app ran as the wrapper's child
        assert (w.rank, w.size, w.host, w.cpus) == (r.rank, r.size, r.host, r.cpus)
        assert w.t_start <= r.t_start and r.t_end <= w.t_end


@NEEDS_OPENMPI
def test_wrapper_ranks_match_the_mpi_ranks_under_mpirun(c_binary, tmp_path):
    app = [str(c_binary), "--task", "app", "--out", str(tmp_path)]
    launch(["mpirun", "--oversubscribe", "-np", "4", *wrap(app, "t0", tmp_path)], ompi_env())
    check_pairs_with_the_apps_records(tmp_path)


@NEEDS_MPICH
def test_wrapper_ranks_match_the_mpi_ranks_under_mpiexec_mpich(tmp_path):
    """MPICH's ranks find their PMI server through an inherited descriptor (PMI_FD): it must survive the wrapper."""
    if shutil.which("mpicc.mpich") is None:
        pytest.skip("MPICH's mpicc.mpich not installed (apt-get install libmpich-dev)")
    binary = compile_c_app(tmp_path / "bin", mpicc="mpicc.mpich", name="mpi_hello_mpich")
    out = tmp_path / "out"
    app = [str(binary), "--task", "app", "--out", str(out)]
    launch(["mpiexec.mpich", "-n", "4", *wrap(app, "t0", out)], clean_env())
    check_pairs_with_the_apps_records(out)
