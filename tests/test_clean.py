"""`fluxmpi clean`: removes exactly what runs listed in their manifest.json, keeps everything else."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fluxmpi import clean
from fluxmpi.cli.clean import clean_command
from fluxmpi.rundir import RunDir


def _fake_run(root: Path, name: str = "20260101-000000-htex", foreign: bool = True) -> Path:
    """A run directory as run_tasks lays it out, with the manifest written by the runner's own function."""
    wd = (root / "fluxmpi-runs" / name).absolute()
    RunDir.at(wd).create()       # the directories and the manifest, as the runner makes them
    (wd / "runinfo" / "000").mkdir(parents=True)
    (wd / "records" / "t0.0.json").write_text("{}\n")
    (wd / "bin" / "mpi_hello").write_bytes(b"\0" * 4096)
    (wd / "runinfo" / "000" / "parsl.log").write_text("log\n")
    (wd / "run.json").write_text("{}\n")
    if foreign:
        (wd / "my-notes.txt").write_text("keep me\n")
    return wd


def test_dry_run_lists_exactly_what_the_run_created_and_removes_nothing(tmp_path):
    wd = _fake_run(tmp_path)
    before = sorted(p for p in wd.rglob("*"))
    plans, problems = clean.clean(dry_run=True, cwd=tmp_path)
    assert problems == [] and len(plans) == 1
    removed = {item.path for item in plans[0].remove}
    assert removed == {wd / "records", wd / "bin", wd / "tasks", wd / "runinfo", wd / "run.json", wd / "manifest.json"}
    assert plans[0].keep == [wd / "my-notes.txt"]
    assert sorted(p for p in wd.rglob("*")) == before
    text = clean.render(plans, dry_run=True, base=tmp_path)
    assert "would remove fluxmpi-runs/20260101-000000-htex/bin/ (directory, 1 file, 4.0 KB): compiled apps" in text
    assert "Parsl run directory" in text and "task outputs" in text
    assert "kept fluxmpi-runs/20260101-000000-htex/my-notes.txt: not created by the run" in text


def test_clean_removes_the_run_and_keeps_a_foreign_file(tmp_path):
    wd = _fake_run(tmp_path)
    beside = tmp_path / "fluxmpi-runs" / "README"
    beside.write_text("not a run\n")
    plans, problems = clean.clean(cwd=tmp_path)
    assert problems == []
    assert sorted(p.name for p in wd.iterdir()) == ["my-notes.txt"]
    assert (wd / "my-notes.txt").read_text() == "keep me\n"
    assert beside.exists()


def test_a_run_directory_goes_once_empty(tmp_path):
    wd = _fake_run(tmp_path, foreign=False)
    clean.clean(cwd=tmp_path)
    assert not wd.exists()
    assert (tmp_path / "fluxmpi-runs").exists()       # made by no manifest: kept


def test_paths_outside_the_run_are_refused(tmp_path):
    wd = _fake_run(tmp_path, foreign=False)
    victim = tmp_path / "precious.txt"
    victim.write_text("x")
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    (wd / "link").symlink_to(outside)
    data = json.loads((wd / "manifest.json").read_text())
    data["created"] += [str(victim), "../precious.txt", "records/..", str(wd), "link"]
    (wd / "manifest.json").write_text(json.dumps(data))
    plans, _ = clean.clean(cwd=tmp_path)
    refused = "\n".join(plans[0].refused)
    assert str(victim) in refused and "../precious.txt" in refused and "records/.." in refused
    assert str(wd) in refused
    assert victim.exists() and outside.is_dir()     # the listed link went, never what it points to
    assert not wd.exists()


def test_a_moved_run_is_cleaned_where_it_is_now(tmp_path):
    wd = _fake_run(tmp_path, foreign=False)
    moved = tmp_path / "archive" / wd.name
    moved.parent.mkdir()
    wd.rename(moved)
    plans, _ = clean.clean([moved], dry_run=True)
    assert {i.path for i in plans[0].remove} >= {moved / "records", moved / "bin", moved / "run.json"}
    clean.clean([moved])
    assert not moved.exists()


def test_damaged_manifest_and_running_owner_are_skipped(tmp_path):
    bad = _fake_run(tmp_path, "bad")
    (bad / "manifest.json").write_text("{not json")
    busy = _fake_run(tmp_path, "busy")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        data = json.loads((busy / "manifest.json").read_text())
        data.update(pid=sleeper.pid, host=socket.gethostname())
        (busy / "manifest.json").write_text(json.dumps(data))
        plans, _ = clean.clean(cwd=tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    reasons = {p.run_dir.name: p.skipped for p in plans}
    assert "not readable JSON" in reasons["bad"]
    assert f"still going (pid {sleeper.pid}" in reasons["busy"]
    assert (bad / "records").exists() and (busy / "records").exists()


def test_cli_dry_run_then_clean(tmp_path, monkeypatch):
    wd = _fake_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    dry = runner.invoke(clean_command, ["--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("would remove") == 7           # 6 items and the summary line
    assert (wd / "records").exists()
    done = runner.invoke(clean_command, [])
    assert done.exit_code == 0 and "removed 6 item(s)" in done.output
    again = runner.invoke(clean_command, [])
    assert again.exit_code == 0 and "no runs found" in again.output
    missing = runner.invoke(clean_command, ["no-such-dir"])
    assert missing.exit_code == 2 and "no-such-dir: no such file or directory" in missing.output


def test_bench_directories_are_searched_at_any_depth(tmp_path):
    run = _fake_run(tmp_path / "fluxmpi-bench" / "20260101" / "uniform", "htex", foreign=False)
    (tmp_path / "fluxmpi-bench" / "20260101" / "results.json").write_text("{}")
    plans, _ = clean.clean(dry_run=True, cwd=tmp_path)
    assert [p.run_dir for p in plans] == [run]


@pytest.mark.cluster
def test_clean_after_a_real_run(cluster, tmp_path, monkeypatch):
    """A real run through Parsl on the local cluster, then clean: only what it made goes."""
    from fluxmpi.runner import run_tasks
    from fluxmpi.site import Site
    from fluxmpi.spec import MPITaskSpec

    monkeypatch.chdir(tmp_path)
    site = Site.from_local_cluster(cluster)
    saved = dict(os.environ)
    try:
        result = run_tasks("htex", site, [MPITaskSpec(nodes=2, ranks_per_node=1)], app="c", nodes_per_block=2,
                           task_timeout=120, run_timeout=300)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    wd = Path(result.workdir)
    assert wd.parent == tmp_path / "fluxmpi-runs" and result.ok, result.placement_report
    made = sorted(wd.iterdir())
    (wd / "keep.me").write_text("mine")
    plans, _ = clean.clean(dry_run=True, cwd=tmp_path)
    assert sorted(i.path for i in plans[0].remove) == made     # exactly what the run created
    clean.clean(cwd=tmp_path)
    assert sorted(wd.iterdir()) == [wd / "keep.me"]
