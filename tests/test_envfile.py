"""The env file: written by install_scripts/spack-envfile.sh, found and checked by fluxmpi.spackenv.

Spack cannot run here, so its parts are mocks, named as such: a view whose bin/ holds a fake
`flux` (prints a version) and a python symlink, and a saved activate script shaped like
`spack env activate --sh` output. The Parsl venv is a real venv made from that view's python.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fluxmpi import spackenv
from fluxmpi.cli.envfile import env_command
from fluxmpi.spackenv import EnvFileError

REPO = Path(__file__).resolve().parent.parent
WRITER = REPO / "install_scripts" / "spack-envfile.sh"
FAKE_FLUX_VERSION = "0.86.0"


def write_env_file(*args):
    return subprocess.run(["bash", str(WRITER), *map(str, args)], capture_output=True, text=True, timeout=60)


@pytest.fixture
def fake_prefix(tmp_path):
    prefix = tmp_path / "fluxmpi"
    view_bin = prefix / "env" / "view" / "bin"
    view_bin.mkdir(parents=True)
    flux = view_bin / "flux"  # mock flux: answers `flux version` like flux-core does
    flux.write_text(f'#!/bin/sh\n[ "$1" = version ] && echo "commands:    {FAKE_FLUX_VERSION}" && exit 0\nexit 1\n')
    flux.chmod(0o755)
    (view_bin / "python3").symlink_to(os.path.realpath(shutil.which("python3")))
    (view_bin / "python").symlink_to("python3")
    # Mock of a saved `spack env activate --sh -d ENV` (run with the bare PATH the scripts use).
    (prefix / "env" / "activate.sh").write_text(
        f"export SPACK_ENV={prefix}/env;\n"
        "export SPACK_ENV_VIEW=default;\n"
        "alias despacktivate='spack env deactivate';\n"
        f"export PATH={view_bin}:{spackenv.CLEAN_PATH};\n"
    )
    subprocess.run([str(view_bin / "python3"), "-m", "venv", "--without-pip", "--system-site-packages",
                    str(prefix / "parsl-venv")], check=True, timeout=60)
    return prefix


@pytest.fixture
def env_file(fake_prefix):
    proc = write_env_file("--prefix", fake_prefix)
    assert proc.returncode == 0, proc.stderr
    return fake_prefix / spackenv.ENV_FILE_NAME


def test_writer_output_validates_and_reports_tools(env_file, fake_prefix):
    report = spackenv.validate_env_file(env_file, require=("flux", "python", "parsl"))
    venv_bin, view_bin = f"{fake_prefix}/parsl-venv/bin", f"{fake_prefix}/env/view/bin"
    assert report.added_path_entries == [venv_bin, view_bin]  # the venv shadows the view
    flux = report.tools["flux"]
    assert flux.path == f"{view_bin}/flux" and flux.from_env and FAKE_FLUX_VERSION in flux.version
    assert report.tools["python"].path == f"{venv_bin}/python"
    import parsl  # installed on this machine: the venv sees it through --system-site-packages

    assert report.tools["parsl"].version == parsl.__version__
    # Neither the mock view nor the venv has an MPI: a system mpirun is not "provided".
    assert not report.provides("mpirun")
    assert "mpirun" in report.summary()


def test_env_file_exports_itself_and_is_self_contained(env_file, fake_prefix):
    (fake_prefix / "env" / "activate.sh").unlink()  # the env file copied it in, it does not source it
    out = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", f"source {env_file}; echo $FLUXMPI_ENV_FILE; echo $VIRTUAL_ENV"],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", "HOME": "/"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(env_file), f"{fake_prefix}/parsl-venv"]


def test_writer_is_idempotent(env_file, fake_prefix):
    mtime = env_file.stat().st_mtime_ns
    proc = write_env_file("--prefix", fake_prefix)
    assert proc.returncode == 0 and "skip:" in proc.stderr and "up to date" in proc.stderr
    assert env_file.stat().st_mtime_ns == mtime


def test_writer_refuses_bad_inputs(fake_prefix):
    out = fake_prefix / "e.sh"
    no_venv = write_env_file("--activate", fake_prefix / "env" / "activate.sh", "--venv", fake_prefix, "--out", out)
    assert no_venv.returncode == 1 and "is not a venv (no bin/python)" in no_venv.stderr
    (fake_prefix / "env" / "activate.sh").write_text("if then fi\n")
    broken = write_env_file("--prefix", fake_prefix)
    assert broken.returncode == 1 and "has a shell syntax error" in broken.stderr
    assert not out.exists() and not (fake_prefix / spackenv.ENV_FILE_NAME).exists()


def test_require_names_what_is_missing(env_file):
    with pytest.raises(EnvFileError, match="does not provide mpirun"):
        spackenv.validate_env_file(env_file, require=("flux", "mpirun"))
    with pytest.raises(EnvFileError, match="unknown tool"):
        spackenv.validate_env_file(env_file, require=("srun",))


# --------------------------------------------------------------------------- broken env files

BROKEN = [
    ("syntax-error", "if then fi\n", "has a shell syntax error (bash -n)"),
    ("missing-path-entry", "export PATH=/nonexistent/fluxmpi/view/bin:$PATH\n",
     "PATH entries that do not exist: /nonexistent/fluxmpi/view/bin"),
    ("exits-1", "echo about to fail >&2\nexit 1\n", "failed (exit status 1): about to fail"),
    ("failing-command", "set -e\nfalse\n", "failed (exit status 1)"),
    ("adds-nothing", "export FOO=1\n", "adds nothing to PATH"),
]


@pytest.mark.parametrize("case_id, content, expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_env_file_is_rejected(tmp_path, case_id, content, expected):
    path = tmp_path / "fluxmpi-env.sh"
    path.write_text(content)
    with pytest.raises(EnvFileError) as err:
        spackenv.validate_env_file(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_missing_and_non_file_are_rejected(tmp_path):
    with pytest.raises(EnvFileError, match="does not exist; create it with install_scripts/spack-env-install.sh"):
        spackenv.validate_env_file(tmp_path / "absent.sh")
    with pytest.raises(EnvFileError, match="is not a regular file"):
        spackenv.validate_env_file(tmp_path)


def test_sourcing_is_time_bounded(tmp_path):
    path = tmp_path / "slow.sh"
    path.write_text("sleep 30\n")
    with pytest.raises(EnvFileError, match=r"did not finish within 1 s"):
        spackenv.validate_env_file(path, timeout=1)


# --------------------------------------------------------------------------- finding it


def test_find_order(tmp_path, env_file, fake_prefix, monkeypatch):
    monkeypatch.delenv(spackenv.ENV_FILE_VAR, raising=False)
    monkeypatch.delenv(spackenv.PREFIX_VAR, raising=False)
    assert spackenv.find_env_file(env_file) == env_file
    assert spackenv.find_env_file(fake_prefix) == env_file  # a directory holding fluxmpi-env.sh
    assert spackenv.find_env_file(prefix=fake_prefix) == env_file
    monkeypatch.setenv(spackenv.PREFIX_VAR, str(fake_prefix))
    assert spackenv.find_env_file() == env_file
    other = tmp_path / "other.sh"
    other.write_text("export PATH=/usr/bin\n")
    monkeypatch.setenv(spackenv.ENV_FILE_VAR, str(other))
    assert spackenv.find_env_file() == other  # $FLUXMPI_ENV_FILE beats the prefix


def test_find_reports_what_it_tried(tmp_path, monkeypatch):
    monkeypatch.setenv(spackenv.ENV_FILE_VAR, str(tmp_path / "gone.sh"))
    monkeypatch.delenv(spackenv.PREFIX_VAR, raising=False)
    with pytest.raises(EnvFileError) as err:
        spackenv.find_env_file()
    message = str(err.value)
    assert f"$FLUXMPI_ENV_FILE={tmp_path}/gone.sh (no such file)" in message
    assert "$FLUXMPI_PREFIX unset" in message and "spack-env-install.sh" in message
    with pytest.raises(EnvFileError, match="does not exist"):
        spackenv.find_env_file(tmp_path / "nope.sh")


def test_worker_init_line(tmp_path, env_file):
    assert spackenv.worker_init_line(env_file) == f"source {env_file}"
    spaced = tmp_path / "a b" / "fluxmpi-env.sh"
    spaced.parent.mkdir()
    spaced.write_text("true\n")
    assert spackenv.worker_init_line(spaced) == f"source '{spaced}'"
    with pytest.raises(EnvFileError, match="does not exist"):
        spackenv.worker_init_line(tmp_path / "absent.sh")


# --------------------------------------------------------------------------- fluxmpi env


def test_cli_env(env_file, fake_prefix, monkeypatch):
    monkeypatch.delenv(spackenv.ENV_FILE_VAR, raising=False)
    runner = CliRunner()
    plain = runner.invoke(env_command, [str(env_file)])
    assert plain.exit_code == 0 and plain.output.strip() == str(env_file)
    printed = runner.invoke(env_command, ["--prefix", str(fake_prefix), "--print"])
    assert printed.exit_code == 0 and printed.output.strip() == f"source {env_file}"
    checked = runner.invoke(env_command, [str(env_file), "--check", "--require", "flux"])
    assert checked.exit_code == 0, checked.output
    assert f"{fake_prefix}/env/view/bin/flux" in checked.output and "[env]" in checked.output
    missing = runner.invoke(env_command, [str(env_file), "--check", "--require", "mpirun"])
    assert missing.exit_code == 1 and "does not provide mpirun" in missing.output
    misuse = runner.invoke(env_command, [str(env_file), "--require", "flux"])
    assert misuse.exit_code == 2 and "--require only makes sense with --check" in misuse.output


def test_cli_env_not_found(tmp_path, monkeypatch):
    monkeypatch.delenv(spackenv.ENV_FILE_VAR, raising=False)
    monkeypatch.delenv(spackenv.PREFIX_VAR, raising=False)
    result = CliRunner().invoke(env_command, [])
    assert result.exit_code == 1 and "no fluxmpi env file found" in result.output


@pytest.mark.cluster
def test_workers_of_a_run_source_the_env_file(cluster, env_file, tmp_path):
    """The generated env file, given as the blocks' worker set-up, is what the task environment shows."""
    from fluxmpi.runner import run_tasks
    from fluxmpi.site import Site
    from fluxmpi.spec import MPITaskSpec

    # The mock view has no Parsl; keep this machine's Parsl scripts reachable after the file resets PATH.
    parsl_bin = os.path.dirname(sys.executable)
    init = spackenv.worker_init_line(env_file) + f"\nexport PATH=$PATH:{parsl_bin}"
    result = run_tasks("htex", Site.from_local_cluster(cluster), [MPITaskSpec(nodes=2, ranks_per_node=1)],
                       app="mpi4py", workdir=tmp_path / "run", worker_init=init, run_timeout=300)
    assert result.ok, [t.error for t in result.tasks]
    assert result.tasks[0].result["env_file"] == str(env_file)
