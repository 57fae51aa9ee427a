"""Names, addresses, ports and paths of one local cluster, derived from its name.

Everything the cluster creates is named here, so `up`, `down` and the tests agree on what to create, find and
remove. Nothing in this module touches the system.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import FluxmpiError

logger = logging.getLogger(__name__)

DEFAULT_NAME = "fluxmpi"
DEFAULT_NODES = 3
DEFAULT_PARTITION = "debug"
STATE_ROOT_ENV = "FLUXMPI_CLUSTER_ROOT"
DEFAULT_STATE_ROOT = "/var/tmp/fluxmpi/clusters"
# Elastic mode: seconds a powered-down node takes to come back, and idle seconds before it powers down.
DEFAULT_RESUME_DELAY = 10.0
DEFAULT_SUSPEND_TIME = 30
MAX_RESUME_DELAY = 600.0
MAX_GPUS_PER_NODE = 16

SCHEDULERS = ("slurm", "pbs")

_NAME_RE = re.compile(r"^[a-z][a-z0-9]{1,11}$")


class LayoutError(FluxmpiError, ValueError):
    """A cluster parameter that cannot work; the message names the value and the fix."""


def _name_octet(name: str) -> int:
    # A stable third octet per cluster name lets two clusters (a user's and the test suite's) coexist.
    return 16 + zlib.crc32(name.encode()) % 224


def state_root() -> Path:
    return Path(os.environ.get(STATE_ROOT_ENV, DEFAULT_STATE_ROOT))


@dataclass(frozen=True)
class ClusterLayout:
    name: str = DEFAULT_NAME
    nodes: int = DEFAULT_NODES
    cpus_per_node: int = field(default_factory=lambda: os.cpu_count() or 1)
    # GPUs Slurm schedules on each node (GRES): stand-in device files, so Slurm's own binding logic
    # (--gpus-per-task, CUDA_VISIBLE_DEVICES) runs for real; nothing computes on them.
    gpus_per_node: int = 0
    subnet: str = ""
    node_prefix: str = ""
    partition: str = DEFAULT_PARTITION
    memory_per_node_mb: int = 2048
    # Elastic: Slurm powers idle nodes down (their daemons stop) and up again, `resume_delay` seconds late.
    elastic: bool = False
    resume_delay: float = 0.0
    suspend_time: int = DEFAULT_SUSPEND_TIME
    # The batch system the cluster runs: "slurm", or "pbs" (an OpenPBS the user built or the site installed, at
    # `pbs_exec`: its server, scheduler and comm on the login side, a pbs_mom in each node).
    scheduler: str = "slurm"
    pbs_exec: str = ""

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise LayoutError(
                f"cluster name {self.name!r} is not usable: give 2-12 lowercase letters or digits, "
                f"starting with a letter (e.g. 'fluxmpi')")
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or not 1 <= self.nodes <= 64:
            raise LayoutError(f"--nodes {self.nodes!r} is out of range: give a whole number from 1 to 64")
        if isinstance(self.cpus_per_node, bool) or not isinstance(self.cpus_per_node, int) \
                or not 1 <= self.cpus_per_node <= 256:
            raise LayoutError(
                f"--cpus-per-node {self.cpus_per_node!r} is out of range: give a whole number from 1 to 256")
        if isinstance(self.gpus_per_node, bool) or not isinstance(self.gpus_per_node, int) \
                or not 0 <= self.gpus_per_node <= MAX_GPUS_PER_NODE:
            raise LayoutError(f"--gpus-per-node {self.gpus_per_node!r} is out of range: give a whole number from 0 "
                              f"to {MAX_GPUS_PER_NODE}")
        if not self.subnet:
            object.__setattr__(self, "subnet", f"10.77.{_name_octet(self.name)}.0/24")
        try:
            net = ipaddress.ip_network(self.subnet, strict=True)
        except ValueError as err:
            raise LayoutError(f"--subnet {self.subnet!r} is not a network ({err}); give e.g. 10.77.20.0/24")
        if net.version != 4 or not net.is_private or net.prefixlen > 26:
            raise LayoutError(
                f"--subnet {self.subnet!r} must be a private IPv4 network of /26 or larger, e.g. 10.77.20.0/24")
        if self.nodes + 10 >= net.num_addresses - 1:
            raise LayoutError(f"--subnet {self.subnet} has too few addresses for {self.nodes} nodes; use a /24")
        if not self.node_prefix:
            object.__setattr__(self, "node_prefix", "fxm" if self.name == DEFAULT_NAME else f"{self.name}n")
        if not re.match(r"^[a-z][a-z0-9-]{0,15}$", self.node_prefix):
            raise LayoutError(f"node prefix {self.node_prefix!r} is not a valid hostname prefix")
        self._check_elastic()
        if self.scheduler not in SCHEDULERS:
            raise LayoutError(f"--scheduler {self.scheduler!r} is not known: give one of {', '.join(SCHEDULERS)}")
        if self.scheduler == "pbs" and self.elastic:
            raise LayoutError("--elastic needs Slurm's power saving: the PBS cluster has none; drop --elastic")
        if self.pbs_exec and self.scheduler != "pbs":
            raise LayoutError(f"--pbs-exec {self.pbs_exec} only applies to --scheduler pbs")

    def _check_elastic(self) -> None:
        delay = self.resume_delay
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) \
                or not 0 <= delay <= MAX_RESUME_DELAY:
            raise LayoutError(f"--resume-delay {delay!r} is out of range: give seconds from 0 to "
                              f"{MAX_RESUME_DELAY:.0f}")
        if delay and not self.elastic:
            raise LayoutError(f"--resume-delay {delay:g} only applies to an elastic cluster: add --elastic")
        if isinstance(self.suspend_time, bool) or not isinstance(self.suspend_time, int) \
                or not 5 <= self.suspend_time <= 86400:
            raise LayoutError(f"suspend_time {self.suspend_time!r} is out of range: give whole seconds "
                              "from 5 to 86400")

    # --- identity and addresses -------------------------------------------------------------
    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.ip_network(self.subnet)  # type: ignore[return-value]

    @property
    def tag(self) -> int:
        """Short number used in interface names (15-character limit)."""
        return int(self.network.network_address.packed[2])

    @property
    def login_address(self) -> str:
        """The bridge address: how compute nodes reach the machine that runs Parsl and slurmctld."""
        return str(self.network.network_address + 1)

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def node_names(self) -> list[str]:
        return [f"{self.node_prefix}{i}" for i in range(1, self.nodes + 1)]

    def node_address(self, node: str) -> str:
        index = self.node_names.index(node) + 1
        return str(self.network.network_address + 10 + index)

    @property
    def nodelist(self) -> str:
        """Slurm's compressed form, e.g. fxm[1-3]."""
        return f"{self.node_prefix}[1-{self.nodes}]" if self.nodes > 1 else self.node_names[0]

    @property
    def control_host(self) -> str:
        return f"{self.node_prefix}ctl"

    @property
    def slurmctld_port(self) -> int:
        # Away from the default 6817 so a site's own slurmctld on this machine is never contacted by mistake.
        return 16800 + self.tag

    # --- interface and namespace names ------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"fxbr{self.tag}"

    def netns(self, node: str) -> str:
        return f"fluxmpi-{self.name}-{node}"

    def veth_host(self, node: str) -> str:
        return f"fxv{self.tag}n{self.node_names.index(node) + 1}"

    @property
    def hosts_begin(self) -> str:
        return f"# BEGIN fluxmpi cluster {self.name}"

    @property
    def hosts_end(self) -> str:
        return f"# END fluxmpi cluster {self.name}"

    def hosts_lines(self) -> list[str]:
        lines = [f"{self.login_address} {self.control_host}"]
        lines += [f"{self.node_address(n)} {n}" for n in self.node_names]
        return lines

    # --- files ------------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return state_root() / self.name

    @property
    def slurm_conf(self) -> Path:
        return self.state_dir / "etc" / "slurm.conf"

    @property
    def gres_conf(self) -> Path:
        return self.state_dir / "etc" / "gres.conf"     # next to slurm.conf, where Slurm looks for it

    def gpu_files(self, node: str) -> list[Path]:
        """The stand-in device files of `node`'s GPUs, in index order (Slurm numbers them from the name)."""
        return [self.state_dir / "dev" / node / f"gpu{i}" for i in range(self.gpus_per_node)]

    @property
    def munge_socket(self) -> Path:
        return self.state_dir / "munge" / "munge.socket"

    @property
    def ssh_config(self) -> Path:
        return self.state_dir / "etc" / "ssh_config"

    @property
    def ssh_wrapper(self) -> Path:
        """An executable that runs ssh with the cluster's config (FLUX_SSH must name an executable)."""
        return self.state_dir / "bin" / "ssh"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    def log(self, daemon: str) -> Path:
        return self.state_dir / "log" / f"{daemon}.log"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "state.lock"

    def pbs_home(self, daemon: str) -> Path:
        """PBS_HOME of the PBS server side ("server": server, scheduler, comm and their datastore) or of a node's
        mom (the node's name)."""
        return self.state_dir / "pbs" / daemon

    def pbs_conf(self, daemon: str) -> Path:
        """The pbs.conf of "server" or of a node's mom; the client commands use the server's."""
        return self.state_dir / "etc" / f"pbs-{daemon}.conf"

    def power_program(self, action: str) -> Path:
        """The ResumeProgram / SuspendProgram slurmctld runs in elastic mode (action: resume or suspend)."""
        return self.state_dir / "bin" / action

    # --- persistence ------------------------------------------------------------------------
    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ClusterLayout":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def load_state(name: str) -> dict | None:
    """The saved state of cluster `name` (layout, pids, what was created), or None if it has none."""
    path = state_root() / name / "state.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise LayoutError(f"{path} is damaged ({err}); run `fluxmpi cluster down --name {name}` to clean up")
