"""The cluster's network: a bridge on the machine, one network namespace per node joined to it by a veth pair,
and an /etc/hosts block so every node and the login side resolve each other by name."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import tempfile
from pathlib import Path

from ..errors import FluxmpiError
from .layout import ClusterLayout

logger = logging.getLogger(__name__)

NETNS_DIR = Path("/run/netns")
HOSTS_FILE = Path(os.environ.get("FLUXMPI_HOSTS_FILE", "/etc/hosts"))


class NetworkError(FluxmpiError, RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetworkError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def link_exists(name: str, netns: str | None = None) -> bool:
    args = (["-n", netns] if netns else []) + ["link", "show", name]
    return ip(*args, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def addresses_in_use() -> list[tuple[str, str]]:
    """(interface, address/prefix) of every IPv4 address in the root namespace."""
    out = ip("-j", "-4", "addr", "show").stdout
    found = []
    for iface in json.loads(out or "[]"):
        for a in iface.get("addr_info", []):
            found.append((iface["ifname"], f"{a['local']}/{a['prefixlen']}"))
    return found


def subnet_clash(layout: ClusterLayout) -> str | None:
    """Which interface already uses an address overlapping the subnet (checked only before a first `up`)."""
    for ifname, cidr in addresses_in_use():
        if ipaddress.ip_interface(cidr).network.overlaps(layout.network):
            return f"{ifname} has {cidr}"
    return None


def create_bridge(layout: ClusterLayout) -> None:
    if not link_exists(layout.bridge):
        ip("link", "add", layout.bridge, "type", "bridge")
    ip("addr", "replace", f"{layout.login_address}/{layout.prefixlen}", "dev", layout.bridge)
    ip("link", "set", layout.bridge, "up")


def create_node(layout: ClusterLayout, node: str) -> None:
    ns, veth = layout.netns(node), layout.veth_host(node)
    if not netns_exists(ns):
        ip("netns", "add", ns)
    if not link_exists(veth):
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
    ip("link", "set", veth, "master", layout.bridge)
    ip("link", "set", veth, "up")
    ip("-n", ns, "addr", "replace", f"{layout.node_address(node)}/{layout.prefixlen}", "dev", "eth0")
    ip("-n", ns, "link", "set", "eth0", "up")
    ip("-n", ns, "link", "set", "lo", "up")


def link_down(layout: ClusterLayout, node: str) -> None:
    """Cut a node off the bridge (fault injection); `link_up` restores it."""
    ip("link", "set", layout.veth_host(node), "down")


def link_up(layout: ClusterLayout, node: str) -> None:
    ip("link", "set", layout.veth_host(node), "up")


def remove_node(layout: ClusterLayout, node: str) -> None:
    ns = layout.netns(node)
    if netns_exists(ns):
        ip("netns", "del", ns)
    # Deleting the namespace takes the pair with it; a half-made pair can remain on the host side.
    if link_exists(layout.veth_host(node)):
        # The kernel may finish removing the pair between the check and this call: that is success too.
        ip("link", "del", layout.veth_host(node), check=False)


def remove_bridge(layout: ClusterLayout) -> None:
    if link_exists(layout.bridge):
        ip("link", "del", layout.bridge)


def leftover_links(layout: ClusterLayout) -> list[str]:
    names = [layout.bridge] + [layout.veth_host(n) for n in layout.node_names]
    return [n for n in names if link_exists(n)]


def leftover_netns(layout: ClusterLayout) -> list[str]:
    prefix = f"fluxmpi-{layout.name}-"
    return sorted(p.name for p in NETNS_DIR.glob(prefix + "*")) if NETNS_DIR.exists() else []


# --- /etc/hosts -----------------------------------------------------------------------------

def _write_atomically(path: Path, text: str) -> None:
    # /etc/hosts may be a bind mount (containers): rewrite in place when a rename would fail.
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fluxmpi-hosts-")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
        path.write_text(text)


def _strip_block(text: str, layout: ClusterLayout) -> str:
    out, inside = [], False
    for line in text.splitlines():
        if line.strip() == layout.hosts_begin:
            inside = True
        elif line.strip() == layout.hosts_end:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out) + ("\n" if out else "")


def hosts_clash(layout: ClusterLayout) -> str | None:
    """A name of ours that /etc/hosts already maps outside our block."""
    ours = set(layout.node_names + [layout.control_host])
    for line in _strip_block(HOSTS_FILE.read_text(), layout).splitlines():
        fields = line.split("#", 1)[0].split()
        for name in fields[1:]:
            if name in ours:
                return f"{HOSTS_FILE} already maps {name} ({line.strip()})"
    return None


def add_hosts_block(layout: ClusterLayout) -> None:
    text = _strip_block(HOSTS_FILE.read_text(), layout)
    block = [layout.hosts_begin, *layout.hosts_lines(), layout.hosts_end]
    _write_atomically(HOSTS_FILE, text + "\n".join(block) + "\n")


def remove_hosts_block(layout: ClusterLayout) -> None:
    text = HOSTS_FILE.read_text()
    if layout.hosts_begin in text:
        _write_atomically(HOSTS_FILE, _strip_block(text, layout))


def has_hosts_block(layout: ClusterLayout) -> bool:
    return layout.hosts_begin in HOSTS_FILE.read_text()
