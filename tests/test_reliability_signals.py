"""SIGTERM and Ctrl-C (SIGINT) of a running `fluxmpi run`: its Slurm jobs are cancelled, run.json keeps what
finished, and `--resume` runs only the rest. The command runs in a subprocess, as a user or a batch system
would run it, and gets the signal mid-run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parent.parent
TASKS = 4


def fluxmpi(cluster, *args, workdir: Path) -> subprocess.Popen:
    """`fluxmpi run` on the test cluster: TASKS one-node tasks, two at a time (a 2-node block), 4 s each."""
    argv = [sys.executable, "-c", "from fluxmpi.cli import main; main()", "run", "--cluster-name",
            cluster.layout.name, "-N", "1", "--ranks-per-node", "2", "--repeats", str(TASKS), "--app", "mpi4py",
            "--sleep", "4", "--nodes-per-block", "2", "--workdir", str(workdir), *args]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)   # its own process group, as a shell job has


def finished_tasks(workdir: Path) -> list[str]:
    try:
        data = json.loads((workdir / "run.json").read_text())
    except (OSError, ValueError):
        return []
    return [t["task"] for t in data["tasks"] if t["ok"]]


def active_jobs_of(cluster, workdir: Path) -> list[str]:
    """Jobs of this run (their batch scripts live under its workdir) that squeue lists as not yet over."""
    proc = cluster.run(["squeue", "-h", "-t", "PD,CF,R,CG,S", "-o", "%i|%o"], timeout=20)
    return [line.split("|")[0] for line in proc.stdout.splitlines() if str(workdir) in line]


def interrupt_after_first_task(cluster, proc: subprocess.Popen, workdir: Path, send) -> tuple[str, str, float]:
    deadline = time.monotonic() + 180
    while not finished_tasks(workdir):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no task finished within 180 s"
        time.sleep(0.3)
    assert active_jobs_of(cluster, workdir), "the run's block is not in squeue"
    send()
    t_sent = time.monotonic()
    out, err = proc.communicate(timeout=150)   # the clean-up is bounded (60 s Parsl + 30 s scancel)
    return out, err, time.monotonic() - t_sent


def test_sigterm_cancels_the_jobs_keeps_what_finished_and_resume_runs_the_rest(cluster, tmp_path):
    workdir = tmp_path / "run"
    proc = fluxmpi(cluster, workdir=workdir)
    out, err, took = interrupt_after_first_task(cluster, proc, workdir, lambda: proc.send_signal(signal.SIGTERM))
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted by SIGTERM" in err and "--resume" in err, err[-3000:]
    assert active_jobs_of(cluster, workdir) == [], "a block of the interrupted run is still in squeue"
    run = json.loads((workdir / "run.json").read_text())
    assert run["interrupted"] == "SIGTERM" and run["complete"]
    done = [t["task"] for t in run["tasks"] if t["ok"]]
    assert 1 <= len(done) < TASKS, run["tasks"]
    for task in done:   # every rank of a finished task left its record
        assert sorted(p.name for p in (workdir / "records").glob(f"{task}.*.json")) == [f"{task}.0.json",
                                                                                      f"{task}.1.json"]
    # A task whose ranks all ended while its result was still on the way back when the signal came is not in
    # run.json's finished ones, but its records show it ran to the end: --resume counts it as finished too.
    ran_out = [t["task"] for t in run["tasks"] if not t["ok"] and len(list(
        (workdir / "records").glob(f"{t['task']}.*.json"))) == 2]
    finished = sorted(done + ran_out)
    kept = {p: p.stat().st_mtime for t in finished for p in (workdir / "records").glob(f"{t}.*.json")}

    again = fluxmpi(cluster, "--resume", workdir=workdir)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert f"skipping {len(finished)} of {TASKS} task(s)" in err, err[-3000:]
    final = json.loads((workdir / "run.json").read_text())
    assert final["ok"] and not final["interrupted"]
    assert sorted(t["task"] for t in final["tasks"] if t["skipped"]) == finished
    assert all(p.stat().st_mtime == m for p, m in kept.items()), "a finished task was run again"


@pytest.mark.flux
def test_ctrl_c_on_the_flux_path_cancels_its_block(cluster, tmp_path):
    """Ctrl-C reaches the whole foreground process group (fluxmpi and what it started), not just fluxmpi."""
    workdir = tmp_path / "run"
    proc = fluxmpi(cluster, "--path", "flux", workdir=workdir)
    out, err, took = interrupt_after_first_task(cluster, proc, workdir,
                                                lambda: os.killpg(proc.pid, signal.SIGINT))
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted by SIGINT" in err, err[-3000:]
    assert active_jobs_of(cluster, workdir) == [], "the Flux block is still in squeue"
    run = json.loads((workdir / "run.json").read_text())
    assert run["interrupted"] == "SIGINT" and [t for t in run["tasks"] if t["ok"]]
