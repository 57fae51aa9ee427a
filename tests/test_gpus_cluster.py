"""GPUs bound by the scheduler for real, on a local cluster whose nodes declare 4 GPUs each.

The GPUs are stand-ins: character device files (with /dev/null's numbers) that Slurm's GRES plugin hands out,
so Slurm's own binding (--gpus-per-task sets CUDA_VISIBLE_DEVICES per rank) is what runs; nothing computes on
them. Each rank's record (the rank wrapper's) says which GPUs it was given, and the placement check holds them
against the task spec.
"""

import pytest
from conftest import part_missing

from fluxmpi import placement
from fluxmpi.cluster import ClusterLayout
from fluxmpi.cluster.local import LocalCluster
from fluxmpi.mpiapp import MPICommand
from fluxmpi.runner import run_tasks
from fluxmpi.site import Site
from fluxmpi.spec import MPITaskSpec, SpecError

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def gpu_site():
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


@pytest.mark.parametrize("path", ["htex", pytest.param("flux-jobs", marks=pytest.mark.flux)])
def test_two_concurrent_gpu_tasks_get_one_device_per_rank(gpu_site, tmp_path, path):
    """srun --gpus-per-task on htex; on flux-jobs the instance is configured with the nodes' GPUs and each
    rank mapped to its own (an exclusive job holds all 4 of a node's GPUs)."""
    spec = MPITaskSpec(nodes=2, ranks_per_node=2, gpus_per_rank=1)
    result = run_tasks(path, gpu_site, [spec, spec], workdir=tmp_path, nodes_per_block=4, run_timeout=300,
                       commands=[MPICommand(("sleep", "2"))] * 2)
    _one_device_per_rank(result, tmp_path)
    assert "TASK  RANK  HOST  " in result.placement_report and "no CPU or GPU shared" in result.placement_report


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


def test_more_gpus_than_a_node_has_are_refused_before_submission(gpu_site, tmp_path):
    with pytest.raises(SpecError, match="GPU"):
        run_tasks("htex", gpu_site, [MPITaskSpec(nodes=1, ranks_per_node=1, gpus_per_rank=5)], workdir=tmp_path,
                  commands=[MPICommand(("true",))], run_timeout=60)
