"""GPUs: the one-task-per-GPU config (always), and GPUs bound by the scheduler for real on a local cluster
whose nodes declare 4 GPUs each (marked cluster).

The GPUs are stand-ins: character device files (with /dev/null's numbers) that Slurm's GRES plugin hands out,
so Slurm's own binding (--gpus-per-task sets CUDA_VISIBLE_DEVICES per rank) is what runs; nothing computes on
them. Each rank's record (the rank wrapper's) says which GPUs it was given, and the placement check holds them
against the task spec.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO, part_missing

from fluxmpi import placement
from fluxmpi.cluster import ClusterLayout
from fluxmpi.cluster.local import LocalCluster
from fluxmpi.mpiapp import MPICommand
from fluxmpi.runner import run_tasks
from fluxmpi.site import Site
from fluxmpi.spec import MPITaskSpec, SpecError

CLUSTER = pytest.mark.cluster


def _test_site(cores, gpus):
    return Site(name="test", partition="debug", nodes=4, cores_per_node=cores, gpus_per_node=gpus, address="10.0.0.1")


@pytest.mark.parametrize("cores, affinity", [(8, "block"), (2, "none")])
def test_the_one_task_per_gpu_config_gives_every_gpu_a_worker(tmp_path, cores, affinity):
    """Without a cluster: what fluxmpi.config("htex-gpus") builds."""
    import fluxmpi
    from parsl.launchers import SrunLauncher

    (ex,) = fluxmpi.config("htex-gpus", site=_test_site(cores, 4), run_dir=str(tmp_path), nodes_per_block=2).executors
    assert ex.available_accelerators == ["0", "1", "2", "3"] and ex.max_workers_per_node == 4
    assert ex.cpu_affinity == affinity and ex.cores_per_worker == cores / 4      # each GPU its share of cores
    assert isinstance(ex.provider.launcher, SrunLauncher) and "--ntasks-per-node=1" in ex.provider.launcher.overrides
    assert ex.provider.nodes_per_block == 2 and ex.provider.exclusive
    with pytest.raises(SpecError, match="has no GPUs per node"):
        fluxmpi.config("htex-gpus", site=_test_site(cores, 0), run_dir=str(tmp_path))


@pytest.fixture(scope="module")
def gpu_site(claimed):
    reason = part_missing("cluster")
    if reason:
        pytest.skip(reason)
    local = LocalCluster(ClusterLayout(name="fxgpu", nodes=4, gpus_per_node=4))
    local.down()
    local.up()
    try:
        yield Site.from_local_cluster(local)
    finally:
        local.down()
        assert not local.leftovers(), local.leftovers()


@CLUSTER
def test_the_site_sees_the_gpus_and_their_files_are_devices(gpu_site):
    assert gpu_site.gpus_per_node == 4
    lay = ClusterLayout(name="fxgpu", nodes=4, gpus_per_node=4)
    assert all(f.is_char_device() for node in lay.node_names for f in lay.gpu_files(node))


def _one_device_per_rank(result, tmp_path, ranks_per_node=2):
    assert result.ok, [t.error for t in result.tasks]
    assert result.placement_ok, result.placement_report
    records = placement.read_records(tmp_path / "records").placements()
    for p in records.values():
        for host in p.nodes:
            given = [r.devices for r in p.records if r.host == host]
            assert all(len(d) == 1 for d in given) and len(set().union(*given)) == ranks_per_node, \
                (p.task, host, given)
    a, b = records.values()
    assert a.start < b.end and b.start < a.end, "the two tasks did not run at the same time"
    return a, b


@pytest.mark.parametrize("visible, local, g, own", [("0,1", 0, 1, "0"), ("0,1", 1, 1, "1"), ("2,3,0,1", 1, 2, "0,1"),
                                                     ("3", 0, 1, None), ("0,1", 2, 1, None), ("", 0, 1, None),
                                                     ("-1", 0, 1, None), ("0,1", 0, 0, None)])
def test_a_flux_path_rank_keeps_its_own_share_of_the_gpus_flux_showed_it(visible, local, g, own):
    """FluxExecutor's jobs carry no shell options, so Flux shows every rank all of the job's GPUs on its node."""
    from fluxmpi.launchers.flux import rank_visible_gpus
    assert rank_visible_gpus(visible, local, g) == own


@CLUSTER
@pytest.mark.parametrize("path", ["htex", pytest.param("flux-jobs", marks=pytest.mark.flux),
                                  pytest.param("flux", marks=pytest.mark.flux)])
def test_two_concurrent_gpu_tasks_get_one_device_per_rank(gpu_site, tmp_path, path):
    """srun --gpus-per-task on htex; on flux-jobs the instance is configured with the nodes' GPUs and each
    rank mapped to its own (an exclusive job holds all 4 of a node's GPUs); on flux (Parsl's FluxExecutor) the
    same instance configuration, and each rank keeps its share of the job's GPUs on its node."""
    spec = MPITaskSpec(nodes=2, ranks_per_node=2, gpus_per_rank=1)
    result = run_tasks(path, gpu_site, [spec, spec], workdir=tmp_path, nodes_per_block=4, run_timeout=300,
                       commands=[MPICommand(("sleep", "2"))] * 2)
    _one_device_per_rank(result, tmp_path)
    assert "TASK  RANK  HOST  " in result.placement_report and "no CPU or GPU shared" in result.placement_report


@CLUSTER
@pytest.mark.flux
def test_shared_gpu_tasks_on_the_same_nodes_get_different_devices_from_flux(gpu_site, tmp_path):
    """Two tasks that share their nodes (one core and one GPU of each of 2 nodes): Flux places both at once on
    the same nodes and gives each its own GPU there (per-task affinity over what the job was allocated)."""
    spec = MPITaskSpec(nodes=2, ranks_per_node=1, gpus_per_rank=1, exclusive=False)
    result = run_tasks("flux-jobs", gpu_site, [spec, spec], workdir=tmp_path, nodes_per_block=2, run_timeout=300,
                       commands=[MPICommand(("sleep", "2"))] * 2)
    a, b = _one_device_per_rank(result, tmp_path, ranks_per_node=1)
    assert set(a.nodes) == set(b.nodes)                 # one block of 2 nodes: both tasks on both nodes at once
    for host in a.nodes:
        assert not a.gpus_on(host) & b.gpus_on(host), (host, a.gpus_on(host), b.gpus_on(host))


@CLUSTER
def test_more_gpus_than_a_node_has_are_refused_before_submission(gpu_site, tmp_path):
    with pytest.raises(SpecError, match="GPU"):
        run_tasks("htex", gpu_site, [MPITaskSpec(nodes=1, ranks_per_node=1, gpus_per_rank=5)], workdir=tmp_path,
                  commands=[MPICommand(("true",))], run_timeout=60)


# A user's workflow script, as in the tutorials: ordinary Parsl apps, one GPU each.
ONE_TASK_PER_GPU = """
import json, sys
import parsl
import fluxmpi

@parsl.python_app
def which_gpu(i):
    import os, socket, time
    time.sleep(2)       # all eight at once: each worker holds its GPU while the others run
    return {"task": i, "host": socket.gethostname(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "t": time.time()}

cluster, run_dir = sys.argv[1:3]
with fluxmpi.open_site("local", need=2, name=cluster) as site:
    dfk = parsl.load(fluxmpi.config("htex-gpus", site=site, run_dir=run_dir, nodes_per_block=2))
    try:
        print(json.dumps([f.result(timeout=300) for f in [which_gpu(i) for i in range(8)]]))
    finally:
        dfk.cleanup()
"""


@CLUSTER
def test_eight_one_gpu_tasks_on_two_nodes_each_run_with_their_own_device(gpu_site, tmp_path):
    (tmp_path / "workflow.py").write_text(ONE_TASK_PER_GPU)
    env = {**os.environ, **gpu_site.env, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(tmp_path / "workflow.py"), "fxgpu", str(tmp_path / "runinfo")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    places = [(r["host"], r["gpus"]) for r in results]
    assert len(set(places)) == 8, places                   # no two tasks on one GPU of one node
    assert {h for h, _ in places} == {"fxgpun1", "fxgpun2"}
    assert sorted(g for _, g in places) == ["0", "0", "1", "1", "2", "2", "3", "3"]
