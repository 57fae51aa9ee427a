"""Containers in the launch line: exact per-rank command lines, checks before submission, the spec and task-file
forms. Apptainer, Singularity, Shifter and Podman-HPC cannot be installed here, so their lines are checked as text
(the test names say so); Charliecloud runs for real in tests/test_container_paths.py."""

import os
import pwd

import pytest

from fluxmpi.container import Bind, Container, ContainerError
from fluxmpi.site import spool_root
from fluxmpi.spec import MPITaskSpec, SpecError
from fluxmpi.taskfile import TaskFileError, load_tasks

ME = pwd.getpwuid(os.getuid()).pw_name
PROGRAM = ["python3", "app.py", "--steps", "3"]


@pytest.fixture
def image_dir(tmp_path):
    img = tmp_path / "img"
    (img / "work").mkdir(parents=True)
    (img / "data").mkdir()
    return img


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    return d


def test_apptainer_line_text_only_not_installable_here(tmp_path, data):
    sif = tmp_path / "app.sif"
    sif.write_text("stand-in for an image file")
    c = Container.build("apptainer", str(sif), binds=[f"{data}:/in:ro"], env={"OMP_NUM_THREADS": 2},
                        options=["--nv"])
    assert c.argv(PROGRAM, workdir="/scratch/run1") == [
        "apptainer", "exec", "--bind", f"{data}:/in:ro", "--bind", "/scratch/run1:/scratch/run1",
        "--env", "OMP_NUM_THREADS=2", "--pwd", "/scratch/run1", "--nv", str(sif), *PROGRAM]


def test_singularity_line_text_only_not_installable_here(tmp_path):
    sif = tmp_path / "app.sif"
    sif.write_text("stand-in")
    assert Container.build("singularity", str(sif)).argv(PROGRAM) == ["singularity", "exec", str(sif), *PROGRAM]


def test_shifter_line_text_only_not_installable_here(data):
    c = Container.build("shifter", "docker:lsstdesc/stack:w_2024_10", binds=[f"{data}:/in"], env={"A": "b"})
    assert c.argv(PROGRAM, workdir="/global/scratch/r") == [
        "shifter", "--image=docker:lsstdesc/stack:w_2024_10", f"--volume={data}:/in",
        "--volume=/global/scratch/r:/global/scratch/r", "--env=A=b", "--workdir=/global/scratch/r", "--", *PROGRAM]


@pytest.mark.parametrize("runtime", ["podman-hpc", "podman"])
def test_podman_line_shares_host_namespaces_and_passes_launcher_variables(runtime, data):
    line = Container.build(runtime, "docker.io/library/debian:12", binds=[str(data)]).argv(PROGRAM, workdir="/w")
    assert line[:6] == [runtime, "run", "--rm", "--network=host", "--pid=host", "--ipc=host"]
    assert line[6:10] == ["-v", f"{data}:{data}", "-v", "/w:/w"]
    for pattern in ("--env=PMIX_*", "--env=SLURM_*", "--env=FLUX_*", "--env=CUDA_VISIBLE_DEVICES"):
        assert pattern in line
    assert line[-len(PROGRAM) - 3:] == ["-w", "/w", "docker.io/library/debian:12", *PROGRAM]


def test_charliecloud_line(image_dir):
    c = Container.build("charliecloud", str(image_dir), binds=["/tmp:/data"], env={"X": "1"})
    assert c.argv(PROGRAM, workdir="/work") == [
        "env", f"USER={ME}", "ch-run", "--bind=/tmp:/data", "--bind=/work:/work", "--set-env=X=1", "--cd=/work",
        str(image_dir), "--", *PROGRAM]


def test_charliecloud_does_not_rebind_the_tmp_it_shares(image_dir):
    line = Container.build("charliecloud", str(image_dir)).argv(PROGRAM, workdir="/tmp/run7")
    assert not any(a.startswith("--bind") for a in line) and "--cd=/tmp/run7" in line
    private = Container.build("charliecloud", str(image_dir), options=["-t"])
    with pytest.raises(ContainerError, match="/tmp/run7 does not exist in the image"):
        private.argv(PROGRAM, workdir="/tmp/run7")


def test_charliecloud_bind_target_missing_from_the_read_only_image_is_refused(image_dir):
    c = Container.build("charliecloud", str(image_dir))
    with pytest.raises(ContainerError, match=rf"mkdir -p {image_dir}/scratch/run"):
        c.argv(PROGRAM, workdir="/scratch/run")
    assert "--bind=/work:/work" in c.argv(PROGRAM, workdir="/work")


def test_bind_host_model_binds_the_host_mpi(tmp_path):
    sif = tmp_path / "a.sif"
    sif.write_text("stand-in")
    c = Container.build("apptainer", str(sif), mpi="bind-host", host_mpi_dirs=["/opt/ompi"])
    assert ["--bind", "/opt/ompi:/opt/ompi"] == c.argv(PROGRAM)[2:4]
    assert "/opt/ompi" not in " ".join(Container.build("apptainer", str(sif)).argv(PROGRAM))


def test_site_binds_come_after_the_users(image_dir):
    c = Container.build("charliecloud", str(image_dir), binds=["/tmp:/data"])
    line = c.argv(PROGRAM, site_binds=["/work"])
    assert line[3:5] == ["--bind=/tmp:/data", "--bind=/work:/work"]


@pytest.mark.parametrize("kwargs, message", [
    ({"runtime": "docker", "image": "x"}, "runtime 'docker' is not known: use one of apptainer"),
    ({"runtime": "apptainer", "image": "/no/such.sif"}, "image /no/such.sif does not exist"),
    ({"runtime": "charliecloud", "image": " "}, "is empty"),
    ({"runtime": "shifter", "image": "docker:x", "binds": ["/no/such/dir:/in"]}, "the source /no/such/dir does not"),
    ({"runtime": "shifter", "image": "docker:x", "binds": ["data:/in"]}, "'data' is not an absolute path"),
    ({"runtime": "shifter", "image": "docker:x", "binds": ["/tmp:/in:rx"]}, "is not SRC[:DST[:ro|rw]]"),
    ({"runtime": "shifter", "image": "docker:x", "env": {"1BAD": "v"}}, "'1BAD' is not a variable name"),
    ({"runtime": "shifter", "image": "docker:x", "options": "--nv"}, "give a list of strings"),
    ({"runtime": "shifter", "image": "docker:x", "mpi": "host"}, "mpi='host' is not a model"),
])
def test_bad_containers_are_refused_naming_the_value(kwargs, message):
    with pytest.raises(ContainerError) as err:
        Container.build(**kwargs)
    assert message in str(err.value)


def test_read_only_bind_is_refused_for_charliecloud(image_dir):
    c = Container.build("charliecloud", str(image_dir), binds=["/tmp:/data:ro"])
    with pytest.raises(ContainerError, match="cannot be read-only"):
        c.argv(PROGRAM)


def test_spec_carries_the_container_and_round_trips(image_dir):
    spec = MPITaskSpec.build(nodes=2, ranks_per_node=2, container=f"charliecloud:{image_dir}")
    assert spec.container == Container.build("charliecloud", str(image_dir))
    assert f"in charliecloud:{image_dir}" in str(spec)
    assert MPITaskSpec.from_dict(spec.to_dict()) == spec
    assert hash(spec) == hash(MPITaskSpec.from_dict(spec.to_dict()))
    assert "container" not in MPITaskSpec(nodes=1, ranks_per_node=1).to_dict()


@pytest.mark.parametrize("value, message", [
    ("charliecloud", "is not RUNTIME:IMAGE"),
    ("charliecloud:/no/such/img", "image /no/such/img does not exist"),
    (42, "is not a container"),
])
def test_spec_refuses_a_bad_container(value, message):
    with pytest.raises(SpecError, match=message):
        MPITaskSpec.build(nodes=1, container=value)


def test_task_file_container_field(tmp_path, image_dir, data):
    f = tmp_path / "tasks.yaml"
    f.write_text(f"""defaults: {{container: "charliecloud:{image_dir}", ranks_per_node: 2}}
tasks:
  - {{name: a, command: ./app, nodes: 2}}
  - {{name: b, command: ./app, nodes: 1, container: {{runtime: shifter, image: "docker:x", binds: ["{data}:/in"]}}}}
""")
    a, b = load_tasks(f)
    assert a.spec.container == Container.build("charliecloud", str(image_dir))
    assert b.spec.container.runtime == "shifter" and b.spec.container.binds == (Bind(str(data), "/in"),)

    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  - {name: a, command: ./app, nodes: 1, container: 'podman'}\n")
    with pytest.raises(TaskFileError, match="is not RUNTIME:IMAGE"):
        load_tasks(bad)


@pytest.mark.parametrize("value, root", [
    ("/var/spool/slurmd/%n", "/var/spool/slurmd"),
    ("/var/spool/slurmd-%n", "/var/spool"),
    ("/var/spool/slurmd", "/var/spool/slurmd"),
])
def test_slurmd_spool_root_for_the_pmix_bind(value, root):
    assert spool_root(value) == root


@pytest.mark.parametrize("args, message", [
    (["--image", "charliecloud:/x"], "--image goes with --probe"),
    (["--probe", "--image", "docker:x"], "runtime 'docker' is not known"),
])
def test_doctor_refuses_a_bad_image_option_before_probing(args, message):
    from click.testing import CliRunner
    from fluxmpi.cli import main
    result = CliRunner().invoke(main, ["doctor", "--cluster-name", "fxnever", *args])
    assert result.exit_code == 2 and message in result.output, result.output
