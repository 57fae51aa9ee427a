"""Compile and run the MPI apps on this one host (Open MPI; MPICH if installed), then read
their records with fluxmpi.placement. No cluster needed."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fluxmpi import mpi_apps
from fluxmpi.mpi_apps import (
    CompileError,
    MpiAppError,
    MpiCompilerNotFound,
    app_command,
    compile_c_app,
)
from fluxmpi.placement import check_task, parse_lines, read_records

NEEDS_OPENMPI = pytest.mark.skipif(
    shutil.which("mpicc") is None or shutil.which("mpirun") is None,
    reason="Open MPI's mpicc/mpirun not installed (apt-get install openmpi-bin libopenmpi-dev)",
)
NEEDS_MPICH = pytest.mark.skipif(
    shutil.which("mpicc.mpich") is None or shutil.which("mpiexec.mpich") is None,
    reason="MPICH's mpicc.mpich/mpiexec.mpich not installed (apt-get install mpich libmpich-dev)",
)
RUN_TIMEOUT = 180  # seconds for one mpirun of 4 ranks on 2 shared cores
FULL_KEYS = {"app", "task", "host", "rank", "size", "pid", "cpus", "gpus", "mpi_library",
             "t_start", "t_init", "t_end", "work"}
AFFINITY_KEYS = {"app", "task", "host", "rank", "size", "pid", "cpus"}


def ompi_env(**extra):
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.pop("FLUXMPI_TASK_ID", None)  # only the tests that set it may see it
    return env | extra


def run(cmd, env=None, timeout=RUN_TIMEOUT):
    proc = subprocess.run(cmd, env=env or ompi_env(), capture_output=True, text=True, timeout=timeout)
    return proc


def mpirun(np, cmd, **env):
    proc = run(["mpirun", "--oversubscribe", "-np", str(np), *cmd], env=ompi_env(**env))
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def command(app, c_binary, **kw):
    return app_command(app, c_binary=c_binary if app == "c" else None, **kw)


def check_records(parsed, app, task, np):
    assert parsed.problems == []
    placements = parsed.placements()
    assert list(placements) == [task]
    p = placements[task]
    assert check_task(p, nodes=1, ranks_per_node=np) == []
    assert sorted(r.rank for r in p.records) == list(range(np))
    assert len({r.pid for r in p.records}) == np
    for r in p.records:
        assert r.app == app and r.size == np
        assert r.cpus and r.cpus <= set(range(os.cpu_count()))
        assert r.t_start <= r.t_init <= r.t_end
        assert "Open MPI" in r.mpi_library
    return p


@NEEDS_OPENMPI
@pytest.mark.parametrize("app", ["c", "mpi4py"])
def test_out_dir_gets_one_file_per_rank(app, c_binary, tmp_path):
    out = tmp_path / "records" / "nested"  # the apps create missing directories
    mpirun(4, command(app, c_binary, task="t1", out_dir=out))
    assert sorted(f.name for f in out.iterdir()) == [f"t1.{r}.json" for r in range(4)]  # no temporaries left
    check_records(read_records(out), app, "t1", 4)
    for f in out.iterdir():
        assert set(json.loads(f.read_text())) == FULL_KEYS


@NEEDS_OPENMPI
@pytest.mark.parametrize("app", ["c", "mpi4py"])
def test_stdout_gets_one_line_per_rank_and_sleep_lasts(app, c_binary):
    proc = mpirun(4, command(app, c_binary, task="sleepy", out_dir=None, sleep=0.3),
                  CUDA_VISIBLE_DEVICES="0,1")
    parsed = parse_lines(proc.stdout.splitlines(), source="stdout", ignore_non_json=True)
    p = check_records(parsed, app, "sleepy", 4)
    for r in p.records:
        assert r.t_end - r.t_init >= 0.3
        assert r.work == {"kind": "sleep", "seconds": 0.3}
        assert r.gpus == {"CUDA_VISIBLE_DEVICES": "0,1"}


@NEEDS_OPENMPI
@pytest.mark.parametrize("app", ["c", "mpi4py"])
def test_affinity_gives_the_reduced_record_and_env_task_id(app, c_binary):
    cmd = [a for a in command(app, c_binary, task="x", out_dir=None, affinity=True) if a not in ("--task", "x")]
    proc = mpirun(2, cmd, FLUXMPI_TASK_ID="from-env")
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2
    assert all(set(row) == AFFINITY_KEYS and row["task"] == "from-env" for row in rows)
    assert sorted(row["rank"] for row in rows) == [0, 1]


@NEEDS_OPENMPI
@pytest.mark.parametrize("app", ["c", "mpi4py"])
def test_busy_spins_for_the_requested_time(app, c_binary):
    proc = mpirun(1, command(app, c_binary, task="b", out_dir=None, busy=0.2))
    (row,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert row["work"] == {"kind": "busy", "seconds": 0.2}
    assert row["t_end"] - row["t_init"] >= 0.2


@NEEDS_OPENMPI
@pytest.mark.parametrize("app", ["c", "mpi4py"])
@pytest.mark.parametrize("args", [
    ["--sleep", "-1"],
    ["--busy", "abc"],
    ["--busy", "1", "--sleep", "1"],
    ["--task", "../escape"],
    ["--sleep"],
    ["--no-such-option"],
    ["positional"],
])
def test_bad_options_exit_2_with_usage(app, args, c_binary):
    base = [str(c_binary)] if app == "c" else [sys.executable, str(mpi_apps.python_app())]
    proc = run(base + args)
    assert proc.returncode == 2, proc.stderr
    assert "usage:" in proc.stderr and "error" in proc.stderr
    assert proc.stdout == ""


@NEEDS_OPENMPI
@pytest.mark.parametrize("app", ["c", "mpi4py"])
def test_bad_task_id_from_env_exits_2(app, c_binary):
    base = [str(c_binary)] if app == "c" else [sys.executable, str(mpi_apps.python_app())]
    proc = run(base, env=ompi_env(FLUXMPI_TASK_ID="a/b"))
    assert proc.returncode == 2 and "FLUXMPI_TASK_ID" in proc.stderr


@NEEDS_MPICH
def test_mpich_build_runs_under_mpiexec_mpich(tmp_path):
    binary = compile_c_app(tmp_path, mpicc="mpicc.mpich", name="mpi_hello_mpich")
    out = tmp_path / "records"
    cmd = app_command("c", task="mpich", out_dir=out, c_binary=binary)
    proc = run(["mpiexec.mpich", "-n", "2", *cmd], env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    parsed = read_records(out)
    assert parsed.problems == []
    p = parsed.placements()["mpich"]
    assert check_task(p, nodes=1, ranks_per_node=2) == []
    assert all("MPICH" in r.mpi_library and r.size == 2 for r in p.records)


# ---- locating, compiling, command lines ----------------------------------------


def test_sources_are_found_in_the_checkout():
    assert mpi_apps.c_source().is_file() and mpi_apps.python_app().is_file()
    assert mpi_apps.apps_dir().name in ("mpi_apps", "_mpi_apps")


def test_missing_compiler_names_the_debian_package(tmp_path):
    with pytest.raises(MpiCompilerNotFound, match=r"apt-get install mpich libmpich-dev"):
        compile_c_app(tmp_path, mpicc="mpicc.mpich", env={"PATH": str(tmp_path)})
    assert not any(tmp_path.iterdir())


def test_failing_compiler_reports_its_stderr(tmp_path):
    # A real program standing in for a compiler that rejects the source.
    failing = tmp_path / "failing-cc"
    failing.write_text("#!/bin/sh\necho 'mpi_hello.c:1: error: no MPI here' >&2\nexit 1\n")
    failing.chmod(0o755)
    with pytest.raises(CompileError, match=r"(?s)exit 1.*no MPI here"):
        compile_c_app(tmp_path / "bin", mpicc=str(failing))
    assert list((tmp_path / "bin").iterdir()) == []  # no half-built binary left


def test_compiler_wait_is_bounded(tmp_path):
    slow = tmp_path / "slow-cc"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    with pytest.raises(CompileError, match=r"did not finish compiling mpi_hello.c within 0.5 s"):
        compile_c_app(tmp_path / "bin", mpicc=str(slow), timeout=0.5)


def test_app_command_builds_both_apps():
    assert app_command("c", task="t1", out_dir="/r", c_binary="/b/mpi_hello", sleep=1) == [
        "/b/mpi_hello", "--task", "t1", "--sleep", "1.0", "--out", "/r"]
    assert app_command("mpi4py", task="t2", out_dir=None, busy=0.5, affinity=True, python="py") == [
        "py", str(mpi_apps.python_app()), "--task", "t2", "--affinity", "--busy", "0.5"]


@pytest.mark.parametrize("kw, message", [
    (dict(app="fortran"), "unknown app 'fortran'"),
    (dict(app="c"), "the C app needs c_binary"),
    (dict(task="a b"), "invalid task id 'a b'"),
    (dict(task=".hidden"), "invalid task id '.hidden'"),
    (dict(sleep=-0.1), "sleep must not be negative"),
    (dict(busy=float("nan")), "busy must be a finite number"),
    (dict(busy=1, sleep=1), "busy and sleep exclude each other"),
    (dict(out_dir=""), "out_dir must be a directory path or None"),
])
def test_app_command_rejects_bad_input(kw, message):
    args = dict(app="mpi4py", task="t1", out_dir=None) | kw
    with pytest.raises(MpiAppError, match=message.replace("(", r"\(")):
        app_command(args.pop("app"), **args)


def test_installed_layout_prefers_the_shipped_copy(tmp_path):
    # Lay the package out as the wheel does (sources under fluxmpi/_mpi_apps) away from the checkout.
    site = tmp_path / "site"
    shutil.copytree(Path(mpi_apps.__file__).parent, site / "fluxmpi",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(mpi_apps.apps_dir(), site / "fluxmpi" / "_mpi_apps")
    code = "from fluxmpi import mpi_apps; print(mpi_apps.c_source()); print(mpi_apps.python_app())"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(site)),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    shipped = site / "fluxmpi" / "_mpi_apps"
    assert proc.stdout.split() == [str(shipped / "mpi_hello.c"), str(shipped / "mpi_hello.py")]


@NEEDS_OPENMPI
def test_a_launcher_exit_0_without_every_rank_s_record_is_a_failed_task(tmp_path, monkeypatch):
    """A real mpirun that exits 0 for ranks that wrote nothing (`true`) fails the task; the same program behind
    the rank wrapper, whose every rank leaves a record, passes."""
    from fluxmpi import apps
    from fluxmpi.rank_wrapper import wrap
    from fluxmpi.spec import MPITaskSpec

    for name, value in ompi_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(apps, "RECORD_GRACE", 1.0)
    spec = MPITaskSpec(nodes=1, ranks_per_node=2).to_dict()
    with pytest.raises(apps.MPITaskFailed, match="2 of 2 ranks left no record"):
        apps.run_mpi_task(spec, "mpiexec-openmpi", ["true"], "t0", RUN_TIMEOUT, records=str(tmp_path))
    result = apps.run_mpi_task(spec, "mpiexec-openmpi", wrap(["true"], "t1", tmp_path), "t1", RUN_TIMEOUT,
                               records=str(tmp_path))
    assert result["returncode"] == 0 and sorted(p.name for p in tmp_path.glob("t1.*")) == ["t1.0.json", "t1.1.json"]
