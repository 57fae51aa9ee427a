"""A real multi-node Slurm cluster on this machine: `up`, `down`, `status`, `env`.

Each node is a network namespace (own address) plus UTS namespaces for its daemons (own hostname); the
filesystem is shared, as on a cluster with a shared home. One munged and one slurmctld serve all nodes from
the machine itself, which plays the login node.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import stat
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import FluxmpiError
from . import configs, network, preflight
from .layout import ClusterLayout, LayoutError, load_state
from .processes import (
    alive,
    command_of,
    describe,
    names_path,
    pids_in_netns,
    pids_with_args,
    spawn_detached,
    terminate,
    wait_gone,
)

logger = logging.getLogger(__name__)

UP_TIMEOUT = 90.0
# The stand-in GPU files are character devices with /dev/null's numbers: harmless if a program opens one.
NULL_DEVICE = os.makedev(1, 3)
DOWN_WAIT = 15.0   # seconds `down` waits for the processes it stopped to leave the process table


class ClusterError(FluxmpiError, RuntimeError):
    """The local cluster could not be brought up, or is in a state that needs the user's attention."""


@dataclass
class NodeStatus:
    name: str
    address: str
    slurm_state: str
    slurmd: bool
    sshd: bool


@dataclass
class ClusterStatus:
    layout: ClusterLayout
    running: bool
    nodes: list[NodeStatus] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def render(self) -> str:
        lay = self.layout
        if not self.running:
            return f"cluster {lay.name} is not up (start it with `fluxmpi cluster up --name {lay.name}`)"
        pbs = lay.scheduler == "pbs"
        head = (f"cluster {lay.name}: up, {lay.nodes} nodes x {lay.cpus_per_node} cpus, "
                + (f"PBS queue {lay.partition}, subnet {lay.subnet}, PBS_CONF_FILE={lay.pbs_conf('server')}" if pbs
                   else f"partition {lay.partition}, subnet {lay.subnet}, SLURM_CONF={lay.slurm_conf}"))
        if lay.elastic:
            head += (f"\nelastic: idle nodes power down after {lay.suspend_time}s and take {lay.resume_delay:g}s to "
                     "come back (state idle~ = powered down, # = powering up, % = powering down)")
        rows = [f"{'NODELIST':<12} {'ADDRESS':<15} {'STATE':<10} {'PBS_MOM' if pbs else 'SLURMD':<7} SSHD"]
        for n in self.nodes:
            rows.append(f"{n.name:<12} {n.address:<15} {n.slurm_state:<10} "
                        f"{'up' if n.slurmd else 'down':<7} {'up' if n.sshd else 'down'}")
        return "\n".join([head, *rows, *("problem: " + p for p in self.problems)])


def _run(argv: list[str], env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)


@contextmanager
def state_lock(layout: ClusterLayout) -> Iterator[None]:
    """Hold the cluster's state lock: the power programs and `down` update state.json concurrently."""
    layout.state_dir.mkdir(parents=True, exist_ok=True)
    with open(layout.lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _hosts_block_present(layout: ClusterLayout) -> bool:
    # A whole-line match: cluster "fxops" must not find the block of "fxops2", whose marker it prefixes.
    return any(line.strip() == layout.hosts_begin for line in network.HOSTS_FILE.read_text().splitlines())


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n    ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalCluster:
    """One named local cluster. Create with a layout to boot it, or `LocalCluster.running(name)` to use it.

    A layout with scheduler "pbs" makes a LocalPBSCluster (fluxmpi.cluster.pbs): the same nodes, network and
    sshd, with OpenPBS daemons where this class starts Slurm's."""

    NODE_DAEMON = "slurmd"       # the batch system's daemon on each node (its pid is recorded as "slurmd:NODE")
    READY_STATE = "idle"         # the node state `up` waits for

    def __new__(cls, layout: ClusterLayout | None = None):
        if cls is LocalCluster and layout is not None and layout.scheduler == "pbs":
            from .pbs import LocalPBSCluster
            return super().__new__(LocalPBSCluster)
        return super().__new__(cls)

    def __init__(self, layout: ClusterLayout | None = None):
        self.layout = layout or ClusterLayout()
        self._state: dict = {"layout": self.layout.to_json(), "pids": {}, "created": {}}

    # --- lookup --------------------------------------------------------------------------
    @classmethod
    def running(cls, name: str = "fluxmpi") -> "LocalCluster":
        """The cluster `name` as saved by its `up`; ClusterError if it is not up."""
        state = load_state(name)
        if not state:
            raise ClusterError(f"local cluster {name!r} is not up; start it with `fluxmpi cluster up --name {name}`")
        cluster = cls(ClusterLayout.from_json(state["layout"]))
        cluster._state = state
        return cluster

    # --- environment -----------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """Variables a shell (or a Parsl process) needs to use this cluster."""
        lay = self.layout
        return {
            "SLURM_CONF": str(lay.slurm_conf),
            "FLUXMPI_CLUSTER": lay.name,
            "FLUXMPI_LOGIN_ADDRESS": lay.login_address,
            "FLUXMPI_SSH": str(lay.ssh_wrapper),
            "FLUX_SSH": str(lay.ssh_wrapper),
            # Debian's Open MPI refuses root without these; the tests and users here run as root.
            "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            # Keep MPI traffic on the bridge: the nodes' only interface besides loopback.
            "OMPI_MCA_btl_tcp_if_include": lay.subnet,
            "OMPI_MCA_oob_tcp_if_include": lay.subnet,
            "OMPI_MCA_btl": "self,tcp",
        }

    def environ(self) -> dict[str, str]:
        """os.environ with this cluster's variables applied."""
        return {**os.environ, **self.env()}

    def render_env(self) -> str:
        return "".join(f"export {k}={v}\n" for k, v in self.env().items())

    def run(self, argv: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run a Slurm client command (or anything) with this cluster's environment, bounded by timeout."""
        return subprocess.run(argv, capture_output=True, text=True, env=self.environ(), timeout=timeout, **kw)

    # --- bring up ------------------------------------------------------------------------
    def up(self, timeout: float = UP_TIMEOUT) -> str:
        """Boot the cluster and wait until every node is idle. Idempotent: returns what it did."""
        existing = load_state(self.layout.name)
        if existing:
            return self._adopt(existing)
        preflight.check(self.layout)
        lay = self.layout
        try:
            self._save()
            self._write_files()
            network.create_bridge(lay)
            self._mark("bridge", lay.bridge)
            for node in lay.node_names:
                network.create_node(lay, node)
                self._mark("netns", lay.netns(node))
            network.add_hosts_block(lay)
            self._mark("hosts", True)
            self._start_control()
            for node in lay.node_names:
                self.start_node(node)
            self._wait_idle(timeout)
        except BaseException as err:
            detail = self._diagnose()
            self.down()
            if isinstance(err, (ClusterError, preflight.PreflightError, network.NetworkError, OSError)):
                raise ClusterError(f"local cluster {lay.name!r} did not come up: {err}\n{detail}") from err
            raise
        return (f"cluster {lay.name} up: {lay.nodes} nodes ({lay.nodelist}) x {lay.cpus_per_node} cpus, "
                f"partition {lay.partition}; use it with: eval \"$(fluxmpi cluster env --name {lay.name})\"")

    def _adopt(self, existing: dict) -> str:
        saved = ClusterLayout.from_json(existing["layout"])
        if saved != self.layout:
            diff = {k: (v, getattr(self.layout, k)) for k, v in saved.to_json().items()
                    if getattr(self.layout, k) != v}
            raise ClusterError(
                f"local cluster {saved.name!r} is already up with different settings "
                + ", ".join(f"{k}={old} (asked {new})" for k, (old, new) in diff.items())
                + f"; run `fluxmpi cluster down --name {saved.name}` first")
        self._state = existing
        status = self.status()
        if status.problems:
            raise ClusterError(
                f"local cluster {saved.name!r} is partly up: " + "; ".join(status.problems)
                + f". Run `fluxmpi cluster down --name {saved.name}` and `up` again")
        return f"cluster {saved.name} is already up ({saved.nodes} nodes, {saved.nodelist}); nothing to do"

    def _save(self) -> None:
        self.layout.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.layout.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._state, indent=1))
        os.replace(tmp, self.layout.state_file)

    def _mark(self, what: str, value) -> None:
        created = self._state["created"]
        if isinstance(value, bool):
            created[what] = value
        else:
            created.setdefault(what, [])
            if value not in created[what]:
                created[what].append(value)
        self._save()

    def _write_files(self) -> None:
        lay, s = self.layout, self.layout.state_dir
        for sub in ("etc", "bin", "log", "run", "ctld", "munge"):
            (s / sub).mkdir(parents=True, exist_ok=True)
        for node in lay.node_names:
            (s / "spool" / node).mkdir(parents=True, exist_ok=True)
            (s / "tmp" / node).mkdir(parents=True, exist_ok=True)
        lay.slurm_conf.write_text(configs.slurm_conf(lay))
        if lay.gpus_per_node:
            for node in lay.node_names:
                for f in lay.gpu_files(node):
                    f.parent.mkdir(parents=True, exist_ok=True)
                    if not f.is_char_device():   # Slurm takes only character or block devices as GPU files
                        f.unlink(missing_ok=True)
                        os.mknod(f, stat.S_IFCHR | 0o644, NULL_DEVICE)
            lay.gres_conf.write_text(configs.gres_conf(lay))
        (s / "etc" / "sshd_config").write_text(configs.sshd_config(lay))
        lay.ssh_config.write_text(configs.ssh_config(lay))
        lay.ssh_wrapper.write_text(configs.ssh_wrapper(lay))
        lay.ssh_wrapper.chmod(0o755)
        if lay.elastic:
            for action in ("resume", "suspend"):
                lay.power_program(action).write_text(configs.power_program(lay, action))
                lay.power_program(action).chmod(0o755)
        for key in ("ssh_host_ed25519_key", "id_ed25519"):
            path = s / "etc" / key
            if not path.exists():
                proc = _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"fluxmpi-{lay.name}",
                             "-f", str(path)])
                if proc.returncode:
                    raise ClusterError(f"ssh-keygen failed: {proc.stderr.strip()}")
        shutil.copy(s / "etc" / "id_ed25519.pub", s / "etc" / "authorized_keys")
        host_pub = (s / "etc" / "ssh_host_ed25519_key.pub").read_text()
        (s / "etc" / "known_hosts").write_text(configs.known_hosts(lay, host_pub))
        # sshd wants its privilege-separation directory; Debian's package creates it only at service start.
        if not Path("/run/sshd").exists():
            Path("/run/sshd").mkdir(mode=0o755)
            self._mark("run_sshd", True)
        munge = s / "munge"
        key = munge / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        for path in (munge, key):
            shutil.chown(path, "munge", "munge")
        munge.chmod(0o700)
        key.chmod(0o400)

    def _record_pid(self, name: str, pid: int) -> None:
        self._state["pids"][name] = pid
        self._save()

    def _start_control(self) -> None:
        """The batch system's side on the login node: munged and slurmctld."""
        self._start_munged()
        self._start_slurmctld()

    def _start_munged(self) -> None:
        m = self.layout.state_dir / "munge"
        pid = spawn_detached([
            # setpriv execs munged itself (runuser would stay as its parent), so the pid we record is munged's.
            "setpriv", "--reuid=munge", "--regid=munge", "--init-groups", "munged", "-F", "--force",
            f"--socket={self.layout.munge_socket}", f"--key-file={m / 'munge.key'}",
            f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}",
            f"--log-file={self.layout.log('munged')}"], self.layout.log("munged.out"))
        self._record_pid("munged", pid)
        self._wait_for(lambda: self.layout.munge_socket.exists(), 15, "munged socket",
                       self.layout.log("munged"))

    def _start_slurmctld(self) -> None:
        lay = self.layout
        # slurmctld only runs where the hostname matches SlurmctldHost: give it a UTS namespace of its own.
        pid = spawn_detached([
            "unshare", "--uts", "--", "sh", "-c",
            f'hostname {lay.control_host} && exec slurmctld -D -i -f "{lay.slurm_conf}"'],
            lay.log("slurmctld.out"))
        self._record_pid("slurmctld", pid)
        self._wait_for(lambda: self.run(["scontrol", "ping"], timeout=10).stdout.count("UP") > 0, 30,
                       "slurmctld to answer `scontrol ping`", lay.log("slurmctld"))

    def start_node(self, node: str, reboot: bool = False) -> None:
        """Start a node's slurmd and sshd (its "power on"). reboot: slurmd reports a fresh boot time, which
        Slurm requires of a node it asked to resume."""
        lay = self.layout
        self._start_node_daemon(node, "slurmd", ["slurmd", "-D", *(["-b"] if reboot else []), "-N", node,
                                                 "-f", str(lay.slurm_conf)])
        self._start_node_daemon(node, "sshd", [
            "/usr/sbin/sshd", "-D", "-e", "-f", str(lay.state_dir / "etc" / "sshd_config"),
            "-o", f"ListenAddress={lay.node_address(node)}",
            "-o", f"PidFile={lay.state_dir / 'run' / f'sshd-{node}.pid'}"])

    def stop_node(self, node: str, grace: float = 3.0) -> int:
        """Stop every process on a node (its "power off"): daemons, job steps, ssh sessions. Returns how many."""
        victims = set(pids_in_netns(network.NETNS_DIR / self.layout.netns(node)))
        for daemon in (self.NODE_DAEMON, "sshd"):
            pid = self._state["pids"].pop(f"{daemon}:{node}", None)
            if pid and alive(pid) and names_path(command_of(pid), self.layout.state_dir):
                victims.add(pid)
        self._save()
        terminate(victims, grace=grace)
        return len(victims)

    def _start_node_daemon(self, node: str, daemon: str, argv: list[str]) -> None:
        lay = self.layout
        # nsenter, not `ip netns exec`: the latter remounts /sys and Slurm 22.05's slurmd then exits.
        quoted = " ".join(f"'{a}'" for a in argv)
        pid = spawn_detached([
            "nsenter", f"--net={network.NETNS_DIR / lay.netns(node)}", "unshare", "--uts", "--",
            "sh", "-c", f"hostname {node} && exec {quoted}"], lay.log(f"{daemon}-{node}.out"))
        self._record_pid(f"{daemon}:{node}", pid)

    def _wait_for(self, ready, timeout: float, what: str, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (subprocess.TimeoutExpired, OSError):
                pass
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}; log {log}:\n    {_tail(log)}")

    def node_states(self) -> dict[str, str]:
        proc = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=15)
        states = {}
        for line in proc.stdout.splitlines():
            name, state = line.split()
            states[name] = state
        return states

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            try:
                states = self.node_states()
            except (subprocess.TimeoutExpired, ValueError):
                states = {}
            if states and all(states.get(n, "").rstrip("*") == self.READY_STATE for n in self.layout.node_names):
                return
            dead = [k for k, pid in self._state["pids"].items() if not alive(pid)]
            if dead:
                raise ClusterError(f"daemon(s) exited during start-up: {', '.join(dead)}")
            time.sleep(0.3)
        not_idle = {n: states.get(n, "unknown") for n in self.layout.node_names
                    if states.get(n, "").rstrip("*") != self.READY_STATE}
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for nodes to be {self.READY_STATE}; "
                           f"not {self.READY_STATE}: {not_idle}")

    def _diagnose(self) -> str:
        lines = []
        for name, pid in self._state["pids"].items():
            if not alive(pid):
                log = self.layout.log(name.replace(":", "-") if ":" not in name else
                                      f"{name.split(':')[0]}-{name.split(':')[1]}")
                lines.append(f"  {name} (pid {pid}) is not running; {log}.out:\n    "
                             + _tail(Path(str(log) + ".out")))
        return "\n".join(lines)

    # --- status --------------------------------------------------------------------------
    def status(self) -> ClusterStatus:
        lay = self.layout
        state = load_state(lay.name)
        if not state:
            return ClusterStatus(lay, running=False)
        pids = state.get("pids", {})
        problems = [f"{k} (pid {p}) is not running" for k, p in pids.items() if not alive(p)]
        try:
            slurm = self.node_states()
        except (subprocess.TimeoutExpired, ValueError, OSError, FluxmpiError) as err:
            slurm = {}
            problems.append(f"asking for the node states failed: {err}")
        nodes = [NodeStatus(n, lay.node_address(n), slurm.get(n, "unknown"),
                            alive(pids.get(f"{self.NODE_DAEMON}:{n}", -1)), alive(pids.get(f"sshd:{n}", -1)))
                 for n in lay.node_names]
        return ClusterStatus(lay, running=True, nodes=nodes, problems=problems)

    # --- tear down -----------------------------------------------------------------------
    def down(self) -> str:
        """Stop everything this cluster started and remove what it created. Safe to run twice."""
        lay = self.layout
        state = load_state(lay.name) or self._state
        if state and state.get("layout"):
            try:
                lay = ClusterLayout.from_json(state["layout"])
            except LayoutError:
                pass
        # Daemons still naming the cluster's files count too: a run killed mid-way can leave one behind its
        # state (and its port taken, so the next `up` would be refused).
        strays = pids_with_args(lay.state_dir)
        leftovers = (network.leftover_netns(lay) or network.leftover_links(lay)
                     or _hosts_block_present(lay) or lay.state_dir.exists() or strays)
        if not leftovers:
            return f"cluster {lay.name} is not up; nothing to do"
        if lay.elastic:
            self._stop_power_programs(lay)
        # Everything inside a node's namespace belongs to the cluster: daemons, job steps, ssh sessions.
        victims = set()
        for ns in network.leftover_netns(lay):
            victims.update(pids_in_netns(network.NETNS_DIR / ns))
        victims.update(strays)
        for name, pid in (state or {}).get("pids", {}).items():
            # Guard against pid reuse: only stop a pid whose command line still names our state dir.
            if alive(pid) and names_path(command_of(pid), lay.state_dir):
                victims.add(pid)
        forced = terminate(victims, grace=10)
        # Return only once they are gone from the process table, so a `down` then `up` (or a check for
        # leftovers) does not meet them; a zombie stays listed until its parent reaps it.
        still = wait_gone(victims, DOWN_WAIT)
        for ns in network.leftover_netns(lay):
            network.ip("netns", "del", ns, check=False)
        for node in lay.node_names:
            network.remove_node(lay, node)
        network.remove_bridge(lay)
        network.remove_hosts_block(lay)
        shutil.rmtree(lay.state_dir, ignore_errors=True)
        # /run/sshd serves every local cluster's sshd: remove it only with the last cluster that is up.
        others = [p for p in lay.state_dir.parent.glob("*/state.json")]
        if (state or {}).get("created", {}).get("run_sshd") and not others:
            shutil.rmtree("/run/sshd", ignore_errors=True)
        msg = f"cluster {lay.name} down: stopped {len(victims)} processes"
        msg += f" ({len(forced)} needed SIGKILL)" if forced else ""
        if still:
            msg += (f"; still listed {DOWN_WAIT:.0f}s later: {', '.join(describe(p) for p in sorted(still))}")
        return msg

    @staticmethod
    def _stop_power_programs(lay: ClusterLayout) -> None:
        """Elastic mode: mark the state as stopping, so a resume program that wakes from its delay starts
        nothing, then stop the power programs still running (they are slurmctld's children, in no node)."""
        if lay.state_file.exists():
            with state_lock(lay):
                state = load_state(lay.name) or {}
                state["stopping"] = True
                lay.state_file.write_text(json.dumps(state, indent=1))
        terminate(pids_with_args(lay.state_dir, "fluxmpi.cluster.elastic"), grace=5)

    def leftovers(self) -> list[str]:
        """What of this cluster still exists on the machine (empty after a clean `down`)."""
        lay = self.layout
        found = [f"netns {n}" for n in network.leftover_netns(lay)]
        found += [f"link {n}" for n in network.leftover_links(lay)]
        if _hosts_block_present(lay):
            found.append(f"hosts block in {network.HOSTS_FILE}")
        if lay.state_dir.exists():
            found.append(f"directory {lay.state_dir}")
        for pid in os.listdir("/proc"):
            if pid.isdigit() and names_path(command_of(int(pid)), lay.state_dir) and alive(int(pid)):
                found.append(f"process {pid}: {' '.join(command_of(int(pid)))}")
        return found
