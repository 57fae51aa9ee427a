"""install_scripts/: syntax, shellcheck, --help, exact --dry-run plans, refusals, the tarball route.

Here the Spack steps are exact --dry-run plans (no Spack needed); the tarball route (tar + env
file writer) needs no Spack and runs for real. tests/test_spack_scripts_real.py runs the build
cache route with a real Spack where one is present.
"""

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import spack_recipes

from fluxmpi import spackenv

REPO = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = REPO / "install_scripts"
ALL_SCRIPTS = sorted(SCRIPTS_DIR.glob("*.sh"))
SPACK_SCRIPTS = ["spack-install.sh", "spack-env-install.sh", "spack-pack.sh",
                 "spack-redeploy.sh", "spack-envfile.sh"]
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"


def run(script, *args, env=None):
    # The caller's Spack configuration variables would change the printed plans.
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("SPACK_")}, **(env or {})}
    return subprocess.run(["bash", str(SCRIPTS_DIR / script), *map(str, args)],
                          capture_output=True, text=True, timeout=60, env=full_env)


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def lib_value(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)", (SCRIPTS_DIR / "lib-common.sh").read_text(), re.M)
    assert match, f"{name} not set in lib-common.sh"
    return match.group(1).strip("'\"")


# --------------------------------------------------------------------------- static checks


def test_spack_scripts_exist():
    assert {p.name for p in ALL_SCRIPTS} >= set(SPACK_SCRIPTS) | {"lib-common.sh"}


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
@pytest.mark.shellcheck
def test_shellcheck(script):
    proc = subprocess.run(["shellcheck", "-x", str(script)], capture_output=True, text=True,
                          timeout=60, cwd=SCRIPTS_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("script", SPACK_SCRIPTS)
def test_strict_mode_and_executable(script):
    path = SCRIPTS_DIR / script
    assert "\nset -euo pipefail\n" in path.read_text()
    assert os.access(path, os.X_OK)


def test_shell_and_python_agree_on_names_and_pins():
    assert lib_value("FM_ENV_FILE_NAME") == spackenv.ENV_FILE_NAME
    assert f"parsl=={lib_value('FM_PARSL_VERSION')}" == spack_recipes.PARSL_PIP_PIN
    assert lib_value("FM_CLEAN_PATH") == spackenv.CLEAN_PATH


@pytest.mark.parametrize("script", SPACK_SCRIPTS)
def test_help(script):
    proc = run(script, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Usage: ")
    assert "--dry-run" in proc.stdout


# --------------------------------------------------------------------------- dry-run plans


@pytest.fixture
def prefix(tmp_path):
    # A prefix that does not exist: the dry run must leave it that way.
    return tmp_path / "opt" / "fluxmpi"


def plan(proc):
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_install_dry_run_git(tmp_path, prefix):
    lines = plan(run("spack-install.sh", "--prefix", prefix, "--dry-run"))
    assert lines == [
        f"+ mkdir -p {prefix}",
        f"+ git clone --depth=2 --branch=v1.1.0 https://github.com/spack/spack.git {prefix}/spack",
        f"+ cp {REPO}/spack/repos.yaml {prefix}/spack/etc/spack/repos.yaml",
        f"+ {prefix}/spack/bin/spack bootstrap now",
    ]
    assert tree(tmp_path) == []


def test_install_dry_run_tarball(tmp_path, prefix):
    lines = plan(run("spack-install.sh", "--prefix", prefix, "--method", "tarball",
                     "--spack-version", "v1.2.1", "--dry-run"))
    assert lines[1:5] == [
        f"+ curl -fsSL -o {prefix}/spack-v1.2.1.tar.gz https://github.com/spack/spack/archive/refs/tags/v1.2.1.tar.gz",
        f"+ mkdir -p {prefix}/spack",
        f"+ tar -xzf {prefix}/spack-v1.2.1.tar.gz -C {prefix}/spack --strip-components=1",
        f"+ rm -f {prefix}/spack-v1.2.1.tar.gz",
    ]
    assert tree(tmp_path) == []


def fake_spack(prefix: Path, version: str) -> Path:
    """A stand-in for PREFIX/spack/bin/spack that only answers --version (Spack is absent here)."""
    spack = prefix / "spack" / "bin" / "spack"
    spack.parent.mkdir(parents=True)
    spack.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "{version}" && exit 0\nexit 3\n')
    spack.chmod(0o755)
    return spack


def test_install_skips_same_version_and_refuses_another(tmp_path, prefix):
    fake_spack(prefix, "1.1.0")
    before = tree(tmp_path)
    proc = run("spack-install.sh", "--prefix", prefix, "--dry-run")
    assert "skip: Spack 1.1.0 is already installed" in proc.stderr
    assert not any("git clone" in line for line in plan(proc))
    assert tree(tmp_path) == before

    other = tmp_path / "other"
    fake_spack(other, "1.0.2")
    proc = run("spack-install.sh", "--prefix", other, "--dry-run")
    assert proc.returncode == 1
    assert f"{other}/spack holds Spack 1.0.2, not 1.1.0" in proc.stderr


def test_env_install_dry_run(tmp_path, prefix):
    site = REPO / "spack" / "examples" / "packages-slurm-pmix.yaml"
    proc = run("spack-env-install.sh", "--prefix", prefix, "--site-packages", site, "--jobs", "2",
               "--dry-run")
    spack = f"{prefix}/spack/bin/spack"
    assert plan(proc) == [
        f"+ cp {site} {prefix}/spack/etc/spack/packages.yaml",
        f"+ {spack} env create -d {prefix}/env {REPO}/spack/spack.yaml",
        f"+ {spack} -e {prefix}/env concretize",
        f"+ {spack} -e {prefix}/env install --fail-fast -j 2",
        f"+ env -i HOME={os.environ['HOME']} PATH={CLEAN_PATH} {spack} env activate --sh -d {prefix}/env"
        f" > {prefix}/env/activate.sh",
        f"+ {prefix}/env/view/bin/python3 -m venv --system-site-packages {prefix}/parsl-venv",
        f"+ {prefix}/parsl-venv/bin/python -m pip install parsl==2026.10.26",
        f"+ {SCRIPTS_DIR}/spack-envfile.sh --activate {prefix}/env/activate.sh"
        f" --venv {prefix}/parsl-venv --out {prefix}/fluxmpi-env.sh",
    ]
    assert "spack not found" in proc.stderr  # said, not fatal, in a dry run
    assert tree(tmp_path) == []


def test_env_install_keeps_existing_environment(tmp_path, prefix):
    env_dir = prefix / "env"
    env_dir.mkdir(parents=True)
    shutil.copy(REPO / "spack" / "spack.yaml", env_dir / "spack.yaml")
    proc = run("spack-env-install.sh", "--prefix", prefix, "--dry-run")
    assert f"skip: environment {env_dir} exists" in proc.stderr
    assert not any(" env create " in line for line in plan(proc))


def test_pack_dry_run(tmp_path, prefix):
    mirror, tarball = tmp_path / "cache", tmp_path / "out" / "fluxmpi.tar.gz"
    proc = run("spack-pack.sh", "--prefix", prefix, "--mirror", mirror, "--tarball", tarball, "--dry-run")
    assert plan(proc) == [
        f"+ mkdir -p {mirror}",
        f"+ {prefix}/spack/bin/spack -e {prefix}/env buildcache push --unsigned --update-index {mirror}",
        f"+ mkdir -p {mirror}/fluxmpi-env",
        f"+ cp {prefix}/env/spack.yaml {prefix}/env/spack.lock {mirror}/fluxmpi-env/",
        f"+ echo {prefix} > {prefix}/.fluxmpi-prefix",
        f"+ mkdir -p {tarball.parent}",
        f"+ tar -C {prefix.parent} -czf {tarball} fluxmpi",
    ]
    assert tree(tmp_path) == []


def test_redeploy_dry_run_from_mirror(tmp_path, prefix):
    mirror = tmp_path / "cache"
    (mirror / "fluxmpi-env").mkdir(parents=True)
    (mirror / "fluxmpi-env" / "spack.lock").write_text("{}\n")
    before = tree(tmp_path)
    proc = run("spack-redeploy.sh", "--prefix", prefix, "--mirror", mirror, "--dry-run")
    spack = f"{prefix}/spack/bin/spack"
    lines = plan(proc)
    assert lines[0] == f"+ {SCRIPTS_DIR}/spack-install.sh --prefix {prefix}"
    assert f"+ git clone --depth=2 --branch=v1.1.0 https://github.com/spack/spack.git {prefix}/spack" in lines
    assert lines[lines.index(f"+ {spack} bootstrap now") + 1:] == [
        f"+ {spack} env create --with-view {prefix}/env/view -d {prefix}/env {mirror}/fluxmpi-env/spack.lock",
        f"+ sha256sum {mirror}/fluxmpi-env/spack.lock > {prefix}/env/.fluxmpi-source-lock.sha256",
        f"+ {spack} -e {prefix}/env mirror add --unsigned fluxmpi-buildcache {mirror}",
        f"+ {spack} -e {prefix}/env install --use-buildcache only --fail-fast",
        f"+ env -i HOME={os.environ['HOME']} PATH={CLEAN_PATH} {spack} env activate --sh -d {prefix}/env"
        f" > {prefix}/env/activate.sh",
        f"+ {prefix}/env/view/bin/python3 -m venv --system-site-packages {prefix}/parsl-venv",
        f"+ {prefix}/parsl-venv/bin/python -m pip install parsl==2026.10.26",
        f"+ {SCRIPTS_DIR}/spack-envfile.sh --activate {prefix}/env/activate.sh"
        f" --venv {prefix}/parsl-venv --out {prefix}/fluxmpi-env.sh",
    ]
    assert tree(tmp_path) == before


def test_envfile_dry_run(tmp_path, prefix):
    proc = run("spack-envfile.sh", "--prefix", prefix, "--dry-run")
    assert plan(proc) == [
        f"would write {prefix}/fluxmpi-env.sh from {prefix}/env/activate.sh and the venv {prefix}/parsl-venv"
    ]
    assert tree(tmp_path) == []


# --------------------------------------------------------------------------- refusals


def refusal_cases(tmp):
    a_file = tmp / "a-file"
    a_file.write_text("x")
    empty_mirror = tmp / "empty-mirror"
    empty_mirror.mkdir()
    p = tmp / "pfx"
    return [
        ("spack-install.sh", [], 2, "--prefix is required"),
        ("spack-install.sh", ["--prefix"], 2, "option --prefix needs a value"),
        ("spack-install.sh", ["--prefix", "relative/dir"], 2, "prefix 'relative/dir' is not an absolute path"),
        ("spack-install.sh", ["--prefix", f"{tmp}/has space"], 2, "contains characters other than"),
        ("spack-install.sh", ["--prefix", f"{tmp}/../x"], 2, "is not canonical"),
        ("spack-install.sh", ["--prefix", "/"], 2, "prefix '/' is not allowed"),
        ("spack-install.sh", ["--prefix", a_file], 2, "exists and is not a directory"),
        ("spack-install.sh", ["--prefix", p, "--bogus"], 2, "unknown argument '--bogus'"),
        ("spack-install.sh", ["--prefix", p, "--method", "svn"], 2, "--method 'svn' is not git or tarball"),
        ("spack-install.sh", ["--prefix", p, "--spack-version", "1.2"], 2, "is not a release tag"),
        ("spack-env-install.sh", ["--prefix", p], 1, f"spack not found at {p}/spack/bin/spack"),
        ("spack-env-install.sh", ["--prefix", p, "--jobs", "0"], 2, "--jobs '0' is not a positive integer"),
        ("spack-env-install.sh", ["--prefix", p, "--site-packages", tmp / "nope.yaml"], 2, "is not a readable file"),
        ("spack-env-install.sh", ["--prefix", p, "--spack", tmp / "nope"], 2, "is not an executable spack"),
        ("spack-pack.sh", ["--prefix", p], 2, "give --mirror DIR, --tarball FILE, or both"),
        ("spack-pack.sh", ["--prefix", p, "--tarball", p / "x.tar.gz"], 2, "is inside the prefix it packs"),
        ("spack-pack.sh", ["--prefix", p, "--mirror", tmp / "m"], 1, f"{p}/env/spack.lock is missing"),
        ("spack-redeploy.sh", ["--prefix", p, "--mirror", empty_mirror, "--tarball", a_file], 2, "not both"),
        ("spack-redeploy.sh", ["--prefix", p], 2, "give --mirror DIR or --tarball FILE"),
        ("spack-redeploy.sh", ["--prefix", p, "--mirror", empty_mirror], 2, "has no fluxmpi-env/spack.lock"),
        ("spack-redeploy.sh", ["--prefix", p, "--tarball", tmp / "nope.tgz"], 2, "is not a readable file"),
        ("spack-envfile.sh", ["--activate", tmp / "a.sh", "--venv", tmp, "--out", tmp / "e.sh"], 1,
         f"activate script {tmp}/a.sh is missing"),
        ("spack-envfile.sh", ["--venv", tmp, "--out", tmp / "e.sh"], 2, "--activate is required"),
    ]


def test_refusals(tmp_path):
    for script, args, code, message in refusal_cases(tmp_path):
        before = tree(tmp_path)
        proc = run(script, *args)
        assert proc.returncode == code, (script, args, proc.stderr)
        assert message in proc.stderr, (script, args, proc.stderr)
        assert "error:" in proc.stderr
        assert tree(tmp_path) == before, (script, args)


# --------------------------------------------------------------------------- tarball route, for real


def make_fake_install(prefix: Path) -> None:
    """A prefix shaped like an installed one. The Spack parts are mocks (no Spack here): a view with
    a python symlink, a saved activate script like Spack's, a lockfile; the venv is real."""
    view_bin = prefix / "env" / "view" / "bin"
    view_bin.mkdir(parents=True)
    (view_bin / "python3").symlink_to(os.path.realpath(shutil.which("python3")))
    (prefix / "env" / "spack.lock").write_text("{}\n")
    (prefix / "env" / "activate.sh").write_text(
        f"export SPACK_ENV={prefix}/env;\nexport PATH={view_bin}:{CLEAN_PATH};\n")
    subprocess.run([str(view_bin / "python3"), "-m", "venv", "--without-pip", "--system-site-packages",
                    str(prefix / "parsl-venv")], check=True, timeout=60)
    proc = run("spack-envfile.sh", "--prefix", prefix)
    assert proc.returncode == 0, proc.stderr


def test_tarball_round_trip_same_path_only(tmp_path):
    prefix = tmp_path / "site" / "fluxmpi"
    make_fake_install(prefix)
    tarball = tmp_path / "fluxmpi.tar.gz"
    proc = run("spack-pack.sh", "--prefix", prefix, "--tarball", tarball)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(tarball) as tar:
        record = tar.extractfile("fluxmpi/.fluxmpi-prefix").read().decode().strip()
    assert record == str(prefix)
    assert "skip:" in run("spack-pack.sh", "--prefix", prefix, "--tarball", tarball).stderr

    # Elsewhere: refused before anything is written.
    elsewhere = tmp_path / "other" / "fluxmpi"
    proc = run("spack-redeploy.sh", "--prefix", elsewhere, "--tarball", tarball)
    assert proc.returncode == 1
    assert f"was packed at {prefix} and works only there" in proc.stderr
    assert not elsewhere.parent.exists()

    # Over a non-empty directory at the right path: refused too.
    shutil.rmtree(prefix)
    prefix.mkdir()
    (prefix / "stray").write_text("x")
    proc = run("spack-redeploy.sh", "--prefix", prefix, "--tarball", tarball)
    assert proc.returncode == 1 and "is not empty: refusing to unpack" in proc.stderr

    # At the same path on a "fresh cluster": unpacked, env file rewritten and valid.
    shutil.rmtree(prefix)
    dry = run("spack-redeploy.sh", "--prefix", prefix, "--tarball", tarball, "--dry-run")
    assert plan(dry)[:2] == [f"+ mkdir -p {prefix.parent}", f"+ tar -C {prefix.parent} -xzf {tarball}"]
    assert not prefix.exists()
    proc = run("spack-redeploy.sh", "--prefix", prefix, "--tarball", tarball)
    assert proc.returncode == 0, proc.stderr
    report = spackenv.validate_env_file(prefix / "fluxmpi-env.sh")
    assert report.tools["python"].path == f"{prefix}/parsl-venv/bin/python"
    again = run("spack-redeploy.sh", "--prefix", prefix, "--tarball", tarball)
    assert again.returncode == 0 and "already holds an unpacked deployment" in again.stderr
