"""The local cluster with OpenPBS instead of Slurm: `fluxmpi cluster up --scheduler pbs`.

The nodes, their network and sshd are the Slurm cluster's (fluxmpi.cluster.local); what differs is the batch
system. On the login side a PBS server (with the PostgreSQL datastore it starts itself), scheduler and comm; in
each node's namespace a pbs_mom with its own PBS_HOME and pbs.conf. Every daemon runs in the foreground (`-N`)
so its pid is recorded like slurmd's. OpenPBS is not packaged for Debian: it comes from the site, or a build the
user points at (`--pbs-exec`, `$FLUXMPI_PBS_EXEC`, else /opt/openpbs or /opt/pbs); fluxmpi never builds it.

Found when bringing OpenPBS 23.06 up this way (the project's NOTES.md has the rest):
- PBS refuses a PBS_HOME with a world-writable directory above it, so the homes live under /var/lib/fluxmpi/pbs,
  not in the cluster's state directory under /var/tmp.
- Each complex gets its own ports, from the cluster's tag, so two local PBS clusters do not meet.
- Every PBS host name must resolve to a non-loopback address: the server is the cluster's control host, whose
  name the cluster's /etc/hosts block gives the bridge address.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from .. import pbs
from . import network
from .layout import ClusterLayout
from .local import ClusterError, LocalCluster
from .processes import alive, command_of, pids_with_args, spawn_detached, terminate, wait_gone

logger = logging.getLogger(__name__)

PBS_EXEC_ENV = "FLUXMPI_PBS_EXEC"
PBS_EXEC_GUESSES = ("/opt/openpbs", "/opt/pbs")
PBS_ROOT_ENV = "FLUXMPI_PBS_ROOT"
DEFAULT_PBS_ROOT = "/var/lib/fluxmpi/pbs"

DATASTORE_USER = "postgres"  # the OS user PBS runs its PostgreSQL as (Debian's postgresql package makes it)
CREATE_TIMEOUT = 120.0       # bound on initialising the datastore (initdb, schema)


def find_pbs_exec(given: str | None = None) -> Path | None:
    """The OpenPBS installation to use (its PBS_EXEC), or None: `given`, else $FLUXMPI_PBS_EXEC, else the first of
    /opt/openpbs, /opt/pbs that has sbin/pbs_server."""
    for candidate in ([given] if given else []) or [os.environ.get(PBS_EXEC_ENV) or "", *PBS_EXEC_GUESSES]:
        if candidate and (Path(candidate) / "sbin" / "pbs_server").is_file():
            return Path(candidate)
    return None


def pbs_unavailable_reason(given: str | None = None) -> str | None:
    """Why a local PBS cluster cannot start here, or None."""
    found = find_pbs_exec(given)
    if found is None:
        where = given or os.environ.get(PBS_EXEC_ENV) or " or ".join(PBS_EXEC_GUESSES)
        return (f"no OpenPBS at {where} (sbin/pbs_server): OpenPBS is not packaged for Debian; build it (see "
                f"docs/pbs.md) or point --pbs-exec / ${PBS_EXEC_ENV} at a PBS_EXEC")
    if not shutil.which("pg_config") or not _pg_bindir():
        return "PostgreSQL's server programs are missing (PBS's datastore): apt-get install postgresql"
    try:
        import pwd
        pwd.getpwnam(DATASTORE_USER)
    except KeyError:
        return f"no OS user {DATASTORE_USER!r} to run PBS's datastore as: apt-get install postgresql"
    return None


def _pg_bindir() -> str:
    proc = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
    path = proc.stdout.strip()
    return path if proc.returncode == 0 and (Path(path) / "initdb").exists() else ""


def pbs_version(pbs_exec: Path) -> str:
    """"23.06.06" from `qstat --version` (pbs_postinstall wants it; sbin/pbs_server is a script that needs a conf)."""
    proc = subprocess.run([str(pbs_exec / "bin" / "qstat"), "--version"], capture_output=True, text=True, timeout=10)
    text = (proc.stdout + proc.stderr).strip()
    if "=" not in text:
        raise ClusterError(f"`{pbs_exec}/bin/qstat --version` printed no version: {text!r}")
    return text.split("=", 1)[1].strip()


def pbs_root(layout: ClusterLayout) -> Path:
    return Path(os.environ.get(PBS_ROOT_ENV, DEFAULT_PBS_ROOT)) / layout.name


def ports(layout: ClusterLayout) -> dict[str, int]:
    """This complex's ports: PBS's defaults (15001 server, 15002-3 mom, 15007 datastore, 17001 comm) moved by
    the cluster's tag, away from a site's own PBS on this machine."""
    base = 20000 + 10 * layout.tag
    return {"server": base + 1, "mom": base + 2, "manager": base + 3, "datastore": base + 7, "comm": base + 5}


class LocalPBSCluster(LocalCluster):
    """A local cluster whose batch system is OpenPBS (see the module docstring)."""

    NODE_DAEMON = "pbs_mom"
    READY_STATE = "free"

    # --- where things are -------------------------------------------------------------------
    @property
    def pbs_exec(self) -> Path:
        found = find_pbs_exec(self.layout.pbs_exec or None)
        if found is None:
            raise ClusterError(pbs_unavailable_reason(self.layout.pbs_exec or None) or "no OpenPBS found")
        return found

    def home(self, daemon: str) -> Path:
        """PBS_HOME of "server" or of a node's mom."""
        return pbs_root(self.layout) / daemon

    def conf(self, daemon: str) -> Path:
        return self.layout.pbs_conf(daemon)

    @property
    def mpich_bin(self) -> Path:
        """A directory whose `mpiexec` is MPICH's hydra."""
        return self.layout.state_dir / "mpich-bin"

    def env(self) -> dict[str, str]:
        lay = self.layout
        env = super().env()
        env.pop("SLURM_CONF")
        # PBS's commands, and `mpiexec` meaning MPICH's (Debian's alternative is Open MPI's): what Parsl's
        # MpiExecLauncher and $PARSL_MPI_PREFIX call, as on a PBS site whose mpiexec is its MPI's.
        front = [str(self.pbs_exec / "bin"), str(self.mpich_bin)]
        rest = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(":") if p not in front]
        env.update({
            "PBS_CONF_FILE": str(self.conf("server")),
            "PATH": ":".join(front + rest),
            # MPICH's hydra reaches the other nodes of a job with the cluster's ssh (no PBS TM in Debian's build).
            "HYDRA_LAUNCHER": "ssh",
            "HYDRA_LAUNCHER_EXEC": str(lay.ssh_wrapper),
            "OMPI_MCA_plm_rsh_agent": str(lay.ssh_wrapper),
        })
        return env

    def pbs(self, argv: list[str], timeout: float = 30, input: str | None = None) -> subprocess.CompletedProcess:
        """Run a PBS client command against this complex; ClusterError if it fails."""
        proc = self.run([str(self.pbs_exec / "bin" / argv[0]), *argv[1:]], timeout=timeout, input=input)
        if proc.returncode:
            raise ClusterError(f"`{' '.join(argv)}` failed (exit {proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[:400]}")
        return proc

    # --- bring up ------------------------------------------------------------------------
    def up(self, timeout: float = 120.0) -> str:
        reason = pbs_unavailable_reason(self.layout.pbs_exec or None)
        if reason:
            raise ClusterError(f"local PBS cluster {self.layout.name!r} cannot start: {reason}")
        said = super().up(timeout=timeout)
        return said.replace("partition", "PBS queue", 1)

    def _conf_text(self, daemon: str) -> str:
        lay, p = self.layout, ports(self.layout)
        server = daemon == "server"
        lines = {
            "PBS_EXEC": str(self.pbs_exec), "PBS_HOME": str(self.home(daemon)), "PBS_SERVER": lay.control_host,
            "PBS_LEAF_NAME": lay.control_host if server else daemon,
            "PBS_START_SERVER": int(server), "PBS_START_SCHED": int(server), "PBS_START_COMM": int(server),
            "PBS_START_MOM": int(not server),
            "PBS_BATCH_SERVICE_PORT": p["server"], "PBS_MOM_SERVICE_PORT": p["mom"],
            "PBS_MANAGER_SERVICE_PORT": p["manager"], "PBS_DATA_SERVICE_PORT": p["datastore"],
            "PBS_LEAF_ROUTERS": f"{lay.control_host}:{p['comm']}", "PBS_CORE_LIMIT": "unlimited",
        }
        if server:
            lines["PBS_COMM_NAME"] = f"{lay.control_host}:{p['comm']}"
        else:
            lines["PBS_MOM_NODE_NAME"] = daemon
        return "".join(f"{k}={v}\n" for k, v in lines.items())

    def _write_files(self) -> None:
        super()._write_files()      # sshd, ssh keys, (unused) slurm.conf: the nodes' side is shared
        root = pbs_root(self.layout)
        root.mkdir(parents=True, exist_ok=True, mode=0o755)
        for daemon in ("server", *self.layout.node_names):
            self.conf(daemon).write_text(self._conf_text(daemon))
        self.mpich_bin.mkdir(exist_ok=True)
        # A script, not a link: hydra finds its proxy program (hydra_pmi_proxy) next to the path it was run by.
        wrapper = self.mpich_bin / "mpiexec"
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("mpiexec.mpich") or "/usr/bin/mpiexec.mpich"} "$@"\n')
        wrapper.chmod(0o755)
        self._mark("pbs_root", str(root))

    def _start_control(self) -> None:
        """The server side: its home and datastore created on first start, then comm, server and scheduler."""
        lay, pbs_exec = self.layout, self.pbs_exec
        env = {**os.environ, "PBS_CONF_FILE": str(self.conf("server"))}
        home = self.home("server")
        fresh = not (home / "datastore").exists()
        if fresh:
            t0 = time.monotonic()
            self._setup([str(pbs_exec / "libexec" / "pbs_postinstall"), "server", pbs_version(pbs_exec),
                         str(pbs_exec), str(home), DATASTORE_USER, "sameconf"], env, "pbs_postinstall")
            self._setup([str(pbs_exec / "libexec" / "pbs_db_utility"), "install_db"],
                        {**env, "PBS_DATA_SERVICE_USER": DATASTORE_USER, "PGSQL_BIN": _pg_bindir()},
                        "pbs_db_utility install_db")
            logger.info("PBS datastore of %s created in %.1fs", lay.name, time.monotonic() - t0)
        self._start_pbs_daemon("pbs_comm", ["pbs_comm", "-N"], env)
        self._start_pbs_daemon("pbs_server", ["pbs_server", "-N", *(["-t", "create"] if fresh else [])], env)
        self._wait_for(lambda: self.run([str(pbs_exec / "bin" / "qstat"), "-B"], timeout=10).returncode == 0,
                       60, "the PBS server to answer `qstat -B`", lay.log("pbs_server.out"))
        settings = [f"create queue {lay.partition} queue_type=execution,enabled=true,started=true" if fresh else "",
                    f"set server default_queue = {lay.partition}", "set server acl_roots = root",
                    # Parsl's PBSProProvider polls with `qstat -x`: finished jobs must stay listed.
                    "set server job_history_enable = True",
                    # Jobs start at once instead of at the scheduler's next 10-minute cycle.
                    "set server scheduler_iteration = 10",
                    # OpenPBS has no ngpus resource of its own (PBS Pro sites define it, as Polaris does): a
                    # host-level consumable count, which the scheduler must also be told to schedule by.
                    "create resource ngpus type=long, flag=nh" if fresh and lay.gpus_per_node else ""]
        self.pbs(["qmgr"], input="".join(f"{s}\n" for s in settings if s))
        if lay.gpus_per_node:
            self._schedule_by("ngpus")
        self._start_pbs_daemon("pbs_sched", ["pbs_sched", "-N"], env)

    def _start_pbs_daemon(self, daemon: str, argv: list[str], env: dict) -> None:
        pid = spawn_detached([str(self.pbs_exec / "sbin" / argv[0]), *argv[1:]], self.layout.log(f"{daemon}.out"),
                             env=env)
        self._record_pid(daemon, pid)

    def _schedule_by(self, resource: str) -> None:
        """Add `resource` to the scheduler's `resources:` line (sched_config), which it reads as it starts."""
        path = self.home("server") / "sched_priv" / "sched_config"
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.startswith("resources:") and resource not in line:
                lines[i] = line.rstrip().rstrip('"') + f', {resource}"'
        path.write_text("\n".join(lines) + "\n")

    def _setup(self, argv: list[str], env: dict, what: str) -> None:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=CREATE_TIMEOUT)
        if proc.returncode:
            raise ClusterError(f"{what} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-600:]}")

    def _mom_home(self, node: str) -> None:
        home = self.home(node)
        for sub, mode in (("", 0o755), ("aux", 0o755), ("mom_logs", 0o755), ("checkpoint", 0o700),
                          ("mom_priv", 0o751), ("mom_priv/jobs", 0o751), ("mom_priv/hooks", 0o750),
                          ("mom_priv/hooks/tmp", 0o750), ("spool", 0o1777), ("undelivered", 0o1777)):
            path = home / sub
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(mode)
        (home / "pbs_environment").write_text("PATH=/bin:/usr/bin\n")
        # $usecp: the shared filesystem returns a job's output by cp, not scp.
        (home / "mom_priv" / "config").write_text(f"$clienthost {self.layout.control_host}\n$usecp *:/ /\n")

    def start_node(self, node: str, reboot: bool = False) -> None:
        """Start a node's pbs_mom and sshd; on the first start the node is created in the server."""
        lay = self.layout
        self._mom_home(node)
        env = {**os.environ, "PBS_CONF_FILE": str(self.conf(node))}
        pid = spawn_detached(["nsenter", f"--net={network.NETNS_DIR / lay.netns(node)}", "unshare", "--uts", "--",
                              "sh", "-c", f"hostname {node} && exec '{self.pbs_exec / 'sbin' / 'pbs_mom'}' -N"],
                             lay.log(f"pbs_mom-{node}.out"), env=env)
        self._record_pid(f"pbs_mom:{node}", pid)
        self._start_node_daemon(node, "sshd", [
            "/usr/sbin/sshd", "-D", "-e", "-f", str(lay.state_dir / "etc" / "sshd_config"),
            "-o", f"ListenAddress={lay.node_address(node)}",
            "-o", f"PidFile={lay.state_dir / 'run' / f'sshd-{node}.pid'}"])
        listed = self.run([str(self.pbs_exec / "bin" / "pbsnodes"), node], timeout=15)
        if listed.returncode:
            self.pbs(["qmgr", "-c", f"create node {node} port={ports(lay)['mom']}"])
            if lay.gpus_per_node:
                self.pbs(["qmgr", "-c", f"set node {node} resources_available.ngpus = {lay.gpus_per_node}"])

    # --- what PBS says ---------------------------------------------------------------------
    def node_states(self) -> dict[str, str]:
        try:
            info = pbs.nodes_info(env=self.env())
        except pbs.PBSError as err:
            raise ClusterError(str(err)) from None
        return {n: str(a.get("state", "unknown")) for n, a in info.items()}

    # --- tear down -----------------------------------------------------------------------
    def down(self) -> str:
        """Delete the jobs, stop the PBS daemons and the datastore, then what every local cluster removes."""
        lay = self.layout
        root = pbs_root(lay)
        stopped = 0
        if self.conf("server").exists() and find_pbs_exec(lay.pbs_exec or None):
            env = self.environ()
            bin_dir = self.pbs_exec / "bin"
            try:
                ids = subprocess.run([str(bin_dir / "qselect")], capture_output=True, text=True, env=env,
                                     timeout=15).stdout.split()
                if ids:
                    subprocess.run([str(bin_dir / "qdel"), "-W", "force", *ids], capture_output=True, env=env,
                                   timeout=30)
                subprocess.run([str(bin_dir / "qterm"), "-t", "quick", "-s", "-m"], capture_output=True, env=env,
                               timeout=30)
            except (subprocess.TimeoutExpired, OSError) as err:
                logger.info("PBS shutdown of %s: %s (the processes are stopped below)", lay.name, err)
            if (self.home("server") / "datastore" / "postmaster.pid").exists():
                subprocess.run([str(self.pbs_exec / "sbin" / "pbs_dataservice"), "stop"], capture_output=True,
                               env={**os.environ, "PBS_CONF_FILE": str(self.conf("server"))}, timeout=60)
        # The login-side daemons (their command lines name no path of the cluster's: found by the conf file in their
        # environment), the datastore's postgres and anything else naming the homes.
        strays = pids_with_args(root) + self._own_daemons()
        stopped += len(strays)
        terminate(strays, grace=10)
        wait_gone(strays, 15)
        said = super().down()
        shutil.rmtree(root, ignore_errors=True)
        return said

    def _own_daemons(self) -> list[int]:
        """Pids of PBS daemons started with this cluster's pbs.conf files (recorded or not)."""
        confs = {f"PBS_CONF_FILE={self.conf(d)}".encode() for d in ("server", *self.layout.node_names)}
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if confs.intersection(environ) and alive(int(entry)):
                found.append(int(entry))
        return found

    def leftovers(self) -> list[str]:
        found = super().leftovers()
        root = pbs_root(self.layout)
        if root.exists():
            found.append(f"directory {root}")
        found += [f"process {p}: {' '.join(command_of(p))}" for p in {*pids_with_args(root), *self._own_daemons()}]
        return found
