"""The text of the files a local cluster runs on: slurm.conf, sshd and ssh configs.

Pure functions of the layout, so the tests can read what will be written without booting anything.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

from .layout import ClusterLayout, state_root

logger = logging.getLogger(__name__)

# Seconds slurmctld gives the suspend program to stop a node's daemons (it stops them within 3 s, then SIGKILL).
SUSPEND_TIMEOUT = 6
# Seconds beyond the resume delay a resumed node may take to register before Slurm marks it DOWN.
RESUME_SLACK = 60


def slurm_conf(layout: ClusterLayout) -> str:
    s = layout.state_dir
    lines = [
        f"# Written by fluxmpi for the local cluster {layout.name!r}; removed by `fluxmpi cluster down`.",
        f"ClusterName={layout.name}",
        f"SlurmctldHost={layout.control_host}({layout.login_address})",
        f"SlurmctldPort={layout.slurmctld_port}",
        "SlurmdPort=6818",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        # One munged for the whole cluster: its socket is on the filesystem every namespace shares.
        f"AuthInfo=socket={layout.munge_socket}",
        f"StateSaveLocation={s}/ctld",
        f"SlurmdSpoolDir={s}/spool/%n",
        f"SlurmctldPidFile={s}/run/slurmctld.pid",
        f"SlurmdPidFile={s}/run/slurmd-%n.pid",
        f"SlurmctldLogFile={s}/log/slurmctld.log",
        f"SlurmdLogFile={s}/log/slurmd-%n.log",
        # PMIx keeps per-step directories under TmpFS; a shared /tmp makes the nodes collide.
        f"TmpFS={s}/tmp/%n",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "MpiDefault=pmix",
        "ReturnToService=2",
        # All nodes share the machine's hardware; the layout below is what Slurm schedules.
        "SlurmdParameters=config_overrides",
        "SchedulerType=sched/backfill",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "MessageTimeout=10",
        "InactiveLimit=0",
        "KillWait=5",
        "MinJobAge=120",
    ]
    if layout.gpus_per_node:
        lines.append("GresTypes=gpu")
    if layout.elastic:
        lines += power_saving_lines(layout)
    c = layout.cpus_per_node
    gres = f" Gres=gpu:{layout.gpus_per_node}" if layout.gpus_per_node else ""
    for node in layout.node_names:
        lines.append(
            f"NodeName={node} NodeAddr={layout.node_address(node)} NodeHostname={node} CPUs={c} "
            f"Boards=1 Sockets=1 CoresPerSocket={c} ThreadsPerCore=1 RealMemory={layout.memory_per_node_mb}"
            f"{gres} State=UNKNOWN")
    lines.append(
        f"PartitionName={layout.partition} Nodes={layout.nodelist} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def gres_conf(layout: ClusterLayout) -> str:
    """Each node's GPUs as files Slurm hands out (AutoDetect off: there is no driver to ask). With no cgroup
    device plugin, Slurm only sets the visibility variables (CUDA_VISIBLE_DEVICES, ...) from these indices."""
    lines = [f"# Written by fluxmpi for the local cluster {layout.name!r}: stand-in GPU device files.", "AutoDetect=off"]
    for node in layout.node_names:
        files = layout.gpu_files(node)
        lines.append(f"NodeName={node} Name=gpu File={files[0].parent}/gpu[0-{len(files) - 1}]")
    return "\n".join(lines) + "\n"


def power_saving_lines(layout: ClusterLayout) -> list[str]:
    """Slurm power saving (slurm.conf(5), 22.05): idle nodes are suspended after SuspendTime; a job that needs
    them runs the ResumeProgram and waits (state CONFIGURING) until their slurmd registers again."""
    return [
        f"SuspendProgram={layout.power_program('suspend')}",
        f"ResumeProgram={layout.power_program('resume')}",
        f"SuspendTime={layout.suspend_time}",
        f"SuspendTimeout={SUSPEND_TIMEOUT}",
        f"ResumeTimeout={int(layout.resume_delay) + RESUME_SLACK}",
        # No rate limit: the point is to measure one node's power-up latency, not a site's surge protection.
        "ResumeRate=0",
        "SuspendRate=0",
        # Look for idle nodes every second (default 10 s), so suspend times are what the layout says.
        "SlurmctldParameters=idle_on_node_suspend,power_save_interval=1,power_save_min_interval=0",
        "DebugFlags=Power",
    ]


def power_program(layout: ClusterLayout, action: str) -> str:
    """The script slurmctld runs with a hostlist argument; it hands over to fluxmpi.cluster.elastic.

    slurmctld gives its power programs an almost empty environment, so PATH, the Python, where fluxmpi is and
    the cluster state root are all spelled out here.
    """
    if action not in ("resume", "suspend"):
        raise ValueError(f"power program action {action!r} is not resume or suspend")
    package_parent = Path(__file__).resolve().parents[2]
    python = shlex.quote(sys.executable)
    return "\n".join([
        "#!/bin/sh",
        f"# {action.capitalize()}Program of the elastic fluxmpi cluster {layout.name!r} (see slurm.conf).",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        f"PYTHONPATH={shlex.quote(str(package_parent))}${{PYTHONPATH:+:$PYTHONPATH}}",
        f"FLUXMPI_CLUSTER_ROOT={shlex.quote(str(state_root()))}",
        "export PATH PYTHONPATH FLUXMPI_CLUSTER_ROOT",
        f"exec {python} -m fluxmpi.cluster.elastic {action} --state-dir {shlex.quote(str(layout.state_dir))} "
        f"\"$@\" >>{shlex.quote(str(layout.log('power')))} 2>&1",
        "",
    ])


def sshd_config(layout: ClusterLayout) -> str:
    etc = layout.state_dir / "etc"
    return "\n".join([
        f"# sshd of the fluxmpi local cluster {layout.name!r}: key login only, from the cluster's own key.",
        "Port 22",
        f"HostKey {etc}/ssh_host_ed25519_key",
        f"AuthorizedKeysFile {etc}/authorized_keys",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        # The state directory lives under a world-writable /var/tmp, which StrictModes would refuse.
        "StrictModes no",
        "PrintMotd no",
        "AcceptEnv FLUX_* FLUXMPI_* SLURM_CONF OMPI_* PMIX_*",
        "",
    ])


def ssh_config(layout: ClusterLayout) -> str:
    etc = layout.state_dir / "etc"
    hosts = " ".join(layout.node_names + [layout.node_address(n) for n in layout.node_names])
    return "\n".join([
        f"# ssh settings for reaching the nodes of the fluxmpi local cluster {layout.name!r}.",
        f"Host {hosts}",
        "  User root",
        f"  IdentityFile {etc}/id_ed25519",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {etc}/known_hosts",
        "  StrictHostKeyChecking yes",
        "  BatchMode yes",
        "  ConnectTimeout 10",
        "  LogLevel ERROR",
        "",
    ])


def known_hosts(layout: ClusterLayout, host_public_key: str) -> str:
    names = ",".join(layout.node_names + [layout.node_address(n) for n in layout.node_names])
    key = " ".join(host_public_key.split()[:2])
    return f"{names} {key}\n"


def ssh_wrapper(layout: ClusterLayout) -> str:
    return f'#!/bin/sh\n# ssh with the fluxmpi cluster {layout.name!r} settings\nexec ssh -F {layout.ssh_config} "$@"\n'
