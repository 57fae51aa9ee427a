"""PBS Pro for real: the local cluster with OpenPBS (a server, scheduler and comm on the login side, a pbs_mom in
each of 2 node namespaces, 4 stand-in GPUs per node as PBS's ngpus resource), and fluxmpi's PBS configs on it.

Marked `pbs`: OpenPBS is not packaged for Debian and is never part of this repository; where no build is found
(conftest.pbs_unavailable_reason) these tests skip with the reason. tests/test_pbs_scripts.py checks the same
configs' job scripts and command lines everywhere.
"""

import json
import re
import subprocess
import sys
import time

import pytest
from conftest import REPO, TEST_CLUSTER_NAME
from test_gpus import ONE_TASK_PER_GPU

import fluxmpi
from fluxmpi import pbs
from fluxmpi.cluster import ClusterLayout, LocalCluster
from fluxmpi.site import Site, SiteError

pytestmark = pytest.mark.pbs

NAME = f"{TEST_CLUSTER_NAME}p"[:12]


@pytest.fixture(scope="module")
def pbs_cluster(claimed):
    local = LocalCluster(ClusterLayout(name=NAME, nodes=2, gpus_per_node=4, scheduler="pbs"))
    local.down()
    t0 = time.monotonic()
    local.up()
    print(f"local PBS cluster up in {time.monotonic() - t0:.1f}s")
    yield local
    local.down()
    assert not local.leftovers(), local.leftovers()


def _run(cluster, argv, timeout=300):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**cluster.environ(), "PYTHONPATH": str(REPO)})


def _qsub(cluster, tmp_path, body: str, select: str = "2:ncpus=1") -> str:
    script = tmp_path / f"job{time.monotonic_ns()}.sh"
    script.write_text(f"#!/bin/bash\n#PBS -l select={select}\n#PBS -l place=scatter\n#PBS -o {script}.out\n"
                      f"#PBS -j oe\n#PBS -l walltime=00:05:00\n{body}\n")
    return pbs.qsub(str(script), env=cluster.env())


def _wait_state(cluster, job, states, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = pbs.job_states([job], env=cluster.env())[job]
        if info["state"] in states:
            return info
        time.sleep(0.3)
    raise AssertionError(f"job {job} not in {states} within {timeout}s: {info}")


def test_the_site_is_read_from_pbs_itself(pbs_cluster):
    site = Site.from_pbs(env=pbs_cluster.env(), mpiexec="mpich")
    assert (site.scheduler, site.queue, site.nodes, site.cores_per_node, site.gpus_per_node) == (
        "pbs", pbs_cluster.layout.partition, 2, pbs_cluster.layout.cpus_per_node, 4)
    with pytest.raises(SiteError, match="queue 'nosuch' does not exist.*" + pbs_cluster.layout.partition):
        Site.from_pbs("nosuch", env=pbs_cluster.env())


def test_the_client_reads_real_jobs_states_hosts_and_ends(pbs_cluster, tmp_path):
    env = pbs_cluster.env()
    running = _qsub(pbs_cluster, tmp_path, "sort -u $PBS_NODEFILE; sleep 30")
    info = _wait_state(pbs_cluster, running, {"RUNNING"})
    assert sorted(info["nodes"].split(",")) == pbs_cluster.layout.node_names, info
    started = pbs.job_start_times([running], env=env)[running]
    assert pbs.job_end_times([running], env=env)[running] == started + 300    # what walltime admission reads
    pbs.qdel([running], env=env)
    assert _wait_state(pbs_cluster, running, {"CANCELLED"})["reason"].startswith("PBS state F")
    ok = _qsub(pbs_cluster, tmp_path, "true", select="1:ncpus=1")
    failing = _qsub(pbs_cluster, tmp_path, "exit 3", select="1:ncpus=1")
    assert _wait_state(pbs_cluster, ok, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    assert "Exit_status=3" in _wait_state(pbs_cluster, failing, {"COMPLETED", "FAILED"}, timeout=60)["reason"]
    assert pbs.job_states(["999999.nowhere"], env=env)["999999.nowhere"]["state"] == "GONE"
    assert pbs.unusable_nodes(None, env=env) == {}


def test_mpi_tasks_through_mpi_mode_with_mpiexec_run_where_asked_and_leave_no_job(pbs_cluster, tmp_path):
    """`fluxmpi run` on the PBS cluster: HTEX MPI mode + PBSProProvider, ranks by MPICH's mpiexec over the
    block's $PBS_NODEFILE hosts, the C app compiled with mpicc.mpich on a node first."""
    proc = _run(pbs_cluster, [sys.executable, "-m", "fluxmpi.cli", "run", "--path", "htex-mpiexec", "--cluster-name",
                              NAME, "--nodes", "2", "--ranks-per-node", "2", "--repeats", "3", "--sleep", "1",
                              "--workdir", str(tmp_path / "run")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["ok"] and run["placement_ok"] and len(run["tasks"]) == 3
    for task in run["tasks"]:
        assert task["ok"] and sorted(task["result"]["nodes"]) == pbs_cluster.layout.node_names, task
        assert task["result"]["argv"][:5] == ["mpiexec.mpich", "-n", "4", "-ppn", "2"], task
    records = fluxmpi.placement.read_records(tmp_path / "run" / "records")
    assert {t: sorted(r.rank for r in p.records) for t, p in records.placements().items()} == \
        {t: [0, 1, 2, 3] for t in ("t0", "t1", "t2")}
    (job, block), = run["blocks"].items()
    assert block["reason"].startswith("PBS state") and sorted(block["nodes"].split(",")) == \
        pbs_cluster.layout.node_names
    # Nothing of the run's left in PBS: its block has finished (qstat -x keeps it, state F).
    assert pbs.job_states([job], env=pbs_cluster.env())[job]["state"] not in pbs.ACTIVE_STATES


def test_static_blocks_on_pbs_run_one_task_at_a_time_over_each_block(pbs_cluster, tmp_path):
    """The pre-MPI-mode workaround on PBS: 2 one-node blocks, each task over its whole block by mpiexec."""
    proc = _run(pbs_cluster, [sys.executable, "-m", "fluxmpi.cli", "run", "--path", "static", "--cluster-name",
                              NAME, "--nodes", "1", "--ranks-per-node", "2", "--nodes-per-block", "1", "--repeats",
                              "4", "--sleep", "1", "--workdir", str(tmp_path / "run")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["ok"] and run["placement_ok"] and len(run["blocks"]) == 2, run["blocks"]
    assert {t["result"]["nodes"][0] for t in run["tasks"]} == set(pbs_cluster.layout.node_names)


def test_one_mpi_app_runs_unchanged_on_pbs(pbs_cluster, tmp_path):
    """examples/hello_mpi_app.py, the script every path runs, on the PBS cluster: each rank once, on the asked
    nodes, placement checked from the rank wrapper's records."""
    proc = _run(pbs_cluster, [sys.executable, str(REPO / "examples" / "hello_mpi_app.py"), "--path", "htex-mpiexec",
                              "--cluster-name", NAME, "--workdir", str(tmp_path), "--repeats", "2", "--sleep", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"], summary
    for task in summary["tasks"].values():
        assert task["ranks"] == [0, 1, 2, 3] and task["hosts"] == pbs_cluster.layout.node_names


def test_one_task_per_gpu_polaris_style_each_of_eight_tasks_on_its_own_device(pbs_cluster, tmp_path):
    """The tutorial's Polaris config: HTEX + PBSProProvider + MpiExecLauncher (a worker pool on each node from
    $PBS_NODEFILE) with a worker per GPU, run by the same user script as on Slurm (tests/test_gpus.py). Eight
    1-GPU tasks on 2 nodes x 4 GPUs run at once, each on its own (node, device); the GPUs are PBS's ngpus count
    over stand-in devices (nothing computes)."""
    (tmp_path / "workflow.py").write_text(ONE_TASK_PER_GPU)
    proc = _run(pbs_cluster, [sys.executable, str(tmp_path / "workflow.py"), NAME, str(tmp_path / "runinfo")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    places = {(r["host"], r["gpus"]) for r in results}
    assert places == {(n, str(g)) for n in pbs_cluster.layout.node_names for g in range(4)}, results
    ends = [r["t"] for r in results]
    assert max(ends) - min(ends) < 2, f"the 2 s tasks ended {max(ends) - min(ends):.1f}s apart: not all at once"
    # One worker pool of 4 workers per node, started by mpiexec from the block's script: the interchange logs
    # each pool's registration with its host.
    (log,) = (tmp_path / "runinfo").glob("*/htex_gpus/interchange.log")
    pools = [line for line in log.read_text().splitlines() if "Registration info for manager" in line]
    hosts = sorted(re.search(r"'hostname': '([^']+)'", line).group(1) for line in pools)
    assert hosts == pbs_cluster.layout.node_names and all("'worker_count': 4" in line for line in pools), hosts


def test_a_path_pbs_cannot_run_is_refused_before_anything_is_submitted(pbs_cluster, tmp_path):
    def job_ids():    # states may still change (an earlier test's block ending): compare which jobs exist
        out = subprocess.run(["qstat", "-x"], capture_output=True, text=True, env=pbs_cluster.environ(), timeout=30)
        return {line.split()[0] for line in out.stdout.splitlines()[2:] if line.strip()}
    listed = job_ids()
    proc = _run(pbs_cluster, [sys.executable, "-m", "fluxmpi.cli", "run", "--path", "htex", "--cluster-name", NAME,
                              "--nodes", "2", "--workdir", str(tmp_path / "run")], timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "path 'htex' runs on Slurm only" in proc.stderr and "htex-mpiexec" in proc.stderr
    assert job_ids() == listed          # no job was submitted


@pytest.mark.flux
def test_flux_inside_a_pbs_job_runs_mpi_tasks_with_a_gpu_per_rank_on_the_flux_jobs_path(pbs_cluster, tmp_path):
    """flux-jobs on PBS: the block's brokers start with mpiexec over $PBS_NODEFILE, the instance is told the nodes'
    4 GPUs, and each 2-node x 2-rank task with 1 GPU per rank runs as a Flux job: every rank on its own device."""
    proc = _run(pbs_cluster, [sys.executable, "-m", "fluxmpi.cli", "run", "--path", "flux-jobs", "--cluster-name",
                              NAME, "--nodes", "2", "--ranks-per-node", "2", "--gpus-per-rank", "1", "--repeats", "3",
                              "--sleep", "1", "--workdir", str(tmp_path / "run")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["ok"] and run["placement_ok"], run.get("placement_report")
    (job, block), = run["blocks"].items()
    assert block["reason"].startswith("PBS state")
    hostfile = next((tmp_path / "run" / "runinfo").glob("flux_jobs/block-*/hosts"))
    assert hostfile.read_text().split() == pbs_cluster.layout.node_names
    records = fluxmpi.placement.read_records(tmp_path / "run" / "records")
    for task, placed in records.placements().items():
        devices = [(r.host, r.devices) for r in placed.records]
        assert len(devices) == 4 and len(set(devices)) == 4 and all(len(d) == 1 for _, d in devices), (task, devices)
