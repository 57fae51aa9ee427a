"""Containers in the launch line: the image a task's ranks run in, and the per-rank command each runtime needs.

The launcher (srun, mpirun, Flux) starts on the host and talks PMI/PMIx to the ranks; each rank then enters
the image: `srun ... [rank wrapper] RUNTIME ... IMAGE PROGRAM`. That is the hybrid model most sites use (the
image carries an MPI that speaks the host's PMIx). With `mpi="bind-host"` the host's MPI directories are bound
into the image as well, for images built against it.

The placement wrapper stays outside, on the host: it records where the rank ran (host, CPUs, GPUs) without the
image having to carry it, and what it records is what the container was given.

Runtimes: apptainer / singularity (`exec`), shifter (`--image`), podman-hpc / podman (`run --rm` with the host's
network, PID and IPC namespaces, which MPI's shared memory and PMIx need), charliecloud (`ch-run IMG --`).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import FluxmpiError

logger = logging.getLogger(__name__)


class ContainerError(FluxmpiError, ValueError):
    """A container that cannot be used as given; the message names the value and the fix."""


RUNTIMES = ("apptainer", "singularity", "shifter", "podman-hpc", "podman", "charliecloud")
# The program each runtime is started with (what a node must have on PATH).
COMMANDS = {"apptainer": "apptainer", "singularity": "singularity", "shifter": "shifter",
            "podman-hpc": "podman-hpc", "podman": "podman", "charliecloud": "ch-run"}
MPI_MODELS = ("hybrid", "bind-host")
# Runtimes whose image is a path on the shared file system (checked before submission); the others take
# an image name their own registry or image store resolves.
PATH_IMAGES = {"apptainer", "singularity", "charliecloud"}
# Variables a rank needs from its launcher and scheduler. Apptainer, Singularity, Shifter and Charliecloud
# pass the host environment through; Podman starts from an empty one and is given these by name.
PASS_THROUGH = ("PMI_*", "PMIX_*", "OMPI_*", "PRTE_*", "SLURM_*", "FLUX_*", "HYDRA_*", "MPICH_*",
                "CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "OMP_NUM_THREADS")
# Where Debian's MPIs live on the host (bind-host model); a site names its own with host_mpi_dirs.
DEFAULT_HOST_MPI_DIRS = ("/usr/lib/x86_64-linux-gnu/openmpi", "/usr/lib/x86_64-linux-gnu/pmix2")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Bind:
    source: str
    target: str
    read_only: bool = False

    @classmethod
    def parse(cls, text: str) -> "Bind":
        """SRC[:DST[:ro|rw]] as on every runtime's command line; DST defaults to SRC."""
        parts = text.split(":") if isinstance(text, str) else []
        if not 1 <= len(parts) <= 3 or not all(parts[:2]) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise ContainerError(f"bind {text!r} is not SRC[:DST[:ro|rw]]: give e.g. '/scratch' or '/data:/in:ro'")
        source, target = parts[0], parts[1] if len(parts) > 1 else parts[0]
        for what, path in (("source", source), ("target", target)):
            if not path.startswith("/"):
                raise ContainerError(f"bind {text!r}: the {what} {path!r} is not an absolute path")
        return cls(source, target, len(parts) == 3 and parts[2] == "ro")

    def spelled(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class Container:
    """The image a task's ranks run in: runtime, image, extra binds and environment, runtime options."""

    runtime: str
    image: str
    binds: tuple[Bind, ...] = ()
    env: tuple[tuple[str, str], ...] = ()      # pairs, so a Container (and the spec holding it) stays hashable
    options: tuple[str, ...] = ()
    mpi: str = "hybrid"
    host_mpi_dirs: tuple[str, ...] = DEFAULT_HOST_MPI_DIRS

    @classmethod
    def build(cls, runtime: str, image: str, binds: Sequence[str | Bind] = (), env: Mapping[str, Any] | None = None,
              options: Sequence[str] = (), mpi: str = "hybrid", host_mpi_dirs: Sequence[str] | None = None,
              check_paths: bool = True) -> "Container":
        """A checked Container. check_paths: the image path (for path-based runtimes) and every bind source must
        exist here, which holds where the submitting host shares the file system with the nodes."""
        if runtime not in RUNTIMES:
            raise ContainerError(f"container runtime {runtime!r} is not known: use one of {', '.join(RUNTIMES)}")
        if not isinstance(image, str) or not image.strip():
            raise ContainerError(f"container image {image!r} is empty: give the image ({_image_hint(runtime)})")
        if mpi not in MPI_MODELS:
            raise ContainerError(f"container mpi={mpi!r} is not a model: use 'hybrid' (the image's MPI on the host's "
                                 "PMIx) or 'bind-host' (the host's MPI bound into the image)")
        parsed = tuple(b if isinstance(b, Bind) else Bind.parse(b) for b in binds)
        clean_env = {}
        for key, value in (env or {}).items():
            if not isinstance(key, str) or not _ENV_NAME.fullmatch(key):
                raise ContainerError(f"container env name {key!r} is not a variable name")
            if not isinstance(value, (str, int, float)):
                raise ContainerError(f"container env {key}={value!r}: give a string or a number")
            clean_env[key] = str(value)
        if isinstance(options, str) or not all(isinstance(o, str) for o in options):
            raise ContainerError(f"container options {options!r}: give a list of strings, e.g. ['--nv']")
        dirs = tuple(host_mpi_dirs) if host_mpi_dirs is not None else DEFAULT_HOST_MPI_DIRS
        made = cls(runtime, image.strip(), parsed, tuple(clean_env.items()), tuple(options), mpi, dirs)
        if check_paths:
            made.check_paths()
        return made

    @classmethod
    def parse(cls, text: str, **kw: Any) -> "Container":
        """RUNTIME:IMAGE, the form of `fluxmpi run --container` and task files."""
        runtime, sep, image = text.partition(":") if isinstance(text, str) else ("", "", "")
        if not sep:
            raise ContainerError(f"--container {text!r} is not RUNTIME:IMAGE: give e.g. "
                                 f"charliecloud:/var/tmp/img or shifter:docker:ubuntu:22.04 ({', '.join(RUNTIMES)})")
        return cls.build(runtime, image, **kw)

    def check_paths(self) -> None:
        if self.runtime in PATH_IMAGES and not Path(self.image).exists():
            raise ContainerError(f"container image {self.image} does not exist: give the path of "
                                 f"{_image_hint(self.runtime)}, on a file system every node sees")
        for b in self.binds:
            if not Path(b.source).exists():
                raise ContainerError(f"container bind {b.spelled()}: the source {b.source} does not exist here; "
                                     "create it, or bind a directory the nodes share")

    def all_binds(self, extra: Sequence[str] = ()) -> list[Bind]:
        """The user's binds, then `extra` directories (the task's workdir), then the host MPI if bind-host."""
        out = list(self.binds)
        wanted = [d for d in (*extra, *(self.host_mpi_dirs if self.mpi == "bind-host" else ())) if d]
        for d in wanted:
            # Skip what is already visible: bound as such, under another directory bound at its own path, or
            # (Charliecloud) under the /tmp it shares.
            covered = any(b.target == d for b in out) or any(
                o != d and d.startswith(o.rstrip("/") + "/") for o in wanted) or any(
                b.source == b.target and d.startswith(b.target.rstrip("/") + "/") for b in out)
            if not covered and not self._shared_already(d):
                out.append(Bind(d, d))
        return out

    def _shared_already(self, path: str) -> bool:
        # ch-run shares the host's /tmp unless told -t; binding below it again would need the target in the image.
        return self.runtime == "charliecloud" and "-t" not in self.options and "--private-tmp" not in self.options \
            and (path == "/tmp" or path.startswith("/tmp/"))

    def check_targets(self, binds: Sequence[Bind]) -> None:
        """Charliecloud mounts the image read-only and cannot create a bind's target: it must be in the image."""
        if self.runtime != "charliecloud" or not Path(self.image).is_dir() or "-w" in self.options:
            return
        for b in binds:
            if not self._shared_already(b.target) and not (Path(self.image) / b.target.lstrip("/")).is_dir():
                raise ContainerError(
                    f"container bind {b.spelled()}: {b.target} does not exist in the image {self.image}, and ch-run "
                    f"cannot create it in a read-only image: mkdir -p {self.image}{b.target}, or work under /tmp "
                    "(ch-run shares the host's /tmp)")

    def argv(self, program: Sequence[str], workdir: str | None = None, site_binds: Sequence[str] = ()) -> list[str]:
        """What one rank runs: the runtime's command entering the image, then `program`.

        site_binds: directories the site says ranks need (fluxmpi.site.Site.container_binds: slurmd's spool
        directory, where its PMIx server keeps the files `srun --mpi=pmix` ranks read)."""
        binds = self.all_binds([*([workdir] if workdir else []), *site_binds])
        self.check_targets(binds)
        return _COMPOSERS[self.runtime](self, binds, workdir, [str(a) for a in program])

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "image": self.image, "binds": [b.spelled() for b in self.binds],
                "env": dict(self.env), "options": list(self.options), "mpi": self.mpi,
                "host_mpi_dirs": list(self.host_mpi_dirs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], check_paths: bool = False) -> "Container":
        unknown = set(data) - {"runtime", "image", "binds", "env", "options", "mpi", "host_mpi_dirs"}
        if unknown:
            raise ContainerError(f"container has unknown key(s) {sorted(unknown)}: use runtime, image, binds, env, "
                                 "options, mpi, host_mpi_dirs")
        if "runtime" not in data or "image" not in data:
            raise ContainerError(f"container {dict(data)!r} needs both runtime and image")
        return cls.build(data["runtime"], data["image"], data.get("binds", ()), data.get("env"),
                         data.get("options", ()), data.get("mpi", "hybrid"), data.get("host_mpi_dirs"),
                         check_paths=check_paths)

    def __str__(self) -> str:
        return f"{self.runtime}:{self.image}"


def _image_hint(runtime: str) -> str:
    return {"apptainer": "a .sif file or sandbox directory", "singularity": "a .sif file or sandbox directory",
            "charliecloud": "an unpacked image directory or SquashFS file", "shifter": "e.g. docker:ubuntu:22.04",
            }.get(runtime, "an image name, e.g. docker.io/library/debian:12")


def _apptainer(c: Container, binds: list[Bind], workdir: str | None, program: list[str]) -> list[str]:
    argv = [c.runtime, "exec"]
    for b in binds:
        argv += ["--bind", b.spelled()]
    for k, v in c.env:
        argv += ["--env", f"{k}={v}"]
    if workdir:
        argv += ["--pwd", workdir]
    return argv + list(c.options) + [c.image] + program


def _shifter(c: Container, binds: list[Bind], workdir: str | None, program: list[str]) -> list[str]:
    argv = ["shifter", f"--image={c.image}"]
    for b in binds:
        argv.append(f"--volume={b.source}:{b.target}" + (":ro" if b.read_only else ""))
    for k, v in c.env:
        argv.append(f"--env={k}={v}")
    if workdir:
        argv.append(f"--workdir={workdir}")
    return argv + list(c.options) + ["--"] + program


def _podman(c: Container, binds: list[Bind], workdir: str | None, program: list[str]) -> list[str]:
    # Host namespaces: ranks on one node share memory (IPC), see each other's PIDs and reach the
    # launcher's PMIx server and each other over the host's network.
    argv = [c.runtime, "run", "--rm", "--network=host", "--pid=host", "--ipc=host"]
    for b in binds:
        argv += ["-v", b.spelled()]
    argv += [f"--env={pattern}" for pattern in PASS_THROUGH]
    for k, v in c.env:
        argv.append(f"--env={k}={v}")
    if workdir:
        argv += ["-w", workdir]
    return argv + list(c.options) + [c.image] + program


def _charliecloud(c: Container, binds: list[Bind], workdir: str | None, program: list[str]) -> list[str]:
    # ch-run shares the host's /tmp unless -t, and passes the host environment through. It refuses to start
    # without $USER, which Slurm steps started from a Parsl worker do not have: the ranks run as the user who
    # composes this line, so that name is given.
    argv = ["env", f"USER={pwd.getpwuid(os.getuid()).pw_name}", "ch-run"]
    for b in binds:
        if b.read_only:
            raise ContainerError(f"container bind {b.spelled()}: Charliecloud binds cannot be read-only "
                                 "(ch-run -b has no flag for it); drop ':ro'")
        argv.append(f"--bind={b.source}:{b.target}")
    for k, v in c.env:
        argv.append(f"--set-env={k}={v}")
    if workdir:
        argv.append(f"--cd={workdir}")
    return argv + list(c.options) + [c.image, "--"] + program


_COMPOSERS = {"apptainer": _apptainer, "singularity": _apptainer, "shifter": _shifter, "podman-hpc": _podman,
              "podman": _podman, "charliecloud": _charliecloud}


def site_binds(site: Any, path: str) -> tuple[str, ...]:
    """What a container's ranks must see of the host on a launch path: the site's directories (slurmd's PMIx
    files, fluxmpi.site.Site.container_binds) and, on the Flux paths, flux-core's libraries, whose PMI library
    Open MPI 4 inside the image dlopens."""
    binds = tuple(getattr(site, "container_binds", ()))
    if path in ("flux", "flux-jobs"):
        from .launch.flux.install import check_flux
        binds += (check_flux().library_dir,)
    return binds
