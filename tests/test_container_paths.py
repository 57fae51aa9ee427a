"""MPI tasks inside a real image on the local cluster: Charliecloud, with an image built offline from Debian's
packages once per test run (mmdebstrap, about 30 s and 290 MB here; skipped with the reason where it cannot).

Each rank of a 2-node x 2-rank mpi4py task reports the image's marker file and the host it ran on; the launch
line is the path's own (srun, mpirun, a Flux job) with ch-run after it, and placement is checked from the rank
wrapper, which stays on the host.
"""

import re
import secrets
import subprocess

import pytest

from fluxmpi import slurm
from fluxmpi.container import ContainerError
from fluxmpi.mpiapp import MPICommand
from fluxmpi.runner import run_tasks
from fluxmpi.spec import MPITaskSpec

pytestmark = [pytest.mark.cluster, pytest.mark.charliecloud]

IMAGE_BUILD_TIMEOUT_S = 600
# The image's MPI is Debian 12's Open MPI, as on the hosts (the hybrid model); libjansson4 because Flux's
# libpmi.so, which that Open MPI dlopens under Flux, links it.
IMAGE_PACKAGES = "openmpi-bin,python3-mpi4py,libjansson4"

RANK_REPORT = """
import socket
from mpi4py import MPI
me = open("/etc/fluxmpi-image-id").read().strip()
print(f"rank {MPI.COMM_WORLD.rank} of {MPI.COMM_WORLD.size} on {socket.gethostname()} image {me}", flush=True)
"""


@pytest.fixture(scope="module")
def image(tmp_path_factory, cluster):
    """(image directory, its marker): made once per run; the directories the paths bind in are created in it,
    since ch-run cannot create a bind target in a read-only image."""
    root = tmp_path_factory.mktemp("images") / "bookworm-openmpi"
    proc = subprocess.run(["mmdebstrap", "--variant=apt", f"--include={IMAGE_PACKAGES}", "--quiet", "bookworm",
                           str(root)], capture_output=True, text=True, timeout=IMAGE_BUILD_TIMEOUT_S)
    if proc.returncode != 0:
        pytest.skip(f"mmdebstrap could not build the test image (exit {proc.returncode}): {proc.stderr[-500:]}")
    marker = secrets.token_hex(8)
    (root / "etc" / "fluxmpi-image-id").write_text(marker + "\n")
    targets = [str(cluster.layout.state_dir)]
    try:
        from fluxmpi.launch.flux.install import FluxSetupError, check_flux
        targets.append(check_flux().library_dir)
    except FluxSetupError:
        pass
    for target in targets:
        (root / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return root, marker


PATHS = ["htex", "htex-mpiexec", "static", pytest.param("flux-jobs", marks=pytest.mark.flux)]


@pytest.mark.parametrize("path", PATHS)
def test_two_node_task_runs_inside_the_image(site, tmp_path, image, path):
    root, marker = image
    script = tmp_path / "report.py"
    script.write_text(RANK_REPORT)
    spec = MPITaskSpec.build(nodes=2, ranks_per_node=2, container=f"charliecloud:{root}")
    result = run_tasks(path, site, [spec], workdir=tmp_path / "run", commands=[MPICommand(("python3", str(script)))],
                       names=["boxed"], run_timeout=300, nodes_per_block=None if path == "static" else 2)
    assert [t.error for t in result.tasks] == [None], result.tasks[0].error
    assert result.placement_ok, result.placement_report

    out = (tmp_path / "run" / "tasks" / "boxed.out").read_text()
    reports = re.findall(r"rank (\d+) of 4 on (\S+) image (\w+)", out)
    assert sorted(int(r) for r, _, _ in reports) == [0, 1, 2, 3], out
    assert {m for _, _, m in reports} == {marker}            # every rank read the image's file, not the host's
    hosts = {h for _, h, _ in reports}
    assert hosts == set(result.tasks[0].result["nodes"]) and len(hosts) == 2
    assert sum(h == sorted(hosts)[0] for _, h, _ in reports) == 2


def test_a_bind_target_the_image_lacks_is_refused_before_submission(cluster, site, tmp_path, image):
    root, _ = image
    spec = MPITaskSpec.build(nodes=1, ranks_per_node=1, container=f"charliecloud:{root}")
    before = {job.job_id for job in slurm.jobs(env=cluster.environ())}
    with pytest.raises(ContainerError, match=rf"mkdir -p {root}/var/lib/fluxmpi-not-in-image"):
        run_tasks("htex", site, [spec], workdir=tmp_path / "run",
                  commands=[MPICommand(("true",), cwd="/var/lib/fluxmpi-not-in-image")], run_timeout=60)
    assert {job.job_id for job in slurm.jobs(env=cluster.environ())} == before
