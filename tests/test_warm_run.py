"""`fluxmpi run --warm N` / `fluxmpi bench --warm N`: the warm hold is handed over right before the blocks are
submitted (runner's before_load hook), never for refused input, and its nodes are free when the blocks arrive.

The cluster tests use the session cluster; the elastic one boots its own 2-node elastic cluster
($FLUXMPI_TEST_CLUSTER + "w") and removes it at the end, asserting nothing is left.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TEST_CLUSTER_NAME, cluster_unavailable_reason

from fluxmpi import slurm, warm
from fluxmpi.bench import report, warmth
from fluxmpi.cli.bench import bench as bench_command
from fluxmpi.cli.run import run as run_command
from fluxmpi.cluster import ClusterLayout, LocalCluster, elastic
from fluxmpi.runner import run_tasks
from fluxmpi.site import Site
from fluxmpi.spec import MPITaskSpec, SpecError

REPO = Path(__file__).resolve().parent.parent


# --- the hook is never called for refused input (no Slurm needed: refusing comes first) ---------------------

SITE = Site(name="nowhere", partition="none", nodes=2, cores_per_node=2)


@pytest.mark.parametrize("case, kw, fragment", [
    ("task larger than the site", {"specs": [MPITaskSpec(nodes=3, ranks_per_node=1)]}, "3"),
    ("bad walltime", {"walltime": "soon"}, "soon"),
    ("resume without a workdir", {"resume": True}, "resume needs the workdir"),
    ("missing app binary", {"app_binary": "/nonexistent/mpi_hello"}, "/nonexistent/mpi_hello"),
])
def test_before_load_is_not_called_for_refused_input(case, kw, fragment, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))       # no Slurm command reachable: nothing may be submitted
    calls = []
    kw = {"specs": [MPITaskSpec(nodes=2, ranks_per_node=1)], **kw}
    with pytest.raises(SpecError, match=re.escape(fragment)):
        run_tasks("htex", SITE, kw.pop("specs"), before_load=lambda: calls.append(time.time()), **kw)
    assert calls == [], case


@pytest.mark.parametrize("value, available, fragment", [
    (0, 4, "--warm 0: give the number of nodes to warm, at least 1"),
    (-2, 4, "--warm -2"), (True, 4, "--warm True"), ("2", 4, "--warm '2'"),
    (5, 4, "--warm 5: partition 'debug' has 4 node(s); give --warm 1..4"),
])
def test_bad_warm_counts_name_the_value(value, available, fragment):
    with pytest.raises(warm.WarmError) as err:
        warm.check_warm_nodes(value, available, "partition 'debug'")
    assert fragment in str(err.value)
    assert warm.check_warm_nodes(4, 4, "partition 'debug'") == 4


@pytest.mark.parametrize("args, fragment", [
    (["--warm", "0"], "--warm 0: give the number of nodes to warm"),
    (["--warm", "2", "--warm-for", "10"], "'10' has no unit"),
    (["--warm-for", "5m"], "--warm-for goes with --warm N"),
    (["--warm", "2", "--walltime", "soon"], "soon"),
])
def test_run_refuses_bad_warm_options_before_any_cluster(args, fragment, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))       # neither sbatch nor a cluster boot could work: refusing is first
    result = CliRunner().invoke(run_command, ["-N", "2", "--ranks-per-node", "1", "--cluster-name", "fxwnone",
                                              *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output


@pytest.mark.parametrize("args, fragment", [
    (["--compare-warm"], "--compare-warm compares runs with and without --warm N: give --warm N too"),
    (["--warm", "5", "--cluster-nodes", "4"], "--warm 5: the bench (--cluster-nodes 4) has 4 node(s)"),
    (["--warm", "0"], "--warm 0"),
])
def test_bench_refuses_bad_warm_options_before_any_cluster(args, fragment, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(bench_command, ["--quick", "--paths", "htex", "--cluster-name", "fxwnone",
                                                "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert not (tmp_path / "out").exists()


def test_bench_runs_each_path_cold_then_warm_and_baselines_once():
    assert warmth.variants("htex", "path", 4, compare=True) == [None, 4]
    assert warmth.variants("htex", "path", 4, compare=False) == [4]
    assert warmth.variants("htex", "path", None, compare=False) == [None]
    assert warmth.variants("bare-srun", "baseline", 4, compare=True) == [None]


def _run_row(name, startup, warm):
    return {"name": name, "summary": {"startup": startup}, "warm": warm}


def test_report_puts_warm_and_cold_side_by_side():
    cold = {"warm": False, "nodes": 0, "powered_down_at_start": True}
    hot = {"warm": True, "nodes": 4, "powered_down_at_start": True, "hold_job": "7", "warm_after": 21.0,
           "released_after": 21.4, "problem": None}
    entry = {"runs": [_run_row("htex", 80.0, cold), _run_row("htex+warm", 50.0, hot),
                      {"name": "bare-srun", "summary": {"startup": 1.0}}]}
    text = "\n".join(report.render_warmth(entry))
    assert "| htex | none (cold) | yes | - | - | 80.0 |" in text
    assert "| htex+warm | 4 node(s), job 7 | yes | 21.0 | 21.4 | 50.0 |" in text
    assert "htex: warm 50.0 s vs cold 80.0 s: +30.0 s saved (38%)" in text
    assert "bare-srun" not in text                  # baselines are never warmed
    assert report.render_warmth({"runs": [{"name": "htex", "summary": {}}]}) == []


# --- on the local cluster ---------------------------------------------------------------------------

def _jobs_with_times(env: dict, job_ids: list[str]) -> dict[str, dict]:
    """squeue's view of finished and active jobs (Slurm keeps finished ones for MinJobAge; no accounting here)."""
    proc = slurm.run_slurm(["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i|%j|%T|%V|%S|%e|%N"],
                           env=env)
    out = {}
    for line in proc.stdout.splitlines():
        jid, name, state, submit, start, end, nodes = line.split("|")
        out[jid] = {"name": name, "state": state, "submit": submit, "start": start, "end": end, "nodes": nodes}
    return out


def _fluxmpi(*args, env: dict, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from fluxmpi.cli import main; main(prog_name='fluxmpi')", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def _cli_env(warm_dir: Path) -> dict:
    return {**os.environ, "FLUXMPI_WARM_DIR": str(warm_dir), "PYTHONPATH": str(REPO)}


def _warm_run(cluster, tmp_path, warm: int, nodes: int = 2) -> tuple[subprocess.CompletedProcess, dict, dict]:
    """`fluxmpi run --warm` on `cluster`; returns the process, run.json and squeue's view of its hold and blocks."""
    warm_dir = tmp_path / "warm"
    workdir = tmp_path / "run"
    proc = _fluxmpi("run", "--cluster-name", cluster.layout.name, "--cluster-nodes", str(cluster.layout.nodes),
                    "-N", str(nodes), "--ranks-per-node", "1", "-K", "2", "--warm", str(warm), "--warm-for", "5m",
                    "--workdir", str(workdir), env=_cli_env(warm_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    hold_id = re.search(r"warming \d+ node\(s\) with job (\d+)", proc.stderr)[1]
    run = json.loads((workdir / "run.json").read_text())
    jobs = _jobs_with_times(cluster.env(), [hold_id, *run["blocks"]])
    assert list(warm_dir.iterdir()) == []            # no heartbeat or hold output left behind
    return proc, run, {"hold": jobs[hold_id], "blocks": [{**jobs[b], "id": b} for b in run["blocks"]]}


@pytest.mark.cluster
def test_run_warm_releases_the_hold_before_the_blocks_are_submitted(cluster, tmp_path):
    proc, run, jobs = _warm_run(cluster, tmp_path, warm=cluster.layout.nodes)
    hold, blocks = jobs["hold"], jobs["blocks"]
    assert hold["name"] == warm.WARM_JOB_NAME and hold["state"] == "CANCELLED"
    assert f"{cluster.layout.nodes} node(s) warm" in proc.stderr and "released hold" in proc.stderr
    assert blocks, run
    for block in blocks:
        # Slurm's times have whole seconds: the hold had ended when the block was submitted, not just started.
        assert block["submit"] >= hold["end"], (hold, block)
        assert block["name"].startswith("parsl.")
    assert run["ok"] is True and len(run["tasks"]) == 2
    assert [j for j in slurm.jobs(name=warm.WARM_JOB_NAME, env=cluster.env()) if j.state in slurm.ACTIVE_STATES] == []


@pytest.mark.cluster
def test_before_load_runs_once_before_any_block_exists(cluster, tmp_path):
    site = Site.from_local_cluster(cluster)
    seen = []

    def hook():
        active = [j for j in slurm.jobs(env=site.env) if j.state in slurm.ACTIVE_STATES]
        seen.append((time.time(), active))
    result = run_tasks("htex", site, [MPITaskSpec(nodes=1, ranks_per_node=1)], workdir=tmp_path / "run",
                       before_load=hook, run_timeout=300)
    assert result.ok, result.failed
    assert len(seen) == 1
    called, active = seen[0]
    assert active == []                                # no block (and nothing else) was submitted yet
    assert result.t_start <= called <= result.t_loaded
    assert result.blocks                               # ... and the run's blocks came after it


@pytest.mark.cluster
def test_run_refuses_more_warm_nodes_than_the_partition_has(cluster, tmp_path):
    before = {j.job_id for j in slurm.jobs(env=cluster.env())}
    proc = _fluxmpi("run", "--cluster-name", cluster.layout.name, "--cluster-nodes", str(cluster.layout.nodes),
                    "-N", "2", "--ranks-per-node", "1", "--warm", str(cluster.layout.nodes + 1),
                    env=_cli_env(tmp_path), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert (f"--warm {cluster.layout.nodes + 1}: partition 'debug' of local:{cluster.layout.name} has "
            f"{cluster.layout.nodes} node(s)") in proc.stderr
    # Nothing was submitted. Not equality: jobs of earlier tests may age out of slurmctld meanwhile (MinJobAge).
    assert not {j.job_id for j in slurm.jobs(env=cluster.env())} - before


# --- on an elastic cluster: the blocks land on warm nodes --------------------------------------------

RESUME_DELAY = 6.0


@pytest.fixture(scope="module")
def elastic_cluster(claimed):
    reason = cluster_unavailable_reason()
    if reason:
        pytest.skip(reason)
    local = LocalCluster(ClusterLayout(name=(TEST_CLUSTER_NAME + "w")[:12], nodes=2, elastic=True,
                                       resume_delay=RESUME_DELAY, suspend_time=10))
    local.down()
    local.up()
    yield local
    local.down()
    assert local.leftovers() == []


def _batch_launched(cluster, job_id: str) -> float:
    """When a node's slurmd launched the batch job (its log), in seconds since the epoch."""
    for node in cluster.layout.node_names:
        log = cluster.layout.log(f"slurmd-{node}")
        for line in log.read_text(errors="replace").splitlines():
            if f"Launching batch job {job_id} " in line:
                return time.mktime(time.strptime(line[1:20], "%Y-%m-%dT%H:%M:%S"))
    raise AssertionError(f"no slurmd log says it launched batch job {job_id}")


@pytest.mark.cluster
def test_warm_blocks_start_at_once_on_powered_down_nodes(elastic_cluster, tmp_path):
    c = elastic_cluster
    elastic.power_down(c)
    proc, run, jobs = _warm_run(c, tmp_path, warm=2)
    hold, block = jobs["hold"], jobs["blocks"][0]
    took_warm = float(re.search(r"2 node\(s\) warm \(\S+\) (\d+\.\d)s after", proc.stderr)[1])
    assert took_warm >= RESUME_DELAY                  # the hold really powered them up
    assert block["submit"] >= hold["end"]
    # Cold, a batch job waits for the resume delay and Slurm's periodic check; warm, its script starts at once.
    submitted = time.mktime(time.strptime(block["submit"], "%Y-%m-%dT%H:%M:%S"))
    assert _batch_launched(c, block["id"]) - submitted <= 3
