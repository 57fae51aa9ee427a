"""MPI tasks inside a real image on the local cluster: Charliecloud, with an image built offline from Debian's
packages once per test run (mmdebstrap, about 30 s and 290 MB here; skipped with the reason where it cannot).

Each rank of a 2-node x 2-rank mpi4py task reports the image's marker file and the host it ran on; the launch
line is the path's own (srun, mpirun, a Flux job) with ch-run after it, and placement is checked from the rank
wrapper, which stays on the host.
"""

import json
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO

from fluxmpi import placement, slurm
from fluxmpi.cli import main
from fluxmpi.container import ContainerError
from fluxmpi.mpiapp import MPICommand
from fluxmpi.runner import run_tasks
from fluxmpi.spec import MPITaskSpec

pytestmark = [pytest.mark.cluster, pytest.mark.charliecloud]

IMAGE_BUILD_TIMEOUT_S = 600
# The image's MPI is Debian 12's Open MPI, as on the hosts (the hybrid model); libjansson4 because Flux's
# libpmi.so, which that Open MPI dlopens under Flux, links it.
IMAGE_PACKAGES = "openmpi-bin,python3-mpi4py,libjansson4"

# One write per line: on the flux path every rank appends to the task's file itself, and print() may split a
# line into two writes that another rank's line lands between.
RANK_REPORT = """
import os, socket
from mpi4py import MPI
me = open("/etc/fluxmpi-image-id").read().strip()
line = f"rank {MPI.COMM_WORLD.rank} of {MPI.COMM_WORLD.size} on {socket.gethostname()} image {me}\\n"
os.write(1, line.encode())
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


PATHS = ["htex", "htex-mpiexec", "static", pytest.param("flux", marks=pytest.mark.flux),
         pytest.param("flux-jobs", marks=pytest.mark.flux)]


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
    assert len(hosts) == 2 and sum(h == sorted(hosts)[0] for _, h, _ in reports) == 2
    # The wrapper's records (on the host) agree with what the ranks saw inside the image.
    records = [r for r in placement.read_records(tmp_path / "run" / "records").records if r.task == "boxed"]
    assert sorted((r.rank, r.host) for r in records) == sorted((int(r), h) for r, h, _ in reports)


# A user's own workflow script: the @mpi_app is defined in __main__, so Parsl ships it by value.
MPI_APP_SCRIPT = """
import json, sys
import parsl
import fluxmpi

@fluxmpi.mpi_app
def report(script):
    return ["python3", script]

path, cluster, image, script, run_dir = sys.argv[1:6]
with fluxmpi.open_site("local", need=2, name=cluster) as site:
    dfk = parsl.load(fluxmpi.config(path, site=site, run_dir=run_dir, nodes_per_block=2))
    try:
        spec = fluxmpi.MPITaskSpec.build(nodes=2, ranks_per_node=2, container=f"charliecloud:{image}")
        print(json.dumps(report(script, spec=spec, name="boxed").result(timeout=300)))
        print(json.dumps({"records_dir": str(fluxmpi.mpiapp.records_dir(dfk))}))
    finally:
        dfk.cleanup()
"""


@pytest.mark.parametrize("path", ["htex", pytest.param("flux-jobs", marks=pytest.mark.flux)])
def test_an_mpi_app_with_a_container_spec_runs_inside_the_image(cluster, tmp_path, image, path):
    root, marker = image
    (tmp_path / "report.py").write_text(RANK_REPORT)
    (tmp_path / "workflow.py").write_text(MPI_APP_SCRIPT)
    proc = subprocess.run([sys.executable, str(tmp_path / "workflow.py"), path, cluster.layout.name, str(root),
                           str(tmp_path / "report.py"), str(tmp_path / "runinfo")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env={**cluster.environ(), "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result, where = (json.loads(line) for line in proc.stdout.strip().splitlines()[-2:])
    out = Path(result["stdout"]).read_text()
    reports = re.findall(r"rank (\d+) of 4 on (\S+) image (\w+)", out)
    assert sorted(int(r) for r, _, _ in reports) == [0, 1, 2, 3], out
    assert {m for _, _, m in reports} == {marker}
    records = placement.read_records(where["records_dir"])
    assert records.problems == [] and len(records.records) == 4
    assert {r.host for r in records.records} == {h for _, h, _ in reports}


def test_a_bind_target_the_image_lacks_is_refused_before_submission(cluster, site, tmp_path, image):
    root, _ = image
    spec = MPITaskSpec.build(nodes=1, ranks_per_node=1, container=f"charliecloud:{root}")
    before = {job.job_id for job in slurm.jobs(env=cluster.environ())}
    with pytest.raises(ContainerError, match=rf"mkdir -p {root}/var/lib/fluxmpi-not-in-image"):
        run_tasks("htex", site, [spec], workdir=tmp_path / "run",
                  commands=[MPICommand(("true",), cwd="/var/lib/fluxmpi-not-in-image")], run_timeout=60)
    # No new job: jobs of earlier tests may age out of slurmctld meanwhile (MinJobAge), so not equality.
    assert not {job.job_id for job in slurm.jobs(env=cluster.environ())} - before


def test_doctor_probes_an_image_and_names_why_another_fails(cluster, tmp_path, image):
    root, _ = image
    not_an_image = tmp_path / "empty"
    not_an_image.mkdir()
    result = CliRunner().invoke(main, ["doctor", "--probe", "--cluster-name", cluster.layout.name,
                                       "--image", f"charliecloud:{root}", "--image", f"charliecloud:{not_an_image}"])
    rows = {line.split("  ")[0]: line for line in result.output.splitlines() if line.startswith("charliecloud ")}
    assert re.search(r"works \d", rows[f"charliecloud {root} (srun --mpi=pmix)"]), result.output
    assert "FAILS" in rows[f"charliecloud {not_an_image} (srun --mpi=pmix)"], result.output
    assert f"does not exist in the image {not_an_image}" in result.output
    assert re.search(r"OK\s+containers\s.*charliecloud", result.output)


def test_the_bench_sets_the_image_against_the_same_command_on_the_host(site, tmp_path, image):
    """`fluxmpi bench --container`: the +ctr row runs the +wrap row's tasks inside the image, with placement
    checked, and the image's cost per task and the container target come out of the two rows."""
    from fluxmpi.bench.driver import run_bench
    from fluxmpi.bench.workload import Workload
    from fluxmpi.container import Container

    root, _ = image
    doc = run_bench(site, [Workload("tiny", "uniform", tasks=2, nodes=2, seconds=0.1)], ["htex+wrap", "htex+ctr"],
                    tmp_path / "out", progress=False, run_timeout=300, log=lambda m: None,
                    container=Container.parse(f"charliecloud:{root}"))
    runs = {r["name"]: r for r in doc["workloads"][0]["runs"]}
    for name in ("htex+wrap", "htex+ctr"):
        assert runs[name]["status"] == "ok" and runs[name]["placement_ok"], runs[name]["reason"]
    boxed = runs["htex+ctr"]["summary"]
    assert boxed["container_cost"] == pytest.approx(boxed["run_median"] - runs["htex+wrap"]["summary"]["run_median"])
    assert doc["container"]["runtime"] == "charliecloud" and doc["container"]["image"] == str(root)
    (target,) = [t for t in doc["targets"] if t["target"] == "container"]
    assert target["path"] == "htex+ctr" and target["value"] == boxed["container_overhead_ratio"]
    assert "The container (+ctr rows" in (tmp_path / "out" / "results.md").read_text()
