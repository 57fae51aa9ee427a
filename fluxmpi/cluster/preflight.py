"""Checks made before `cluster up` changes anything: root, the Debian packages, and clashes."""

from __future__ import annotations

import logging
import os
import shutil
import socket

from ..errors import FluxmpiError
from . import network
from .layout import ClusterLayout, state_root
from .processes import command_of, find_processes

logger = logging.getLogger(__name__)

# executable -> Debian package that provides it
REQUIRED_COMMANDS = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sinfo": "slurm-client",
    "srun": "slurm-client",
    "scontrol": "slurm-client",
    "munged": "munge",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "setpriv": "util-linux",
}

INSTALL_HINT = "run `bash install_scripts/install-cluster-deps.sh` (as root)"


class PreflightError(FluxmpiError, RuntimeError):
    """The cluster cannot be started here; the message says why and what to do."""


def missing_commands() -> dict[str, str]:
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return {cmd: pkg for cmd, pkg in REQUIRED_COMMANDS.items() if shutil.which(cmd, path=path) is None}


def foreign_slurmctlds() -> list[str]:
    """slurmctld processes not started by any fluxmpi cluster (they read a config outside our state root)."""
    ours = str(state_root())
    foreign = []
    for pid in find_processes("slurmctld"):
        argv = command_of(pid)
        if not any(ours in a for a in argv):
            foreign.append(f"pid {pid}: {' '.join(argv)}")
    return foreign


def port_in_use(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def check(layout: ClusterLayout) -> None:
    """Raise PreflightError naming the first thing that would stop this cluster from starting cleanly."""
    if os.geteuid() != 0:
        raise PreflightError(
            "the local cluster needs root (network namespaces, daemons, /etc/hosts): run fluxmpi as root")
    missing = missing_commands()
    if missing:
        pkgs = " ".join(sorted(set(missing.values())))
        raise PreflightError(
            f"missing commands: {', '.join(sorted(missing))} (Debian packages: {pkgs}); {INSTALL_HINT}")
    clash = network.subnet_clash(layout)
    if clash:
        raise PreflightError(
            f"address range {layout.subnet} is already in use ({clash}); pass another --subnet, "
            f"e.g. 10.78.{layout.tag}.0/24")
    taken = network.leftover_links(layout) + network.leftover_netns(layout)
    if taken:
        raise PreflightError(
            f"interfaces or namespaces named for cluster {layout.name!r} already exist ({', '.join(taken)}): "
            f"run `fluxmpi cluster down --name {layout.name}` to remove leftovers, or pass another --subnet")
    clash = network.hosts_clash(layout)
    if clash:
        raise PreflightError(f"{clash}; pass another --name so the node names differ")
    foreign = foreign_slurmctlds()
    if foreign:
        raise PreflightError(
            "a slurmctld not started by fluxmpi is running on this machine (" + "; ".join(foreign) +
            "): stop it first, or use that cluster with --cluster slurm")
    if port_in_use(layout.login_address, layout.slurmctld_port):
        raise PreflightError(
            f"port {layout.slurmctld_port} (slurmctld of cluster {layout.name!r}) is in use by another program; "
            "pass another --name")
