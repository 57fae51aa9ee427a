"""Find the Flux install the Flux launch paths use, and refuse a broken one before anything is submitted.

Three parts must be present and agree: the `flux` command (it starts the brokers), the Python bindings
(`import flux`: Parsl's FluxExecutor submits through them), and the libflux-core those bindings load. The PyPI
`flux-python` wheel is only the bindings: built for one flux-core release, it loads whatever libflux-core.so.2
the system has, so a version mismatch shows up late and obscurely unless it is checked here.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ...site import SiteError

logger = logging.getLogger(__name__)

FLUX_VAR = "FLUXMPI_FLUX"            # the flux command, or the prefix it is installed under
# Where flux-core is commonly installed when it is not on PATH (source builds, site installs).
COMMON_PREFIXES = ("/usr/local", "/opt/flux", "/opt/flux-core", "/usr")
VERSION_TIMEOUT = 20.0


class FluxSetupError(SiteError):
    """Flux, its Python bindings or their versions are missing or disagree; says which and how to fix it."""


@dataclass(frozen=True)
class FluxInstall:
    """A checked Flux install: the command, its release, and what the Python bindings loaded."""
    flux: str                          # absolute path of the `flux` command
    version: str                       # release of the flux commands (`flux version`)
    library_version: str | None = None   # libflux-core the bindings loaded (None: not checked)
    bindings_version: str | None = None  # flux-python package release (None: bindings from flux-core itself)

    @property
    def library_dir(self) -> str:
        """flux-core's lib/: its flux/libpmi.so, which Open MPI 4's flux component dlopens
        (FLUX_PMI_LIBRARY_PATH), and the libflux-* it links. Ranks inside a container must see it (the
        image then needs libjansson, which libpmi.so links too)."""
        return str(Path(self.flux).resolve().parent.parent / "lib")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_flux(flux_path: str | os.PathLike | None = None, env: dict | None = None) -> str:
    """The absolute path of the `flux` command.

    Looked for in order: `flux_path`, $FLUXMPI_FLUX (either may be the command or its install prefix),
    `flux` on PATH, then COMMON_PREFIXES/bin/flux. An explicit value that does not lead to an executable is an
    error (not a fallback), so a typo is never silently replaced by another install.
    """
    env = os.environ if env is None else env
    for source, value in ((f"flux_path={flux_path!r}", flux_path), (f"${FLUX_VAR}", env.get(FLUX_VAR))):
        if value:
            given = Path(value).expanduser()
            for candidate in (given, given / "bin" / "flux"):
                if _executable(candidate):
                    return str(candidate.resolve())
            raise FluxSetupError(
                f"{source} is {str(value)!r}, which is neither the flux command nor a prefix with bin/flux: "
                f"give the path of an installed `flux` (e.g. /usr/local/bin/flux) or unset it")
    on_path = shutil.which("flux", path=env.get("PATH", os.defpath))
    if on_path:
        return str(Path(on_path).resolve())
    tried = []
    for prefix in COMMON_PREFIXES:
        candidate = Path(prefix) / "bin" / "flux"
        tried.append(str(candidate))
        if _executable(candidate):
            return str(candidate.resolve())
    where = f", and none at {', '.join(tried)}" if tried else ""
    raise FluxSetupError(
        f"flux-core not found: no `flux` on PATH, ${FLUX_VAR} unset{where}. "
        f"Install flux-core (build it, use Spack `flux-core` or the site's module; PyPI's `flux-core` is another "
        f"project), "
        f"then put its bin/ on PATH or set {FLUX_VAR}=/path/to/bin/flux")


_RELEASE = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def release(text: str | None) -> str | None:
    """'0.88.0' from '0.88.0', 'v0.88.0-12-gabc' or '0.88.0.post1'; None if no release number is in it."""
    match = _RELEASE.search(text or "")
    return ".".join(match.groups()) if match else None


def parse_flux_version(output: str) -> str:
    """The commands' release from `flux version` output ('commands:    0.88.0' line)."""
    for line in output.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "commands" and release(value):
            return release(value)
    raise FluxSetupError(f"`flux version` printed no 'commands: X.Y.Z' line; got: {output.strip()[:200]!r}")


def flux_command_version(flux: str, timeout: float = VERSION_TIMEOUT) -> str:
    try:
        proc = subprocess.run([flux, "version"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FluxSetupError(f"`{flux} version` did not answer within {timeout:.0f}s") from None
    except OSError as err:
        raise FluxSetupError(f"`{flux} version` could not run: {err}") from None
    if proc.returncode != 0:
        raise FluxSetupError(f"`{flux} version` failed (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()[:300]}")
    return parse_flux_version(proc.stdout)


def bindings_versions(version_hint: str = "X.Y.Z") -> tuple[str, str | None]:
    """(libflux-core release the bindings loaded, flux-python release or None). Raises if they do not import."""
    try:
        import flux  # noqa: F401
        import flux.job  # noqa: F401  (what Parsl's FluxExecutor uses)
        from flux.core.inner import raw
    except (ImportError, OSError) as err:
        raise FluxSetupError(
            f"the Flux Python bindings do not import in this Python ({err}). Install the ones matching the flux "
            f"commands: `pip install flux-python=={version_hint}` (it needs libflux-core.so.2 from the flux-core "
            f"install on the loader path: ldconfig or LD_LIBRARY_PATH), or add flux-core's own "
            f"lib/python3.X/site-packages to PYTHONPATH") from None
    library = raw.flux_core_version_string()
    library = library.decode() if isinstance(library, bytes) else str(library)
    try:
        from importlib.metadata import PackageNotFoundError, version
        package = version("flux-python")
    except PackageNotFoundError:
        package = None
    return library, package


def check_versions(install: FluxInstall) -> None:
    """Refuse bindings or a library from another release than the commands (patch level included)."""
    want = release(install.version)
    found = {"libflux-core loaded by the bindings": install.library_version,
             "flux-python package": install.bindings_version}
    bad = {what: got for what, got in found.items() if got is not None and release(got) != want}
    if bad:
        detail = ", ".join(f"{what} is {got}" for what, got in bad.items())
        raise FluxSetupError(
            f"Flux versions disagree: {install.flux} is {install.version} but {detail}. Use one release "
            f"throughout: `pip install flux-python=={want}`, or point {FLUX_VAR} at the flux-core install whose "
            f"library the bindings load")


def check_flux(flux_path: str | os.PathLike | None = None) -> FluxInstall:
    """Find flux, import the bindings, and check the versions agree; returns the install or raises."""
    flux = find_flux(flux_path)
    version = flux_command_version(flux)
    library, package = bindings_versions(version)
    install = FluxInstall(flux=flux, version=version, library_version=library, bindings_version=package)
    check_versions(install)
    return install
