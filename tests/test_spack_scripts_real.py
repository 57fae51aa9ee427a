"""The build-cache route of install_scripts/ run for real with a real Spack, as far as it goes without building.

An environment of externals only (Debian's python and Slurm) is concretized and "installed" (Spack
registers externals, it builds nothing); spack-pack.sh pushes it (an empty set: externals are never
cached) and stores its lockfile; spack-redeploy.sh recreates it under another prefix from that
lockfile, adds the mirror, installs from the cache only and writes the activation. Its next step,
the Parsl venv, needs the python Spack would have built into the view (views leave externals out),
so the run must stop there with the reason. Opt-in like tests/test_spack_concretize.py.
"""

import json
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.spack

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "install_scripts"
SCRIPT_TIMEOUT_S = 600


def _debian_python_version() -> str | None:
    python = Path("/usr/bin/python3")
    if not python.exists():
        return None
    out = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or None


def _externals_manifest(python_version: str) -> str:
    return f"""spack:
  specs: [python, slurm]
  concretizer: {{unify: true}}
  packages:
    python:
      buildable: false
      externals: [{{spec: python@{python_version}, prefix: /usr}}]
    slurm:
      buildable: false
      externals: [{{spec: slurm@22-05-8-1 +pmix sysconfdir=/etc/slurm, prefix: /usr}}]
  view:
    default: {{root: view, link: all}}
"""


def _script(private_spack, name, *args):
    return subprocess.run(["bash", str(SCRIPTS / name), *map(str, args)], env=private_spack.env,
                          capture_output=True, text=True, timeout=SCRIPT_TIMEOUT_S)


def test_pack_then_redeploy_from_the_build_cache(private_spack, tmp_path):
    version = _debian_python_version()
    if version is None:
        pytest.skip("needs Debian's /usr/bin/python3 to stand as an external")
    built = tmp_path / "built"
    (built / "env").mkdir(parents=True)
    (built / "env" / "spack.yaml").write_text(_externals_manifest(version))
    private_spack.run("-e", str(built / "env"), "concretize", timeout=SCRIPT_TIMEOUT_S)
    private_spack.run("-e", str(built / "env"), "install", timeout=SCRIPT_TIMEOUT_S)

    mirror = tmp_path / "cache"
    packed = _script(private_spack, "spack-pack.sh", "--prefix", built, "--mirror", mirror,
                     "--spack", private_spack.spack)
    assert packed.returncode == 0, packed.stderr
    assert f"buildcache push --unsigned --update-index {mirror}" in packed.stdout
    lock = mirror / "fluxmpi-env" / "spack.lock"
    assert lock.read_bytes() == (built / "env" / "spack.lock").read_bytes()
    again = _script(private_spack, "spack-pack.sh", "--prefix", built, "--mirror", mirror,
                    "--spack", private_spack.spack)
    assert again.returncode == 0 and "already holds this spack.lock" in again.stderr

    target = tmp_path / "elsewhere"
    redeployed = _script(private_spack, "spack-redeploy.sh", "--prefix", target, "--mirror", mirror,
                         "--spack", private_spack.spack)
    env_dir = target / "env"
    # The environment came from the lockfile (same hashes) with its view where the scripts look.
    manifest = (env_dir / "spack.yaml").read_text()
    assert f"view: {env_dir}/view" in manifest, manifest
    ours = json.loads((env_dir / "spack.lock").read_text())["concrete_specs"]
    theirs = json.loads(lock.read_text())["concrete_specs"]
    assert set(ours) == set(theirs)
    mirrors = private_spack.run("-e", str(env_dir), "mirror", "list").stdout
    assert "fluxmpi-buildcache" in mirrors and str(mirror) in mirrors
    # Installed from the cache only: the externals are registered, nothing was built.
    found = private_spack.run("-e", str(env_dir), "find", "--format", "{name}").stdout.split()
    assert sorted(found) == ["python", "slurm"]
    activate = (env_dir / "activate.sh").read_text()
    assert f"export SPACK_ENV={env_dir}" in activate
    assert "could not load runtime environment" not in redeployed.stderr, redeployed.stderr
    # ... and then the venv step stops, naming the missing python and what to do.
    assert redeployed.returncode == 1
    assert f"the environment's python {env_dir}/view/bin/python3 is missing" in redeployed.stderr
    assert not (target / "parsl-venv").exists()

    # A second run recognises what is done: the environment and the mirror are not made again.
    rerun = _script(private_spack, "spack-redeploy.sh", "--prefix", target, "--mirror", mirror,
                    "--spack", private_spack.spack, "--dry-run")
    assert rerun.returncode == 0, rerun.stderr
    assert f"environment {env_dir} already made from {lock}" in rerun.stderr
    assert f"mirror fluxmpi-buildcache is already configured in {env_dir}" in rerun.stderr
