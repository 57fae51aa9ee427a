"""`fluxmpi run -- CMD` and `fluxmpi run --tasks FILE`: the user's own programs from the command line.

Bad input is refused before anything is submitted (no cluster is needed for that: the checks run before one is
asked for); on the local cluster, the user's program runs on every path, each task's output in its own files,
a failing task named with its rank and node while the others finish, and --resume reruns only what did not.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import REPO

from fluxmpi.cli import main

# Never booted: the refusals below must come before any cluster is looked for.
NO_CLUSTER = ["--cluster-name", "fxnever"]


def run_cli(*args):
    return CliRunner().invoke(main, ["run", *NO_CLUSTER, *args])


BAD_FILES = {
    "unknown key": ("tasks:\n  - name: a\n    command: ./app\n    nodez: 2\n", ["task 1 'a'", "nodez", "nodes"]),
    "missing command": ("tasks:\n  - name: a\n    nodes: 2\n", ["'a'", "command"]),
    "ranks not splitting": ("tasks:\n  - name: a\n    command: ./app\n    nodes: 3\n    ranks: 4\n",
                            ["'a'", "ranks", "does not split evenly"]),
    "duplicate names": ("tasks:\n  - {name: a, command: ./x}\n  - {name: a, command: ./y}\n", ["'a'", "name"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_task_files_are_refused_before_anything_is_submitted(case, tmp_path):
    text, named = BAD_FILES[case]
    (tmp_path / "tasks.yaml").write_text(text)
    result = run_cli("--tasks", str(tmp_path / "tasks.yaml"))
    assert result.exit_code == 2, result.output
    for word in named:
        assert word in result.output, (word, result.output)
    assert "booting" not in result.output


@pytest.mark.cluster
def test_a_task_bigger_than_the_cluster_is_refused_naming_the_task(cluster, tmp_path):
    (tmp_path / "tasks.yaml").write_text("tasks:\n  - {name: small, command: ./x, nodes: 1}\n"
                                         "  - {name: huge, command: ./x, nodes: 9}\n")
    result = CliRunner().invoke(main, ["run", "--cluster-name", cluster.layout.name, "--tasks",
                                       str(tmp_path / "tasks.yaml")])
    assert result.exit_code == 2, result.output
    assert "'huge'" in result.output and "nodes" in result.output
    assert "via" not in result.output          # nothing was started


@pytest.mark.parametrize("args, named", [
    (["--tasks", "t.yaml", "--", "./app"], "not both"),
    (["--app", "mpi4py", "--", "./app"], "--app is for the bundled app"),
    (["--tasks", "t.yaml", "-N", "2"], "--nodes does not go with --tasks"),
    (["-N", "2", "--", ""], "empty command"),
])
def test_mixing_a_command_with_the_bundled_apps_options_is_refused(args, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.yaml").write_text("tasks:\n  - {name: a, command: ./x}\n")
    result = run_cli(*args)
    assert result.exit_code == 2 and named in result.output, result.output


# --- on the local cluster -----------------------------------------------------------------------------------

def fluxmpi_run(cluster, *args, timeout=600):
    env = {**cluster.environ(), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "fluxmpi.cli", "run", "--cluster-name", cluster.layout.name,
                           *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def mpitest(cluster, tmp_path_factory):
    """The users' test program (examples/mpitest.c), compiled here: the nodes share this filesystem."""
    exe = tmp_path_factory.mktemp("bin") / "mpitest"
    subprocess.run(["mpicc", "-O2", "-o", str(exe), str(REPO / "examples" / "mpitest.c")], check=True, timeout=120)
    return exe


# One path of each family here: tests/test_user_workflows.py runs a user's program on all five.
PATHS = ["htex", pytest.param("flux-jobs", marks=pytest.mark.flux)]


@pytest.mark.cluster
@pytest.mark.parametrize("path", PATHS)
def test_the_users_program_runs_on_every_path_with_its_output_in_files(cluster, mpitest, tmp_path, path):
    work = tmp_path / "run"
    proc = fluxmpi_run(cluster, "--path", path, "-N", "2", "--ranks-per-node", "2", "--repeats", "2",
                       "--workdir", str(work), "--", str(mpitest))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((work / "run.json").read_text())
    assert run["ok"] and [t["command"] for t in run["tasks"]] == [[str(mpitest)]] * 2
    for tid in ("t0", "t1"):
        lines = (work / "tasks" / f"{tid}.out").read_text()
        assert lines.count("rank ") == 4, lines       # the program's own line, once per rank
        assert len({r["host"] for r in map(json.loads, [p.read_text() for p in
                                                        (work / "records").glob(f"{tid}.*.json")])}) == 2
    assert "TASK" in proc.stdout and "t0" in proc.stdout      # the placement table


@pytest.mark.cluster
def test_a_task_file_ensemble_names_the_failing_rank_and_node_and_the_rest_finish(cluster, mpitest, tmp_path):
    (tmp_path / "ensemble.yaml").write_text(f"""
defaults: {{ranks_per_node: 1}}
tasks:
  - {{name: one, command: {mpitest}, nodes: 1}}
  - {{name: two, command: {mpitest}, nodes: 2, repeats: 2}}
  - {{name: three, command: {mpitest}, nodes: 3}}
  - name: broken
    nodes: 2
    command: [sh, -c, 'if [ "$SLURM_PROCID" = 1 ]; then echo "rank 1 gives up" >&2; exit 5; fi; {mpitest}']
""")
    work = tmp_path / "run"
    proc = fluxmpi_run(cluster, "--path", "htex", "--tasks", str(tmp_path / "ensemble.yaml"), "--workdir", str(work))
    assert proc.returncode == 1, proc.stderr[-3000:]
    run = json.loads((work / "run.json").read_text())
    outcomes = {t["task"]: t for t in run["tasks"]}
    assert sorted(outcomes) == ["broken", "one", "three", "two.0", "two.1"]
    assert [n for n, t in outcomes.items() if not t["ok"]] == ["broken"]
    error = outcomes["broken"]["error"]
    assert "task broken" in error and "rank 1 on" in error, error
    node = error.split("rank 1 on ", 1)[1].split(":")[0]
    assert node in cluster.layout.node_names, error
    assert "rank 1 gives up" in (work / "tasks" / "broken.err").read_text()
    assert "task broken failed" in proc.stderr


@pytest.mark.cluster
def test_resume_after_ctrl_c_runs_only_the_unfinished_tasks(cluster, mpitest, tmp_path):
    tasks = tmp_path / "ensemble.yaml"
    # Slow in the first run (Ctrl-C comes while it runs), quick once the marker exists (the resumes): the command
    # text stays the same, which is what resume matches a finished task by.
    marker = tmp_path / "no-more-sleep"
    slow = f"[sh, -c, 'test -e {marker} || sleep 25; {mpitest}']"
    tasks.write_text(f"tasks:\n  - {{name: quick, command: {mpitest}, nodes: 2, ranks_per_node: 1}}\n"
                     f"  - {{name: slow, command: {slow}, nodes: 2, ranks_per_node: 1}}\n")
    work = tmp_path / "run"
    env = {**cluster.environ(), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "fluxmpi.cli", "run", "--cluster-name", cluster.layout.name, "--path", "htex",
            "--tasks", str(tasks), "--workdir", str(work)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (work / "tasks" / "quick.out").exists() or \
            "rank " not in _read(work / "tasks" / "quick.out"):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    time.sleep(2)                      # the quick task's result reaches run.json
    os.killpg(proc.pid, signal.SIGINT)        # as a terminal's Ctrl-C does: Parsl's interchange gets it too
    sent = time.monotonic()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    # Not the clean-up bound (60 s): the interchange was spared the Ctrl-C, so HTEX's shutdown did not wait on it.
    assert time.monotonic() - sent < 30, f"the run took {time.monotonic() - sent:.0f}s to end after Ctrl-C"
    first = json.loads((work / "run.json").read_text())
    assert [t["task"] for t in first["tasks"] if t["ok"]] == ["quick"], first["tasks"]
    marker.touch()
    again = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    final = json.loads((work / "run.json").read_text())
    assert {t["task"]: t["skipped"] for t in final["tasks"]} == {"quick": True, "slow": False}
    # A changed command under the same name is rerun: test_reliability_units.py (no third run here).


def _read(path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
