"""Warm holds: durations, the hold script's watchdog (run for real with bash), and holds on the local cluster,
including the one that matters most: a hold whose owner is killed with SIGKILL goes away by itself."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fluxmpi import slurm, warm
from fluxmpi.cli.warm import warm_command

REPO = Path(__file__).resolve().parent.parent


# --- durations ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("10m", 600), ("1h30m", 5400), ("2d", 172800), ("01:30:00", 5400), ("10:00", 600), (45, 45),
])
def test_durations_are_read_with_their_unit(text, seconds):
    assert slurm.parse_duration(text) == seconds


@pytest.mark.parametrize("text, fragment", [
    ("10", "'10' has no unit"), ("ten minutes", "'ten minutes' is not understood"), ("0s", "out of range"),
    ("8d", "out of range"), ("1:75", "below 60"),
])
def test_bad_durations_name_the_value(text, fragment):
    with pytest.raises(slurm.DurationError, match=fragment):
        slurm.parse_duration(text)


def test_sbatch_time_limit_comes_after_the_scripts_own_limit():
    # Slurm counts whole minutes: the limit is rounded up, with room for the script to end first.
    assert slurm.sbatch_minutes(20) == 1
    assert slurm.sbatch_minutes(60) == 2
    assert slurm.sbatch_minutes(600) == 11


# --- the hold script's watchdog, run by bash on this machine (no Slurm needed) ------------------------

def _run_script(tmp_path, *, duration=60, owner_timeout=4, beat_text="1 owner\n", keep_beating=False,
                remove_after=None):
    beat = tmp_path / "x.beat"
    if beat_text is not None:
        beat.write_text(beat_text)
    script = tmp_path / "hold.sh"
    script.write_text(warm.hold_script(beat, duration, owner_timeout, poll=1))
    start = time.monotonic()
    proc = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    count = 1
    while proc.poll() is None and time.monotonic() - start < 60:
        time.sleep(0.5)
        if keep_beating and beat.exists():
            count += 1
            beat.write_text(f"{count} owner\n")
        if remove_after is not None and time.monotonic() - start > remove_after:
            beat.unlink(missing_ok=True)
    out, _ = proc.communicate(timeout=10)
    return proc.returncode, out, time.monotonic() - start, beat


def test_script_ends_the_hold_when_the_owner_stops_beating(tmp_path):
    rc, out, took, beat = _run_script(tmp_path, owner_timeout=4)
    assert rc == 0 and "owner silent for 4s" in out
    assert 3 <= took < 15           # whole seconds of bash's $SECONDS; generous above: the machine is shared
    assert not beat.exists()        # nobody is left to clean up after an abandoned hold


def test_script_holds_while_the_owner_beats_until_its_duration(tmp_path):
    rc, out, took, beat = _run_script(tmp_path, duration=7, owner_timeout=3, keep_beating=True)
    assert rc == 0 and "duration of 7s over" in out
    # bash's $SECONDS counts whole seconds from its start, so the script may end up to 1 s early; what matters is
    # that it outlived the 3 s owner timeout because the beats kept it.
    assert 6 <= took < 15


def test_script_ends_when_the_heartbeat_is_removed(tmp_path):
    rc, out, took, _ = _run_script(tmp_path, owner_timeout=30, keep_beating=True, remove_after=2)
    assert rc == 0 and "released" in out and took < 10


def test_script_refuses_a_heartbeat_it_cannot_see(tmp_path):
    rc, out, took, _ = _run_script(tmp_path, beat_text=None)
    assert rc == 2 and "not shared with the compute nodes" in out and "FLUXMPI_WARM_DIR" in out
    assert took < 8


def test_heartbeat_thread_changes_the_file(tmp_path):
    beat = warm._Heartbeat(tmp_path / "h.beat", interval=0.2)
    try:
        first = (tmp_path / "h.beat").read_text()
        time.sleep(0.7)
        assert (tmp_path / "h.beat").read_text() != first
        assert f"pid {os.getpid()}" in first
    finally:
        beat.stop()


@pytest.mark.parametrize("kw, fragment", [
    ({"nodes": 0}, "nodes 0"), ({"nodes": True}, "nodes True"), ({"nodes": 2, "owner_timeout": 1}, "owner timeout 1"),
    ({"nodes": 2, "duration": "5"}, "'5' has no unit"),
])
def test_bad_hold_input_is_refused_before_submitting(kw, fragment, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))        # no sbatch reachable: refusing must come first
    with pytest.raises(warm.WarmError, match=fragment):
        warm.start_hold(directory=tmp_path, **kw)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_bad_combinations():
    runner = CliRunner()
    result = runner.invoke(warm_command, ["--release", "-N", "2"])
    assert result.exit_code == 2 and "--release ends holds; it takes no -N" in result.output
    result = runner.invoke(warm_command, [])
    assert result.exit_code == 2 and "give -N NODES" in result.output
    result = runner.invoke(warm_command, ["-N", "2", "--for", "30"])
    assert result.exit_code == 2 and "'30' has no unit" in result.output


# --- on the local cluster ---------------------------------------------------------------------------

def _warm_cli(cluster, *args, warm_dir):
    """`fluxmpi warm ...` as its own process (the command object, so it works before main wires it)."""
    code = "from fluxmpi.cli.warm import warm_command; warm_command(prog_name='fluxmpi warm')"
    env = {**os.environ, "FLUXMPI_WARM_DIR": str(warm_dir), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, "--cluster-name", cluster.layout.name, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _job_id(proc) -> str:
    line = proc.stdout.readline().strip()
    assert line.isdigit(), (line, proc.stderr.read() if proc.poll() is not None else "")
    return line


def _wait_state(cluster, job_id, states, timeout):
    deadline = time.monotonic() + timeout
    state = None
    while time.monotonic() < deadline:
        state = slurm.job_state(job_id, cluster.env())
        if state in states:
            return state, timeout - (deadline - time.monotonic())
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {state} after {timeout}s (wanted {states})")


@pytest.mark.cluster
def test_hold_api_warms_and_releases(cluster, tmp_path):
    with warm.warm_nodes(2, "2m", env=cluster.env(), directory=tmp_path) as hold:
        assert hold.wait_warm(60) >= 0
        assert len(slurm.node_states(hold.hostlist, cluster.env())) == 2
        _wait_state(cluster, hold.job_id, {"RUNNING"}, 60)
        assert hold.release_when_warm(30) is True
        assert hold.state() not in slurm.ACTIVE_STATES
    # Released before the block: nothing of the hold is left, on Slurm or on disk.
    assert list(tmp_path.iterdir()) == []
    assert hold.problem is None


@pytest.mark.cluster
def test_killed_owner_leaves_no_hold(cluster, tmp_path):
    owner_timeout = 8
    proc = _warm_cli(cluster, "-N", "2", "--for", "10m", "--owner-timeout", str(owner_timeout), warm_dir=tmp_path)
    try:
        job_id = _job_id(proc)
        _wait_state(cluster, job_id, {"RUNNING"}, 90)
        # While the owner lives the hold stays, well past the owner timeout.
        time.sleep(owner_timeout + 4)
        assert slurm.job_state(job_id, cluster.env()) == "RUNNING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    killed = time.monotonic()
    _wait_state(cluster, job_id, {"COMPLETED", "CANCELLED", None}, owner_timeout + 20)
    gone_after = time.monotonic() - killed
    assert gone_after <= owner_timeout + 2 * warm.POLL_INTERVAL + 5, gone_after
    assert list(tmp_path.glob("*.beat")) == []       # the hold removed the heartbeat it no longer needs


@pytest.mark.cluster
def test_hold_ends_at_its_duration_with_the_owner_alive(cluster, tmp_path):
    start = time.monotonic()
    proc = _warm_cli(cluster, "-N", "1", "--for", "12s", warm_dir=tmp_path)
    job_id = _job_id(proc)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 0, err
    assert 12 <= took < 40, took
    assert "ended" in err
    assert slurm.job_state(job_id, cluster.env()) not in slurm.ACTIVE_STATES
    assert list(tmp_path.iterdir()) == []


@pytest.mark.cluster
def test_release_from_another_process_ends_the_foreground_hold(cluster, tmp_path):
    proc = _warm_cli(cluster, "-N", "2", "--for", "5m", warm_dir=tmp_path)
    try:
        job_id = _job_id(proc)
        _wait_state(cluster, job_id, {"RUNNING"}, 90)
        result = CliRunner().invoke(warm_command, ["--release", "--cluster-name", cluster.layout.name])
        assert result.exit_code == 0, result.output
        assert f"released warm hold {job_id}" in result.output
        assert slurm.job_state(job_id, cluster.env()) not in slurm.ACTIVE_STATES
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert f"warm hold {job_id} ended" in err
    finally:
        if proc.poll() is None:
            proc.kill()
    # The nodes are free for the next job right away.
    assert cluster.run(["srun", "-N2", "true"], timeout=30).returncode == 0
    result = CliRunner().invoke(warm_command, ["--release", "--job", "999999", "--cluster-name",
                                               cluster.layout.name])
    assert result.exit_code == 1 and "999999 are not active warm holds" in result.output


@pytest.mark.parametrize("state, up", [
    ("idle", True), ("mixed", True), ("allocated", True), ("idle~", False), ("mixed#", False), ("idle%", False),
    ("idle*", False), ("down", False), ("drained", False), ("", False),
])
def test_only_registered_nodes_count_as_warm(state, up):
    # sinfo's suffixes: ~ powered down, # powering up, % powering down, * not responding.
    assert slurm.powered_up(state) is up
