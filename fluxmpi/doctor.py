"""`fluxmpi doctor`: what this machine offers for node-spanning MPI under Parsl, and (probe) what really works.

The report part asks each tool about itself: Parsl, Flux (command, bindings, and whether their versions agree),
Open MPI and MPICH with the process-management interfaces (PMI) they were built for, Slurm's MPI plugins, ssh
to the local cluster's nodes, and the env file workers source.

The probe part runs one tiny MPI job (the C app of mpi_apps, 1 rank on each of 2 nodes) through every launcher
with every MPI, on the local cluster, and says which pairs work and why the others do not. A job "works" only if
every rank reports the world size it should: under a PMI the MPI does not speak, MPICH starts one singleton per
rank that all exit 0, which an exit-code check would count as success.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import placement, spackenv
from .cluster import LocalCluster
from .cluster.processes import pids_with_args, terminate
from .container import COMMANDS as container_commands
from .container import Container, ContainerError
from .errors import FluxmpiError
from .mpi_apps import CompileError, MpiAppError, app_command, compile_c_app

logger = logging.getLogger(__name__)

COMMAND_TIMEOUT = 20.0
DEFAULT_PROBE_TIMEOUT = 60.0
PROBE_JOB_NAME = "fluxmpi-doctor"
PROBE_NODES = 2

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"


class DoctorError(FluxmpiError, ValueError):
    """Bad input for the doctor (probe timeout, node count); the message names the value and the fix."""


@dataclass
class Check:
    area: str
    status: str                 # ok, warn, fail, skip
    summary: str
    details: list[str] = field(default_factory=list)


@dataclass
class Answer:
    """What a command said: rc None = not installed, rc -1 = did not answer within the timeout."""
    argv: list[str]
    rc: int | None
    out: str = ""
    err: str = ""

    @property
    def text(self) -> str:
        return (self.out + "\n" + self.err).strip()


def ask(argv: list[str], env: dict | None = None, timeout: float = COMMAND_TIMEOUT) -> Answer:
    if shutil.which(argv[0], path=(env or os.environ).get("PATH")) is None:
        return Answer(argv, None)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Answer(argv, -1, err=f"no answer within {timeout:.0f}s")
    return Answer(argv, proc.returncode, proc.stdout, proc.stderr)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


# --- the report -----------------------------------------------------------------------------------

def check_parsl() -> Check:
    try:
        import parsl
    except ImportError as err:
        return Check("parsl", FAIL, f"does not import ({err})", ["pip install 'parsl>=2026.10.26'"])
    return Check("parsl", OK, f"{parsl.__version__} at {Path(parsl.__file__).parent}")


def check_flux() -> Check:
    from .launch.flux import install as fi  # reuses the Flux path's own checks
    try:
        flux = fi.find_flux()
    except fi.FluxSetupError as err:
        return Check("flux", SKIP, "flux-core not found (the Flux launch paths cannot run)", [str(err)])
    try:
        version = fi.flux_command_version(flux)
    except fi.FluxSetupError as err:
        return Check("flux", FAIL, f"{flux} does not work", [str(err)])
    try:
        library, package = fi.bindings_versions(version)
    except fi.FluxSetupError as err:
        return Check("flux", FAIL, f"{flux} {version}; Python bindings do not import", [str(err)])
    install = fi.FluxInstall(flux=flux, version=version, library_version=library, bindings_version=package)
    details = [f"bindings load libflux-core {library}"
               + (f" (flux-python {package})" if package else " (flux-core's own bindings)")]
    try:
        fi.check_versions(install)
    except fi.FluxSetupError as err:
        return Check("flux", FAIL, f"{flux} {version}; versions disagree", [*details, str(err)])
    return Check("flux", OK, f"{flux} {version}, bindings match", details)


def openmpi_pmi(ompi_info_parsable: str) -> list[str]:
    """The PMI flavours an Open MPI 4.x build can use, from `ompi_info --parsable` (its pmix components)."""
    components = sorted({line.split(":")[2] for line in ompi_info_parsable.splitlines()
                         if line.startswith("mca:pmix:") and len(line.split(":")) > 2})
    meaning = {"ext3x": "PMIx (external PMIx library)", "ext2x": "PMIx (external PMIx 2)",
               "pmix3x": "PMIx (internal)", "s1": "Slurm PMI-1", "s2": "Slurm PMI-2", "flux": "Flux PMI",
               "cray": "Cray PMI"}
    return [f"{c}: {meaning[c]}" for c in components if c in meaning]


def check_openmpi(env: dict | None = None) -> Check:
    version = ask(["mpirun", "--version"], env)
    if version.rc is None:
        return Check("Open MPI", SKIP, "mpirun not installed (Debian: openmpi-bin libopenmpi-dev)")
    info = ask(["ompi_info", "--parsable"], env)
    pmis = openmpi_pmi(info.out) if info.rc == 0 else []
    details = [f"PMI support: {', '.join(pmis) or 'unknown (ompi_info failed)'}"]
    if pmis and not any(p.startswith(("s1", "s2")) for p in pmis):
        details.append("no Slurm PMI-1/PMI-2 component: under srun use --mpi=pmix, not --mpi=pmi2")
    status = OK if version.rc == 0 else FAIL
    return Check("Open MPI", status, _first_line(version.text) or f"mpirun exit {version.rc}", details)


def check_mpich(env: dict | None = None) -> Check:
    version = ask(["mpichversion"], env)
    hydra = ask(["mpiexec.mpich", "-info"], env)
    if version.rc is None and hydra.rc is None:
        return Check("MPICH", SKIP, "not installed (Debian: mpich libmpich-dev)")
    fields = {}
    for line in (version.out + "\n" + hydra.out).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    summary = f"MPICH {fields.get('MPICH Version', '?')} ({fields.get('MPICH Device', 'device ?')})"
    details = [f"hydra process manager: {fields.get('Process Manager', '?')} (PMI-1/PMI-2 wire protocol)",
               f"hydra launchers: {fields.get('Launchers available', '?')}",
               f"hydra resource managers: {fields.get('Resource management kernels available', '?')}"]
    return Check("MPICH", OK if hydra.rc == 0 else WARN, summary, details)


def slurm_mpi_plugins(text: str) -> list[str]:
    """Plugin names from `srun --mpi=list` (22.05: a header, one name per line, then "specific pmix plugin
    versions available: pmix_v4")."""
    names = []
    for line in text.splitlines():
        line = line.strip().removeprefix("srun:").strip()
        if line.startswith("specific") and ":" in line:
            names += [f"({v.strip()})" for v in line.split(":", 1)[1].split(",") if v.strip()]
        elif re.fullmatch(r"[a-z][a-z0-9_]*", line):
            names.append(line)
    return names


# What every Slurm command says when it finds no slurm.conf (and no DNS SRV record or configless slurmctld).
NO_SLURM_CONFIG = "Could not establish a configuration source"


def check_slurm(env: dict | None = None) -> Check:
    version = ask(["srun", "--version"], env)
    if version.rc is None:
        return Check("slurm", SKIP, "srun not installed (not a Slurm login node)")
    def unconfigured(where: str) -> Check:
        return Check("slurm", SKIP, f"{_first_line(version.text)} installed, but no Slurm is configured here "
                     f"({where}): start the local cluster with `fluxmpi cluster up`, or point SLURM_CONF at "
                     f"your cluster's slurm.conf")
    conf = (env or os.environ).get("SLURM_CONF")
    if conf and not Path(conf).is_file():   # srun would retry reading it for a minute
        return unconfigured(f"SLURM_CONF={conf} does not exist")
    plugins = ask(["srun", "--mpi=list"], env)
    if plugins.rc != 0 and NO_SLURM_CONFIG in plugins.text:
        return unconfigured(f"SLURM_CONF={conf}" if conf else "no SLURM_CONF, no /etc/slurm/slurm.conf")
    if plugins.rc != 0:
        return Check("slurm", FAIL, f"{_first_line(version.text)}; `srun --mpi=list` failed",
                     [plugins.text[-400:] or plugins.err])
    return Check("slurm", OK, _first_line(version.text),
                 [f"MPI plugins (srun --mpi=list): {', '.join(slurm_mpi_plugins(plugins.text))}"])


def check_ssh(cluster: LocalCluster | None, timeout: float = 15) -> Check:
    if cluster is None:
        return Check("ssh", SKIP, "no local cluster up; not checked")
    wrapper = str(cluster.layout.ssh_wrapper)
    bad, good = [], []
    for node in cluster.layout.node_names:
        answer = ask([wrapper, node, "hostname"], cluster.environ(), timeout)
        if answer.rc == 0 and answer.out.strip() == node:
            good.append(node)
        else:
            bad.append(f"{node}: {answer.text[-200:] or f'exit {answer.rc}'}")
    status = OK if not bad else FAIL
    return Check("ssh", status, f"{len(good)}/{len(good) + len(bad)} nodes of {cluster.layout.name} answer "
                 f"({wrapper})", bad)


def check_env_file() -> Check:
    try:
        path = spackenv.find_env_file()
    except spackenv.EnvFileError as err:
        return Check("env file", SKIP, "none found (optional: the blocks then use this machine's tools)",
                     [str(err)])
    try:
        report = spackenv.validate_env_file(path)
    except spackenv.EnvFileError as err:
        return Check("env file", FAIL, f"{path} is not usable", [str(err)])
    return Check("env file", OK, str(path), report.summary().splitlines()[1:])


# Each container runtime's command and how it tells its version.
RUNTIME_VERSION_ARGV = {runtime: [command, "--help" if runtime == "shifter" else "--version"]
                        for runtime, command in container_commands.items()}


def check_containers(env: dict | None = None) -> Check:
    found, details = [], []
    # ch-run will not even print its version without $USER (fluxmpi.container gives it one the same way).
    with_user = {**(env or os.environ), "USER": getpass.getuser()}
    for runtime, argv in RUNTIME_VERSION_ARGV.items():
        answer = ask(argv, with_user)
        if answer.rc is None:
            continue
        version = _first_line(answer.text) if answer.rc == 0 else f"does not answer (exit {answer.rc})"
        found.append(runtime)
        details.append(f"{runtime}: {version}")
    if not found:
        return Check("containers", SKIP, "no container runtime found (optional: tasks then run on the host)")
    details.append("probe one image with: fluxmpi doctor --probe --image RUNTIME:IMAGE")
    return Check("containers", OK, ", ".join(found), details)


def run_checks(cluster: LocalCluster | None) -> list[Check]:
    env = cluster.environ() if cluster else None
    return [check_parsl(), check_flux(), check_openmpi(env), check_mpich(env), check_slurm(env),
            check_ssh(cluster), check_env_file(), check_containers(env)]


def render_checks(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():<5} {c.area:<9} {c.summary}")
        lines += [f"{'':<16}{d}" for d in c.details]
    return "\n".join(lines)


# --- the probe ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MPI:
    key: str
    label: str
    mpicc: str


MPIS = (MPI("openmpi", "Open MPI", "mpicc"), MPI("mpich", "MPICH", "mpicc.mpich"))


@dataclass(frozen=True)
class Launcher:
    key: str
    label: str
    needs: str                                   # the executable it cannot run without
    argv: Callable[[int, list[str], LocalCluster], list[str]]


def _srun(mpi: str):
    return lambda n, app, c: ["srun", f"--job-name={PROBE_JOB_NAME}", f"--mpi={mpi}", f"-N{n}", f"-n{n}", *app]


PROBES = (
    Launcher("srun-pmix", "srun --mpi=pmix", "srun", _srun("pmix")),
    Launcher("srun-pmi2", "srun --mpi=pmi2", "srun", _srun("pmi2")),
    Launcher("mpirun", "mpirun (Open MPI) in salloc", "mpirun",
             lambda n, app, c: ["salloc", f"--job-name={PROBE_JOB_NAME}", f"-N{n}", f"-n{n}",
                                "mpirun", "-n", str(n), *app]),
    # Hydra's proxies call mpiexec back by this host's name, which inside a node is the node itself: give it
    # the address the nodes reach this machine on.
    Launcher("mpiexec-mpich", "mpiexec.mpich (hydra) in salloc", "mpiexec.mpich",
             lambda n, app, c: ["salloc", f"--job-name={PROBE_JOB_NAME}", f"-N{n}", f"-n{n}",
                                "mpiexec.mpich", "-localhost", c.layout.login_address, "-n", str(n), *app]),
    Launcher("flux", "flux run in flux start (srun)", "flux",
             lambda n, app, c: ["srun", f"--job-name={PROBE_JOB_NAME}", "--mpi=pmi2", f"-N{n}",
                                "--ntasks-per-node=1", "flux", "start", "flux", "run", f"-N{n}", f"-n{n}", *app]),
)


@dataclass
class ProbeResult:
    launcher: str
    mpi: str
    works: bool | None           # None: not run (launcher or compiler missing)
    reason: str
    seconds: float = 0.0
    command: str = ""


# Known failure messages -> what they mean; checked in order against the probe's output.
KNOWN_FAILURES = (
    (re.compile(r"OMPI was not built with SLURM's PMI support"),
     lambda m: "OMPI was not built with SLURM's PMI support (this Open MPI speaks PMIx: use srun --mpi=pmix)"),
    (re.compile(r'unable to connect from "?\S+?"? to "?(?P<host>[^" ]+)"?'),
     lambda m: f"hydra's proxies cannot reach mpiexec at {m['host']!r} (give -localhost <address the nodes "
               "reach this machine on>)"),
    (re.compile(r"(?:invalid|Couldn't find the specified plugin name for) mpi/?(?P<p>\S*)", re.I),
     lambda m: f"Slurm has no MPI plugin {m['p'] or ''}".strip()),
    (re.compile(r"PMIX? ?(?:ERROR|error)[^\n]*"), lambda m: m.group(0).strip()),
)


def verdict(rc: int | None, stdout: str, stderr: str, ranks: int, nodes: int) -> tuple[bool, str]:
    """(works, reason) for one probe from what it printed. Works = every rank ran in one world of `ranks`."""
    records = placement.parse_lines(stdout.splitlines(), ignore_non_json=True).records
    sizes = sorted({r.size for r in records})
    hosts = {r.host for r in records}
    if records and sizes == [1] and ranks > 1:
        return False, (f"{len(records)} singletons: every rank saw world size 1 (expected {ranks}); the launcher's "
                       "PMI is not one this MPI speaks, so each rank ran alone (and exited 0)")
    if rc == 0 and len(records) == ranks and sizes == [ranks] \
            and sorted(r.rank for r in records) == list(range(ranks)) and len(hosts) == nodes:
        return True, f"{ranks} ranks, world size {ranks}, on {nodes} nodes"
    text = stdout + "\n" + stderr
    for pattern, explain in KNOWN_FAILURES:
        match = pattern.search(text)
        if match:
            return False, explain(match)
    if rc == 0:
        return False, (f"exit 0 but {len(records)} rank records (sizes {sizes}, hosts {sorted(hosts)}), "
                       f"expected {ranks} ranks of world size {ranks} on {nodes} nodes")
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("{")
             and "Exited with exit code" not in line and not line.startswith(("salloc:", "-----"))]
    return False, f"exit {rc}: {lines[-1][:200] if lines else 'no error output'}"


def _run_bounded(argv: list[str], env: dict, timeout: float) -> tuple[int | None, str, str]:
    """Run in a session of its own; on timeout SIGTERM it (srun/salloc then cancel their job), then SIGKILL."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                out, err = proc.communicate(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            out, err = "", ""
        return None, out or "", err or ""


def probe(cluster: LocalCluster, timeout: float = DEFAULT_PROBE_TIMEOUT, nodes: int = PROBE_NODES,
          log: Callable[[str], None] | None = None, images: Sequence[Container] = ()) -> list[ProbeResult]:
    """Run the tiny MPI job through every launcher with every MPI on `cluster`; each run bounded by `timeout`.

    images: also run it inside each of these (the host's Open MPI build of the app, in the image, through
    `srun --mpi=pmix`): whether the image's runtime starts on the nodes and its MPI libraries talk to the
    host's PMIx."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 5 <= timeout <= 3600:
        raise DoctorError(f"--timeout {timeout!r}: give seconds from 5 to 3600 for each probe")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 2 <= nodes <= cluster.layout.nodes:
        raise DoctorError(f"probe nodes {nodes!r}: give 2 to {cluster.layout.nodes} (the cluster's nodes)")
    env = cluster.environ()
    results: list[ProbeResult] = []
    # The binaries must be where the nodes see them: the cluster's state dir is on the shared filesystem.
    work = Path(tempfile.mkdtemp(prefix="doctor-", dir=cluster.layout.state_dir))
    try:
        binaries: dict[str, Path | str] = {}
        for mpi in MPIS:
            try:
                binaries[mpi.key] = compile_c_app(work, mpicc=mpi.mpicc, env=env, name=f"hello_{mpi.key}")
            except (MpiAppError, CompileError) as err:
                binaries[mpi.key] = str(err).splitlines()[0]
        for launcher in PROBES:
            for mpi in MPIS:
                binary = binaries[mpi.key]
                if not isinstance(binary, Path):
                    results.append(ProbeResult(launcher.label, mpi.label, None, f"not compiled: {binary}"))
                    continue
                if shutil.which(launcher.needs, path=env.get("PATH")) is None:
                    results.append(ProbeResult(launcher.label, mpi.label, None, f"{launcher.needs} not installed"))
                    continue
                app = app_command("c", task=f"probe-{launcher.key}-{mpi.key}", out_dir=None, c_binary=binary)
                argv = launcher.argv(nodes, app, cluster)
                start = time.monotonic()
                rc, out, err = _run_bounded(argv, env, timeout)
                seconds = time.monotonic() - start
                if rc is None:
                    works, reason = False, f"did not finish within {timeout:.0f}s (killed)"
                    partial, detail = verdict(1, out, err, nodes, nodes)
                    if not partial and not detail.startswith("exit 1: no error"):
                        reason += f"; {detail}"
                else:
                    works, reason = verdict(rc, out, err, nodes, nodes)
                results.append(ProbeResult(launcher.label, mpi.label, works, reason, seconds, shlex.join(argv)))
                if log:
                    log(f"  {launcher.label} + {mpi.label}: {'works' if works else 'fails'} ({seconds:.1f}s)")
        for image in images:
            results.append(_probe_image(cluster, image, binaries.get("openmpi"), work, env, timeout, nodes))
            if log:
                r = results[-1]
                log(f"  {r.launcher}: {'works' if r.works else 'fails'} ({r.seconds:.1f}s)")
    finally:
        # A launcher killed at its timeout can leave its job or helpers (hydra's mpiexec) behind.
        leftovers = subprocess.run(["squeue", "-h", "-n", PROBE_JOB_NAME, "-u", getpass.getuser(), "-o", "%i"],
                                   capture_output=True, text=True, env=env, timeout=30).stdout.split()
        if leftovers:
            subprocess.run(["scancel", *leftovers], capture_output=True, env=env, timeout=30)
        terminate(pids_with_args(work), grace=5)
        shutil.rmtree(work, ignore_errors=True)
    return results


def _probe_image(cluster: LocalCluster, image: Container, binary, work: Path, env: dict, timeout: float,
                 nodes: int) -> ProbeResult:
    label = f"{image.runtime} {image.image} (srun --mpi=pmix)"
    if not isinstance(binary, Path):
        return ProbeResult(label, "Open MPI", None, f"not compiled: {binary}")
    if shutil.which(RUNTIME_VERSION_ARGV[image.runtime][0], path=env.get("PATH")) is None:
        return ProbeResult(label, "Open MPI", None, f"{RUNTIME_VERSION_ARGV[image.runtime][0]} not installed")
    app = app_command("c", task=f"probe-{image.runtime}", out_dir=None, c_binary=binary)
    try:
        inside = image.argv(app, workdir=str(work), site_binds=(str(cluster.layout.state_dir),))
    except ContainerError as err:
        return ProbeResult(label, "Open MPI", False, str(err))
    argv = _srun("pmix")(nodes, inside, cluster)
    start = time.monotonic()
    rc, out, err = _run_bounded(argv, env, timeout)
    seconds = time.monotonic() - start
    if rc is None:
        return ProbeResult(label, "Open MPI", False, f"did not finish within {timeout:.0f}s (killed)", seconds,
                           shlex.join(argv))
    works, reason = verdict(rc, out, err, nodes, nodes)
    return ProbeResult(label, "Open MPI", works, reason, seconds, shlex.join(argv))


def render_matrix(results: list[ProbeResult], cluster_name: str = "", nodes: int = PROBE_NODES) -> str:
    launchers = list(dict.fromkeys(r.launcher for r in results))
    mpis = list(dict.fromkeys(r.mpi for r in results))
    cell = {(r.launcher, r.mpi): r for r in results}
    notes: list[str] = []
    width = max(len(x) for x in launchers) + 2
    head = f"MPI launch probe{' on cluster ' + cluster_name if cluster_name else ''}: 1 rank on each of {nodes} nodes"
    rows = [head, f"{'launcher':<{width}}" + "".join(f"{m:<14}" for m in mpis).rstrip()]
    for launcher in launchers:
        row = f"{launcher:<{width}}"
        for mpi in mpis:
            r = cell.get((launcher, mpi))
            if r is None:
                row += f"{'-':<14}"
                continue
            if r.works:
                row += f"{f'works {r.seconds:.1f}s':<14}"
                continue
            notes.append(f"[{len(notes) + 1}] {launcher} + {mpi}: {r.reason}")
            row += f"{('FAILS' if r.works is False else 'not run') + f' [{len(notes)}]':<14}"
        rows.append(row.rstrip())
    return "\n".join(rows + [""] + notes)
