"""Concretize fluxmpi's Spack environment with a real Spack, offline, in a private configuration.

Only concretizing can show that a pinned version exists in the pinned package repository, that the
target rules admit the externals, and that Open MPI and flux-pmix end up on one PMIx; schema checks
(tests/spack_recipes.py) cannot. Nothing here touches the caller's Spack configuration: every scope
Spack reads (user, system, site-independent caches) points into a temporary directory, and the
builtin repository is a local checkout of spack/spack-packages at the pinned release.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# One concretization took about 55 s on a 2-core machine; a hung solver must still end.
CONCRETIZE_TIMEOUT_S = 600
QUERY_TIMEOUT_S = 120


class SpackCheckError(RuntimeError):
    """Spack could not be run the way the check needs (not a concretization failure)."""


def spack_executable() -> str | None:
    """The Spack to use: $FLUXMPI_SPACK, else `spack` on PATH."""
    given = os.environ.get("FLUXMPI_SPACK")
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("spack")


def builtin_repo_dir() -> Path | None:
    """A local spack-packages checkout ($FLUXMPI_SPACK_PACKAGES) holding the builtin repository."""
    given = os.environ.get("FLUXMPI_SPACK_PACKAGES")
    if not given:
        return None
    repo = Path(given) / "repos" / "spack_repo" / "builtin"
    return repo if (repo / "repo.yaml").is_file() else None


@dataclass
class ConcreteNode:
    name: str
    version: str
    variants: dict
    external: bool
    target: str
    dependencies: list[str]  # names of direct dependencies

    def variant(self, key: str):
        return self.variants.get(key)


@dataclass
class Concretization:
    """What `spack concretize` chose, read from the environment's spack.lock."""

    roots: list[str]  # root spec strings as written in spack.yaml
    nodes: list[ConcreteNode]

    def named(self, name: str) -> list[ConcreteNode]:
        return [n for n in self.nodes if n.name == name]

    def one(self, name: str) -> ConcreteNode:
        found = self.named(name)
        if len(found) != 1:
            raise AssertionError(f"expected exactly one {name} in the concretization, found {len(found)}")
        return found[0]


def read_lockfile(lock: Path) -> Concretization:
    data = json.loads(lock.read_text())
    by_hash = data["concrete_specs"]
    nodes = []
    for spec in by_hash.values():
        deps = [by_hash[d["hash"]]["name"] for d in spec.get("dependencies", []) if d["hash"] in by_hash]
        params = spec.get("parameters", {})
        target = (spec.get("arch") or {}).get("target", "")
        if isinstance(target, dict):  # a microarchitecture is stored with its features
            target = target.get("name", "")
        nodes.append(
            ConcreteNode(
                name=spec["name"],
                version=str(spec["version"]),
                variants={k: v for k, v in params.items() if k not in ("cflags", "cxxflags", "fflags", "ldflags", "ldlibs", "cppflags")},
                external="external" in spec,
                target=str(target),
                dependencies=deps,
            )
        )
    return Concretization(roots=[r["spec"] for r in data["roots"]], nodes=nodes)


class PrivateSpack:
    """A Spack run whose every configuration scope and cache lives under `home`."""

    def __init__(self, spack: str, builtin: Path, home: Path):
        self.spack = spack
        self.home = home
        self.user_config = home / "user-config"
        self.system_config = home / "system-config"
        for d in (self.user_config, self.system_config, home / "cache"):
            d.mkdir(parents=True, exist_ok=True)
        # The builtin repository from a local checkout: no git clone, no network.
        (self.user_config / "repos.yaml").write_text(f"repos::\n  builtin: {builtin}\n")
        self.env = {
            **os.environ,
            "SPACK_USER_CONFIG_PATH": str(self.user_config),
            "SPACK_SYSTEM_CONFIG_PATH": str(self.system_config),
            "SPACK_USER_CACHE_PATH": str(home / "cache"),
        }
        # It would also switch off the system scope that SPACK_SYSTEM_CONFIG_PATH points at.
        self.env.pop("SPACK_DISABLE_LOCAL_CONFIG", None)

    def run(self, *args: str, timeout: float = QUERY_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.spack, *args]
        log.info("running %s", " ".join(cmd))
        try:
            done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise SpackCheckError(f"`{' '.join(cmd)}` did not finish within {timeout:.0f} s") from e
        if check and done.returncode != 0:
            raise SpackCheckError(f"`{' '.join(cmd)}` exited {done.returncode}:\n{done.stderr[-3000:]}")
        return done

    def declare_host_gcc(self) -> str:
        """Make the host's gcc a compiler external, as `spack compiler find` would.

        `spack compiler find` probes every llvm-* and other binary in /usr/bin (two minutes here);
        the check needs only gcc, whose version the compiler itself reports.
        """
        gcc = shutil.which("gcc")
        if gcc is None:
            raise SpackCheckError("no gcc on PATH: the concretization needs a compiler external")
        version = subprocess.run([gcc, "-dumpfullversion"], capture_output=True, text=True, check=True).stdout.strip()
        bindir = Path(gcc).parent
        compilers = {"c": gcc}
        for lang, name in (("cxx", "g++"), ("fortran", "gfortran")):
            if (bindir / name).exists():
                compilers[lang] = str(bindir / name)
        languages = ",".join({"c": "c", "cxx": "c++", "fortran": "fortran"}[k] for k in compilers)
        lines = [
            "packages:",
            "  gcc:",
            "    externals:",
            f"    - spec: gcc@{version} languages:='{languages}'",
            f"      prefix: {bindir.parent}",
            "      extra_attributes:",
            "        compilers:",
            *(f"          {k}: {v}" for k, v in compilers.items()),
        ]
        (self.user_config / "packages.yaml").write_text("\n".join(lines) + "\n")
        return version

    def concretize(self, manifest: Path, site_packages: Path | None, workdir: Path) -> tuple[Concretization | None, str]:
        """Concretize a copy of `manifest` (with `site_packages` as an extra scope); (result, log)."""
        env_dir = workdir / "env"
        env_dir.mkdir(parents=True)
        shutil.copy(manifest, env_dir / "spack.yaml")
        scope = []
        if site_packages is not None:
            scope_dir = workdir / "site-scope"
            scope_dir.mkdir()
            shutil.copy(site_packages, scope_dir / "packages.yaml")
            scope = ["-C", str(scope_dir)]
        done = self.run(*scope, "-e", str(env_dir), "concretize", "--fresh", timeout=CONCRETIZE_TIMEOUT_S, check=False)
        output = done.stdout + done.stderr
        lock = env_dir / "spack.lock"
        if done.returncode != 0 or not lock.is_file():
            return None, output
        return read_lockfile(lock), output


def spack_unavailable_reason() -> str | None:
    """Why the concretization check cannot run here, or None."""
    spack = spack_executable()
    if spack is None:
        return "no Spack: set FLUXMPI_SPACK to a Spack v1.x `bin/spack` (or put `spack` on PATH)"
    if builtin_repo_dir() is None:
        return (
            "no builtin package repository: set FLUXMPI_SPACK_PACKAGES to a checkout of "
            "github.com/spack/spack-packages at the tag spack/repos.yaml pins"
        )
    try:
        done = subprocess.run([spack, "--version"], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{spack} --version failed: {e}"
    version = done.stdout.split()[0] if done.stdout.split() else ""
    if done.returncode != 0 or not version[:1].isdigit() or int(version.split(".")[0]) < 1:
        return f"{spack} is not a Spack v1.x (it said {done.stdout.strip() or done.stderr.strip()!r})"
    try:
        py = subprocess.run([spack, "python", "-c", "import clingo"], capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"`{spack} python -c 'import clingo'` did not finish"
    if py.returncode != 0:
        return "Spack's python cannot import clingo (offline Spack cannot bootstrap it): pip install clingo"
    return None
