"""The rank wrappers (fluxmpi/_rank_wrapper.c, compiled, and fluxmpi/_rank_wrapper.sh) run for real: directly, with
the variables each launcher sets, and as every rank of mpirun (Open MPI) and mpiexec.mpich where those are
installed; each test of a run is made with both wrappers (the `kind` fixture), which must give the same records. Then
the C wrapper's build cache and the fallback to the sh one. No Slurm needed; the C wrapper is built into a cache
under this module's temporary directory, not the home directory."""
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
from fluxmpi.rank_wrapper import (
    BINARY_NAME,
    WRAPPER_PATH,
    WrapperError,
    find_compiler,
    wrap,
    wrapper_command,
)

NEEDS_OPENMPI = pytest.mark.skipif(shutil.which("mpirun") is None,
                                   reason="Open MPI's mpirun not installed (apt-get install openmpi-bin)")
NEEDS_MPICH = pytest.mark.skipif(shutil.which("mpiexec.mpich") is None,
                                 reason="MPICH's mpiexec.mpich not installed (apt-get install mpich)")
TIMEOUT = 120  # seconds for one launch of up to 4 ranks on a small shared machine
GPU_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ZE_AFFINITY_MASK",
            "GPU_DEVICE_ORDINAL")
LAUNCHER_PREFIXES = ("PMIX_", "PMI_", "OMPI_", "FLUX_", "SLURM_")
KINDS = ["c", "sh"]
NEEDS_CC = pytest.mark.skipif(find_compiler() is None, reason="no C compiler (cc, gcc, mpicc) to build the C wrapper")


@pytest.fixture(scope="module", autouse=True)
def module_cache(tmp_path_factory):
    """A cache of this module's own for the C wrapper, and the wrapper choice at its default."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("fluxmpi-cache")
        mp.setenv("FLUXMPI_CACHE", str(cache))
        mp.delenv("FLUXMPI_RANK_WRAPPER", raising=False)
        yield cache


@pytest.fixture(params=[pytest.param("c", marks=NEEDS_CC), "sh"])
def kind(request, monkeypatch):
    """Which wrapper wrap() and wrapper_command() give, through FLUXMPI_RANK_WRAPPER (c: the compiled one)."""
    monkeypatch.setenv("FLUXMPI_RANK_WRAPPER", request.param)
    return request.param


def clean_env(**extra):
    """This process's environment without any launcher's rank variables (the suite may itself run in a Slurm job)
    or GPU variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(LAUNCHER_PREFIXES) and k not in GPU_VARS and k != "FLUXMPI_TASK_ID"}
    return env | extra


def run_wrapped(out, argv, env, task="t0", **kw):
    """``argv`` run under the wrapper of the test's `kind`."""
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
def test_record_of_one_rank_under_each_launchers_variables(launcher, tmp_path, kind):
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
def test_the_programs_exit_status_is_passed_on_and_recorded(script, status, tmp_path, kind):
    proc = run_wrapped(tmp_path, ["sh", "-c", script], clean_env(PMI_RANK="0", PMI_SIZE="1"))
    assert proc.returncode == status, proc.stderr
    data, _ = only_record(tmp_path)
    assert data["exit"] == status and data["argv0"] == "sh"


def test_a_missing_program_is_recorded_with_status_127(tmp_path, kind):
    proc = run_wrapped(tmp_path, ["./no-such-program"], clean_env(PMI_RANK="0", PMI_SIZE="1"))
    assert proc.returncode == 127 and "no-such-program" in proc.stderr
    data, _ = only_record(tmp_path)
    assert data["exit"] == 127 and data["argv0"] == "./no-such-program"


def test_cpus_are_the_affinity_the_launcher_gave(tmp_path, kind):
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
def test_cpu_ranges_are_expanded_by_the_sh_wrapper(cpu_list, tmp_path):
    """A machine with that many CPUs is not at hand: a copy of the sh wrapper reads a status file with that list.
    (The C wrapper reads the affinity mask itself, with sched_getaffinity.)"""
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


def test_times_bracket_the_program(tmp_path, kind):
    before = time.time()
    proc = run_wrapped(tmp_path, ["sleep", "0.2"], clean_env(SLURM_PROCID="0", SLURM_STEP_NUM_TASKS="1"))
    after = time.time()
    assert proc.returncode == 0, proc.stderr
    _, r = only_record(tmp_path)
    assert r.t_end - r.t_start >= 0.2
    assert before <= r.t_start <= r.t_end <= after


def test_gpu_variables_are_recorded_when_set(tmp_path, kind):
    """A stand-in: this machine has no GPU, so only the variables a launcher would set are checked."""
    gpus = {"CUDA_VISIBLE_DEVICES": "1", "ROCR_VISIBLE_DEVICES": "0,1", "ZE_AFFINITY_MASK": "",
            "GPU_DEVICE_ORDINAL": 'odd "value" \\'}
    proc = run_wrapped(tmp_path, ["/bin/true"], clean_env(FLUX_TASK_RANK="0", FLUX_JOB_SIZE="1", **gpus))
    assert proc.returncode == 0, proc.stderr
    _, r = only_record(tmp_path)
    assert r.gpus == gpus  # set-but-empty counts as set; HIP_VISIBLE_DEVICES is unset and absent


def test_strings_are_json_escaped(tmp_path, kind):
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


def test_stdin_reaches_the_program(tmp_path, kind):
    proc = run_wrapped(tmp_path, ["cat"], clean_env(PMI_RANK="0", PMI_SIZE="1"), input="line for rank 0\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "line for rank 0\n"


def test_task_id_defaults_like_the_c_app(tmp_path, kind):
    env = clean_env(PMI_RANK="0", PMI_SIZE="1", FLUXMPI_TASK_ID="from-env")
    proc = subprocess.run([*wrapper_command(), "--out", str(tmp_path), "/bin/true"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert only_record(tmp_path, task="from-env")[1].task == "from-env"


# ---- refusals: exit 2 before the program runs ----------------------------------------------------------------

def refused(tmp_path, env, args):
    marker = tmp_path / "ran"
    proc = subprocess.run([*wrapper_command(), *args, "--", "sh", "-c", f"touch '{marker}'"], env=env,
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists(), "the program ran although the wrapper refused"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return proc.stderr


def test_no_rank_variable_exits_2_naming_the_variables(tmp_path, kind):
    err = refused(tmp_path, clean_env(), ["--task", "t0", "--out", str(tmp_path / "out")])
    for var in ("PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "FLUX_TASK_RANK", "SLURM_PROCID",
                "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "FLUX_JOB_SIZE"):
        assert var in err
    assert "cannot tell this process's MPI rank" in err


def test_a_rank_without_a_size_is_named(tmp_path, kind):
    err = refused(tmp_path, clean_env(PMIX_RANK="3"), ["--task", "t0", "--out", str(tmp_path / "out")])
    assert "only a rank, no size: PMIX_RANK" in err


@pytest.mark.parametrize("variables, message", [
    ({"PMI_RANK": "4", "PMI_SIZE": "4"}, "PMI_RANK=4 is not below PMI_SIZE=4"),
    ({"PMI_RANK": "-1", "PMI_SIZE": "4"}, "PMI_RANK='-1' is not a whole number"),
    ({"PMI_RANK": "0", "PMI_SIZE": "0"}, "an MPI size is at least 1"),
])
def test_bad_rank_values_exit_2(variables, message, tmp_path, kind):
    assert message in refused(tmp_path, clean_env(**variables), ["--task", "t0", "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("args, message", [
    (["--task", "../x", "--out", "OUT"], "invalid --task '../x'"),
    (["--task", ".hidden", "--out", "OUT"], "invalid --task '.hidden'"),
    (["--task", "x" * 129, "--out", "OUT"], "more than 128 characters"),
    (["--task", "t0"], "--out DIR is required"),
    (["--task", "t0", "--out", "OUT", "--bogus"], "unknown option '--bogus'"),
])
def test_bad_usage_exits_2(args, message, tmp_path, kind):
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
    (signal.SIGHUP, SLEEPS, 128 + signal.SIGHUP),
    # sh starts the program with SIGINT ignored: one that left it so gets SIGTERM, one with a handler gets SIGINT.
    # The C wrapper starts it with SIGINT's default action (Python's KeyboardInterrupt, which ends it by SIGINT).
    (signal.SIGINT, SLEEPS, {"sh": 128 + signal.SIGTERM, "c": 128 + signal.SIGINT}),
    (signal.SIGINT, HANDLES_INT, 5),
])
def test_a_signal_to_the_wrapper_reaches_the_program(sig, program, status, tmp_path, kind):
    status = status[kind] if isinstance(status, dict) else status
    # As a launcher starts a rank: with SIGINT's default action. A suite run from a background job would hand it
    # down ignored (a shell cannot trap a signal ignored at its start); a handled signal is default after exec.
    # The same for the signal under test: a suite started under nohup would hand SIGHUP down ignored.
    previous = {sig: signal.signal(sig, signal.SIG_DFL)}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(wrap(program, "t0", tmp_path), env=clean_env(PMI_RANK="0", PMI_SIZE="1"),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
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

def test_wrap_builds_the_command(tmp_path, kind, module_cache):
    assert WRAPPER_PATH.is_file() and WRAPPER_PATH.parent.name == "fluxmpi"
    prefix = wrapper_command()
    if kind == "c":
        assert len(prefix) == 1 and os.path.isabs(prefix[0]) and prefix[0].endswith(f"/{BINARY_NAME}")
        assert prefix[0].startswith(f"{module_cache}/rank-wrapper/")
    else:
        assert prefix == ["/bin/sh", str(WRAPPER_PATH)]
    assert wrap(["./app", "--x", "y"], "t3", tmp_path) == [
        *prefix, "--task", "t3", "--out", str(tmp_path), "--", "./app", "--x", "y"]
    assert wrap([tmp_path / "app"], "t", "out", shell="dash")[:2] == ["dash", str(WRAPPER_PATH)]  # always sh
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
def test_four_ranks_under_mpirun(tmp_path, kind):
    launch(["mpirun", "--oversubscribe", "-np", "4", *wrap(["/bin/true"], "t0", tmp_path)], ompi_env())
    check_four_ranks(tmp_path, "OMPI_COMM_WORLD_RANK")


@NEEDS_OPENMPI
def test_failing_rank_under_mpirun_fails_the_launch(tmp_path, kind):
    cmd = wrap(["sh", "-c", 'exit "$((OMPI_COMM_WORLD_RANK == 1 ? 3 : 0))"'], "t0", tmp_path)
    proc = subprocess.run(["mpirun", "--oversubscribe", "-np", "2", *cmd], env=ompi_env(), capture_output=True,
                          text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode != 0
    assert json.loads((tmp_path / "t0.1.json").read_text())["exit"] == 3


@NEEDS_MPICH
def test_four_ranks_under_mpiexec_mpich(tmp_path, kind):
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
def test_wrapper_ranks_match_the_mpi_ranks_under_mpirun(c_binary, tmp_path, kind):
    app = [str(c_binary), "--task", "app", "--out", str(tmp_path)]
    launch(["mpirun", "--oversubscribe", "-np", "4", *wrap(app, "t0", tmp_path)], ompi_env())
    check_pairs_with_the_apps_records(tmp_path)


@pytest.fixture(scope="module")
def mpich_binary(tmp_path_factory):
    if shutil.which("mpicc.mpich") is None:
        pytest.skip("MPICH's mpicc.mpich not installed (apt-get install libmpich-dev)")
    return compile_c_app(tmp_path_factory.mktemp("mpich-bin"), mpicc="mpicc.mpich", name="mpi_hello_mpich")


@NEEDS_MPICH
def test_wrapper_ranks_match_the_mpi_ranks_under_mpiexec_mpich(mpich_binary, tmp_path, kind):
    """MPICH's ranks find their PMI server through an inherited descriptor (PMI_FD): it must survive the wrapper."""
    out = tmp_path / "out"
    app = [str(mpich_binary), "--task", "app", "--out", str(out)]
    launch(["mpiexec.mpich", "-n", "4", *wrap(app, "t0", out)], clean_env())
    check_pairs_with_the_apps_records(out)


# ---- the two wrappers agree ----------------------------------------------------------------------------------

@NEEDS_CC
def test_the_c_and_sh_wrappers_write_the_same_record(tmp_path):
    """Everything but the pids and times is the same, down to the JSON escapes of control characters."""
    odd = tmp_path / "dir\x01with\x1fcontrols\x7f and \u00e9"
    odd.mkdir()
    program = odd / "prog"
    program.write_text("#!/bin/sh\nexit 3\n")
    program.chmod(0o755)
    env = clean_env(SLURM_PROCID="1", SLURM_NTASKS="2", CUDA_VISIBLE_DEVICES="0,1", HIP_VISIBLE_DEVICES="",
                    GPU_DEVICE_ORDINAL='tab\tnewline\n"q"\\ \u00fc')
    records = {}
    for name, prefix in {"c": [c_wrapper()], "sh": ["/bin/sh", str(WRAPPER_PATH)]}.items():
        out = tmp_path / name
        proc = subprocess.run([*prefix, "--task=same.task", f"--out={out}", str(program)], env=env,
                              capture_output=True, text=True, timeout=TIMEOUT, check=False)
        assert proc.returncode == 3 and proc.stderr == "", proc.stderr
        text = (out / "same.task.1.json").read_text()
        assert text.endswith("}\n") and text.count("\n") == 1
        records[name] = json.loads(text)
    varying = ("pid", "child_pid", "t_start", "t_init", "t_end")
    c, sh = ({k: v for k, v in r.items() if k not in varying} for r in (records["c"], records["sh"]))
    assert list(records["c"]) == list(records["sh"])  # the same keys in the same order
    assert c == sh
    assert c["argv0"] == str(program) and c["exit"] == 3 and c["gpus"]["HIP_VISIBLE_DEVICES"] == ""


@NEEDS_CC
@pytest.mark.parametrize("args", [["-h"], ["--help"]])
def test_both_wrappers_print_the_same_help(args):
    c = subprocess.run([c_wrapper(), *args], capture_output=True, text=True, timeout=TIMEOUT, check=False)
    sh = subprocess.run(["/bin/sh", str(WRAPPER_PATH), *args], capture_output=True, text=True, timeout=TIMEOUT,
                        check=False)
    assert c.returncode == sh.returncode == 0
    assert c.stdout.replace(BINARY_NAME, "_rank_wrapper.sh") == sh.stdout


# ---- the C wrapper's build: cache, fallback, choice ------------------------------------------------------------

def c_wrapper():
    """The C wrapper's path, as wrapper_command() gives it with FLUXMPI_RANK_WRAPPER=c."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLUXMPI_RANK_WRAPPER", "c")
        (binary,) = wrapper_command()
    return binary


PRINT_WRAPPER_COMMAND = "from fluxmpi.rank_wrapper import wrapper_command as w; print(*w(), sep='\\n')"


def wrapper_command_in_a_new_process(env):
    proc = subprocess.run([sys.executable, "-c", PRINT_WRAPPER_COMMAND], env=env, capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@NEEDS_CC
def test_the_c_wrapper_is_built_once_into_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("FLUXMPI_CACHE", str(cache))
    first = wrapper_command()
    assert len(first) == 1
    binary = first[0]
    assert os.path.dirname(os.path.dirname(binary)) == str(cache / "rank-wrapper")
    assert len(os.path.basename(os.path.dirname(binary))) == 16  # the hash of source, compiler and machine
    assert os.listdir(os.path.dirname(binary)) == [BINARY_NAME]  # no temporaries left
    built = os.stat(binary)
    assert wrapper_command() == first
    # Another process finds it in the cache rather than compiling again.
    assert wrapper_command_in_a_new_process(dict(os.environ)) == first
    after = os.stat(binary)
    assert (after.st_ino, after.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    assert os.listdir(os.path.dirname(binary)) == [BINARY_NAME]


@NEEDS_CC
def test_builders_at_the_same_time_share_one_binary(tmp_path):
    """Ranks or workers starting together with an empty cache: each compiles, one rename wins, all runs work."""
    env = dict(os.environ, FLUXMPI_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", PRINT_WRAPPER_COMMAND], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outputs = [p.communicate(timeout=TIMEOUT)[0].splitlines() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert len({tuple(o) for o in outputs}) == 1 and len(outputs[0]) == 1
    binary = outputs[0][0]
    assert os.listdir(os.path.dirname(binary)) == [BINARY_NAME]
    out = tmp_path / "out"
    proc = subprocess.run([binary, "--out", str(out), "/bin/true"], env=clean_env(PMI_RANK="0", PMI_SIZE="1"),
                          capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert only_record(out, task="0")[1].app == "wrapper"


def sh_prefix():
    return ["/bin/sh", str(WRAPPER_PATH)]


def test_without_a_compiler_the_sh_wrapper_is_used(tmp_path, monkeypatch, caplog):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("FLUXMPI_CACHE", str(tmp_path / "cache"))
    with caplog.at_level("WARNING", logger="fluxmpi.rank_wrapper"):
        assert wrapper_command() == sh_prefix()
        assert wrap(["/bin/true"], "t0", tmp_path / "out")[:2] == sh_prefix()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "no C compiler (cc, gcc, mpicc) on PATH" in warnings[0].getMessage()
    assert not (tmp_path / "cache").exists()
    monkeypatch.setenv("FLUXMPI_RANK_WRAPPER", "c")
    with pytest.raises(WrapperError, match="FLUXMPI_RANK_WRAPPER=c, but the C rank wrapper is not available"):
        wrapper_command()


@NEEDS_CC
def test_a_failed_build_falls_back_to_sh_and_is_not_retried(tmp_path, monkeypatch, caplog):
    """The cache cannot be created (a file is in the way): the build fails for real, once per process."""
    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    monkeypatch.setenv("FLUXMPI_CACHE", str(cache))
    with caplog.at_level("WARNING", logger="fluxmpi.rank_wrapper"):
        assert wrapper_command() == sh_prefix()
        cache.unlink()
        cache.mkdir()  # would work now, but this process remembers the failure
        assert wrapper_command() == sh_prefix()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "using the sh rank wrapper" in warnings[0].getMessage()
    assert str(cache) in warnings[0].getMessage()
    assert list(cache.iterdir()) == []
    # A new process tries again, and builds.
    (binary,) = wrapper_command_in_a_new_process(dict(os.environ))
    assert binary.startswith(f"{cache}/rank-wrapper/")


def test_FLUXMPI_RANK_WRAPPER_sh_chooses_the_sh_wrapper(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXMPI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FLUXMPI_RANK_WRAPPER", "sh")
    assert wrapper_command() == sh_prefix()
    cmd = wrap(["/bin/true"], "t0", tmp_path / "out")
    assert cmd[:2] == sh_prefix()
    assert not (tmp_path / "cache").exists()  # nothing was built
    proc = subprocess.run(cmd, env=clean_env(PMI_RANK="0", PMI_SIZE="1"), capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert only_record(tmp_path / "out")[0]["app"] == "wrapper"


def test_an_unknown_FLUXMPI_RANK_WRAPPER_is_refused(monkeypatch):
    monkeypatch.setenv("FLUXMPI_RANK_WRAPPER", "perl")
    with pytest.raises(WrapperError, match="FLUXMPI_RANK_WRAPPER='perl' is not a rank wrapper"):
        wrap(["/bin/true"], "t0", "out")
