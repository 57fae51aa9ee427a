"""PALS mpiexec lines (HPE Cray MPICH under PBS Pro): no PALS exists here, so the lines are checked as text, and
the GPU prefix is run with sh under the variable PALS sets (PALS_LOCAL_RANKID), as PALS would run it per rank."""

import subprocess

import pytest

from fluxmpi.launchers.pals import gpu_prefix, pals_mpiexec_args, read_nodefile, write_hostfile
from fluxmpi.spec import MPITaskSpec, SpecError


def test_the_line_has_ranks_per_node_depth_and_binding_as_polaris_documents_them(tmp_path):
    spec = MPITaskSpec(nodes=2, ranks_per_node=4, cores_per_rank=8)
    assert pals_mpiexec_args(spec, tmp_path / "hosts") == [
        "mpiexec", "-n", "8", "--ppn", "4", "--depth", "8", "--cpu-bind", "depth", "--hostfile", str(tmp_path / "hosts")]
    shared = MPITaskSpec(nodes=1, ranks_per_node=2, exclusive=False, walltime=90)
    assert pals_mpiexec_args(shared) == ["mpiexec", "-n", "2", "--ppn", "2", "--depth", "1", "--cpu-bind", "none"]


@pytest.mark.parametrize("gpus, local_rank, expected", [(1, "0", "0"), (1, "3", "3"), (2, "1", "2,3"), (4, "0", "0,1,2,3")])
def test_each_rank_gets_its_own_gpus_from_its_node_local_rank(gpus, local_rank, expected):
    prefix = gpu_prefix(MPITaskSpec(nodes=1, ranks_per_node=4 // gpus, gpus_per_rank=gpus))
    out = subprocess.run([*prefix, "sh", "-c", 'echo "$CUDA_VISIBLE_DEVICES"'], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PALS_LOCAL_RANKID": local_rank}, timeout=10)
    assert out.returncode == 0 and out.stdout.strip() == expected, out
    assert gpu_prefix(MPITaskSpec(nodes=1, ranks_per_node=1)) == []


def test_without_pals_the_gpu_prefix_says_so_instead_of_guessing():
    prefix = gpu_prefix(MPITaskSpec(nodes=1, ranks_per_node=1, gpus_per_rank=1))
    out = subprocess.run([*prefix, "true"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=10)
    assert out.returncode != 0 and "PALS_LOCAL_RANKID is unset" in out.stderr


def test_nodefile_hosts_once_each_in_order_and_a_task_hostfile(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x3001c0s7b0n0\nx3001c0s7b0n0\nx3001c0s13b1n0\n\n")    # PBS repeats a host per chunk
    assert read_nodefile(nodefile) == ["x3001c0s7b0n0", "x3001c0s13b1n0"]
    assert write_hostfile(["a", "b"], tmp_path / "h").read_text() == "a\nb\n"
    (tmp_path / "empty").write_text("")
    with pytest.raises(SpecError, match="lists no host"):
        read_nodefile(tmp_path / "empty")
    with pytest.raises(SpecError, match="give one or more host names"):
        write_hostfile([], tmp_path / "h")
