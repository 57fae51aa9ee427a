"""Where tasks run: a Slurm partition or PBS queue, its node size and the settings blocks need.

The config builders take a `Site`, so they work the same on the local cluster and on a real one.
"""

from __future__ import annotations

import logging
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from .cluster import ClusterError, ClusterLayout, LocalCluster
from .cluster.layout import DEFAULT_NAME
from .errors import FluxmpiError

logger = logging.getLogger(__name__)


class SiteError(FluxmpiError, RuntimeError):
    """Slurm could not be asked about the cluster; the message says what failed and what to check."""


@dataclass(frozen=True)
class Site:
    name: str
    partition: str
    nodes: int                       # nodes in the partition (upper bound for a block)
    cores_per_node: int
    gpus_per_node: int = 0
    address: str | None = None       # how compute nodes reach the Parsl process; None lets Parsl probe
    env: dict = field(default_factory=dict)  # variables the Parsl process and the blocks need
    worker_init: str = ""            # shell lines run at the top of every block
    ssh: str | None = None           # an executable that reaches compute nodes (Flux path)
    # Directories a container's ranks must see besides their own: where slurmd's PMIx server keeps the
    # files its clients read (SlurmdSpoolDir), which `srun --mpi=pmix` ranks inside an image need. On the
    # local cluster its whole state directory: binding only the spool part of it was measured not to be enough.
    container_binds: tuple[str, ...] = ()
    # The batch system: "slurm" (partition = a Slurm partition) or "pbs" (partition = a PBS queue).
    scheduler: str = "slurm"
    # Which `mpiexec` ranks start with on a PBS site: "pals" (HPE Cray PALS, as on Polaris), "mpich" (hydra) or
    # "openmpi" (fluxmpi.launchers). Slurm sites start ranks with srun, or Open MPI's mpirun on htex-mpiexec.
    mpiexec: str = ""
    # More options every block's job script carries, e.g. PBS "-A project", "-l filesystems=home:eagle" (as
    # Polaris asks for) or Slurm "--account=project"; written as `#PBS ...` / `#SBATCH ...` lines.
    batch_options: tuple[str, ...] = ()

    def apply_env(self) -> None:
        """Export the site's variables into this process, so Parsl's sbatch and its blocks inherit them."""
        os.environ.update(self.env)

    @classmethod
    def from_local_cluster(cls, cluster: LocalCluster) -> "Site":
        lay = cluster.layout
        # On the PBS cluster ranks start with MPICH's hydra mpiexec (over the cluster's ssh): Debian's MPI whose
        # flags are PALS' nearest (-n, -ppn, hosts), where Open MPI would need a hostfile with slots.
        pbs = {"scheduler": "pbs", "mpiexec": "mpich"} if lay.scheduler == "pbs" else {}
        return cls(name=f"local:{lay.name}", partition=lay.partition, nodes=lay.nodes,
                   cores_per_node=lay.cpus_per_node, gpus_per_node=lay.gpus_per_node,
                   address=lay.login_address, env=cluster.env(),
                   ssh=str(lay.ssh_wrapper), container_binds=(str(lay.state_dir),), **pbs)

    @property
    def queue(self) -> str:
        """The PBS word for the partition."""
        return self.partition

    @classmethod
    def from_pbs(cls, queue: str | None = None, address: str | None = None, worker_init: str = "",
                 mpiexec: str = "pals", batch_options: tuple[str, ...] = (), env: dict | None = None) -> "Site":
        """Ask the PBS server about a queue (see site_from_pbs)."""
        return site_from_pbs(queue, address=address, worker_init=worker_init, mpiexec=mpiexec,
                             batch_options=batch_options, env=env)

    @classmethod
    def from_slurm(cls, partition: str | None = None, address: str | None = None,
                   worker_init: str = "", timeout: float = 20) -> "Site":
        """Ask the Slurm the environment points at (SLURM_CONF or /etc/slurm) about a partition."""
        fmt = "%P|%D|%c|%G|%a"
        argv = ["sinfo", "-h", "-o", fmt] + (["-p", partition] if partition else [])
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise SiteError("sinfo not found: this machine is not a Slurm login node (or Slurm is not on PATH); "
                            "use --cluster local for the embedded cluster")
        except subprocess.TimeoutExpired:
            raise SiteError(f"sinfo did not answer within {timeout:.0f}s: is slurmctld reachable "
                            f"(SLURM_CONF={os.environ.get('SLURM_CONF', '/etc/slurm/slurm.conf')})?")
        if proc.returncode != 0:
            raise SiteError(f"sinfo failed: {proc.stderr.strip() or proc.stdout.strip()}; is Slurm reachable?")
        rows = [line.split("|") for line in proc.stdout.splitlines() if line.strip()]
        if not rows:
            if partition:
                raise SiteError(f"partition {partition!r} does not exist; `sinfo -s` lists the partitions")
            raise SiteError("sinfo lists no partitions")
        # The default partition is marked with '*'; without --partition, use it.
        chosen = next((r for r in rows if r[0].endswith("*")), rows[0]) if not partition else rows[0]
        name = chosen[0].rstrip("*")
        if chosen[4] != "up":
            raise SiteError(f"partition {name!r} is {chosen[4]}, not up")
        nodes = sum(int(r[1]) for r in rows if r[0].rstrip("*") == name)
        cores = int(chosen[2].rstrip("+"))
        gpus = _gpus_from_gres(chosen[3])
        return cls(name=f"slurm:{name}", partition=name, nodes=nodes, cores_per_node=cores, gpus_per_node=gpus,
                   address=address, worker_init=worker_init, container_binds=_slurmd_spool_root(timeout))


PBS_MPIEXECS = ("pals", "mpich", "openmpi")


def site_from_pbs(queue: str | None = None, address: str | None = None, worker_init: str = "",
                  mpiexec: str = "pals", batch_options: tuple[str, ...] = (), env: dict | None = None) -> Site:
    """Ask the PBS server the environment points at (PBS_CONF_FILE or /etc/pbs.conf) about a queue: the server's
    default queue when none is given; its nodes (those tied to it with `queue`, else every untied node), and the
    smallest node's ncpus and ngpus, so that a block of any of them holds what a task asks for."""
    from . import pbs
    if mpiexec not in PBS_MPIEXECS:
        raise SiteError(f"mpiexec={mpiexec!r} is not known: give one of {', '.join(PBS_MPIEXECS)} "
                        f"(pals for HPE Cray PALS, as on Polaris)")
    try:
        if queue is None:
            queue = pbs.server_info(env).get("default_queue")
            if not queue:
                raise SiteError("the PBS server has no default_queue: give the queue (--partition QUEUE)")
        queues = pbs.queues_info(env)
        if queue not in queues:
            raise SiteError(f"queue {queue!r} does not exist; `qstat -Q` lists the queues: "
                            f"{', '.join(sorted(queues))}")
        q = queues[queue]
        if str(q.get("enabled", "True")) != "True" or str(q.get("started", "True")) != "True":
            raise SiteError(f"queue {queue!r} is not enabled and started (enabled={q.get('enabled')}, "
                            f"started={q.get('started')})")
        info = pbs.nodes_info(env)
    except pbs.PBSError as err:
        raise SiteError(f"PBS could not be asked about queue {queue!r}: {err}") from None
    nodes = pbs.queue_nodes(queue, info=info)
    if not nodes:
        raise SiteError(f"queue {queue!r} has no nodes: `pbsnodes -a` lists none it may use")
    avail = [info[n].get("resources_available", {}) for n in nodes]
    cores = min(int(a.get("ncpus", 1)) for a in avail)
    gpus = min(int(a.get("ngpus", 0)) for a in avail)
    return Site(name=f"pbs:{queue}", partition=queue, nodes=len(nodes), cores_per_node=cores, gpus_per_node=gpus,
                address=address, worker_init=worker_init, scheduler="pbs", mpiexec=mpiexec,
                batch_options=tuple(batch_options), env=dict(env or {}))


def _slurmd_spool_root(timeout: float) -> tuple[str, ...]:
    """SlurmdSpoolDir up to its first per-node pattern (%n, %h): one directory that holds every node's."""
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        logger.warning("scontrol show config failed (%s): containers get no PMIx directory bound", err)
        return ()
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "SlurmdSpoolDir" and value.strip().startswith("/"):
            return (spool_root(value.strip()),)
    return ()


def spool_root(value: str) -> str:
    """/var/spool/slurmd/%n -> /var/spool/slurmd; /var/spool/slurmd-%n -> /var/spool; a plain path as it is."""
    head = value.split("%", 1)[0]
    return head.rstrip("/") if "%" not in value or head.endswith("/") else os.path.dirname(head)


def _gpus_from_gres(gres: str) -> int:
    """'gpu:a100:4(S:0-1),foo:1' -> 4; '(null)' -> 0."""
    for item in gres.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] == "gpu" and parts[-1].isdigit():
            return int(parts[-1])
    return 0


def running_local_nodes(name: str = DEFAULT_NAME) -> int | None:
    """Nodes of the local cluster `name` if it is up, else None."""
    try:
        return LocalCluster.running(name).layout.nodes
    except ClusterError:
        return None


@contextmanager
def open_site(cluster: str = "local", *, nodes: int = 4, need: int | None = None, partition: str | None = None,
              address: str | None = None, name: str = DEFAULT_NAME, log=print) -> Iterator[Site]:
    """The Site to run on: "local" uses the local cluster `name` (booting it with `nodes` nodes if it is not
    up, and tearing it down afterwards only in that case); "slurm" asks the Slurm this machine points at, "pbs"
    the PBS server (`partition` is then its queue).

    need: the fewest nodes the work needs [nodes]. A local cluster already up is used as it is when it has at
    least that many, whatever its size; only a smaller one is an error."""
    if cluster == "slurm":
        yield Site.from_slurm(partition=partition, address=address)
        return
    if cluster == "pbs":
        yield Site.from_pbs(queue=partition, address=address)
        return
    if cluster != "local":
        raise SiteError(f"--cluster {cluster!r} is not known: use 'local' (the embedded cluster), 'slurm' or 'pbs'")
    booted = False
    try:
        local = LocalCluster.running(name)
    except ClusterError:
        local = LocalCluster(ClusterLayout(name=name, nodes=nodes))
        log(f"fluxmpi: booting the local cluster {name!r} ({nodes} nodes)")
        log(local.up())
        booted = True
    needed = nodes if need is None else need
    if local.layout.nodes < needed:
        raise SiteError(f"the local cluster {name!r} has {local.layout.nodes} nodes but the tasks need {needed}: "
                        f"`fluxmpi cluster down --name {name}` and let fluxmpi boot a bigger one "
                        f"(--cluster-nodes {max(needed, nodes)})")
    try:
        yield Site.from_local_cluster(local)
    finally:
        if booted:
            log(local.down())
