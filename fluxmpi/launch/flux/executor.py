"""Flux inside Slurm blocks: Parsl's FluxExecutor + SlurmProvider, Flux placing the node-spanning MPI tasks.

The block runs one Flux broker per node (srun, PMI-bootstrapped); the instance's first program is Parsl's
instance manager, which calls this process back and hands it the instance's URI. Parsl then submits each task
as one Flux job of `ranks` tasks over `nodes` nodes, and Flux (not Parsl, not fluxmpi) decides where they go.

What FluxExecutor needs from the site, and how fluxmpi supplies it:
- The manager calls back to `{hostname}` of this process. On the local cluster that name resolves to
  127.0.0.1, which inside a node is the node itself, so the launch command carries `site.address` instead.
- From another host the manager hands out an `ssh://NODE/...` URI: this process must ssh to the block's first
  node without a password. FLUX_SSH names the ssh executable (a wrapper script, not a command with arguments),
  FLUX_SSH_RCMD the remote `flux`; flux's ssh connector reads both from this process's environment.
- It runs the app body once per Flux task (MPI rank); see fluxmpi.apps.run_flux_rank.
- It gives tasks this process's environment and cwd, not the block's worker_init: the site's set-up lines are
  therefore handed to every rank (`task_init`), which sources them before starting the MPI app.
- Its resource keys are num_tasks, cores_per_task, gpus_per_task, num_nodes; it has no exclusive key, so an
  exclusive task asks for every core of its nodes instead (`flux_resource_spec`).
- It submits exactly one block and never scales.

When a node of the block dies or its link stays down (docs/reliability.md has the measurements):
- The block and the broker step are submitted with `--no-kill`: without it Slurm fails the whole block
  (NODE_FAIL, after SlurmdTimeout) and srun ends every broker, so the instance and all its tasks would go with
  one node. With it, Slurm drops the node from the block and the other brokers go on.
- Flux's leader drops a broker at once when its connection closes (the node's processes died) or when its
  peer has not acknowledged data for tbon.tcp_user_timeout seconds (the link is down): fluxmpi sets that to
  the run's heartbeat threshold, so a shorter link outage is ridden out, as on the HTEX paths. Jobs with ranks
  on the dropped node get a fatal exception, "node failure on HOST (rank N)"; Parsl retries them (if retries
  are allowed) and Flux schedules them on the brokers left. flux_lost_nodes() reads the lost hosts from it.
- The block's first node is different: it runs the leader broker and Parsl's instance manager, so when it
  dies the instance is gone with every task it held, and FluxExecutor starts no other block.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import subprocess
import threading
from concurrent.futures import Future
from typing import Iterable

from parsl.config import Config
from parsl.executors import FluxExecutor

from ...logs import log_into
from ...site import Site
from ...spec import MPITaskSpec, SpecError
from ..blocks import BlockShape, slurm_provider
from ..resilience import Resilience
from .install import FluxInstall, FluxSetupError, check_flux

logger = logging.getLogger(__name__)

# How Slurm hands the brokers their PMI: Flux's broker speaks PMI-1/PMI-2 (wire protocol or libpmi2); Debian's
# Slurm offers pmi2 beside pmix. Open MPI ranks inside Flux get PMI from Flux itself, not from this.
BROKER_PMI = "pmi2"
# The keys Parsl's FluxExecutor reads; it ignores any other silently, so fluxmpi never sends another.
FLUX_EXECUTOR_KEYS = ("num_tasks", "cores_per_task", "gpus_per_task", "num_nodes")
# Keep the block, and the step of brokers, when one of its nodes fails (sbatch and srun both need it).
SURVIVE_NODE_LOSS = "--no-kill"
# What flux-python's job executor (0.88) raises once its connection to the instance is gone: for the jobs it was
# watching, then for every job submitted after (Parsl's retries); and what the flux-jobs executor says then
# (fluxmpi.launch.flux.jobs, naming the first node itself).
_INSTANCE_GONE = ("reactor start failed", "Executor is broken, new futures cannot be scheduled",
                  "the Flux instance stopped answering")
# The fatal exception Flux's job-exec raises on jobs with ranks on a broker that was lost (flux-core 0.88).
DRAIN_TIMEOUT = 30.0   # seconds for `flux resource drain` over ssh
_NODE_FAILURE = re.compile(r"node failure on (?P<host>[^\s()'\"]+) \((?:shell )?rank (?P<rank>\d+)\)")


def flux_resource_spec(spec: MPITaskSpec, cores_per_node: int) -> dict[str, int]:
    """FluxExecutor's resource_specification for `spec` on nodes of `cores_per_node` cores.

    Exclusive tasks take whole nodes: with no exclusive key, each rank asks for cores_per_node / ranks_per_node
    cores, so the task's slots fill its nodes and Flux can place nothing else there.
    """
    rs = spec.flux_executor_spec()
    check_exclusive_fits(spec, cores_per_node)
    if spec.exclusive:
        rs["cores_per_task"] = max(spec.cores_per_rank, cores_per_node // spec.ranks_per_node)
    assert set(rs) <= set(FLUX_EXECUTOR_KEYS), rs
    return rs


def check_exclusive_fits(spec: MPITaskSpec, cores_per_node: int) -> None:
    """Refuse an exclusive task whose ranks cannot split a node's cores evenly (Flux would leave some free)."""
    if not spec.exclusive:
        return
    if spec.ranks_per_node > cores_per_node or cores_per_node % spec.ranks_per_node:
        divisors = [d for d in range(1, cores_per_node + 1) if cores_per_node % d == 0]
        raise SpecError(
            f"task {spec} is exclusive, which the Flux path honours by giving each rank "
            f"{cores_per_node} cores / ranks_per_node of a node (FluxExecutor has no exclusive key), but "
            f"{cores_per_node} cores do not split evenly over ranks_per_node={spec.ranks_per_node}: use "
            f"ranks_per_node in {divisors}, or exclusive=False to let other tasks share the node's free cores")


def callback_address(site: Site, hostname: str | None = None) -> str:
    """The address the instance manager in the block uses to reach this process.

    site.address when given (the local cluster's bridge address); otherwise this host's name (`hostname`
    [socket.gethostname()]), unless that resolves to a loopback address: on a compute node that is the node.
    """
    if site.address:
        return site.address
    name = hostname or socket.gethostname()
    try:
        resolved = socket.gethostbyname(name)
    except OSError as err:
        raise FluxSetupError(f"this host's name {name!r} does not resolve ({err}): give the site an address "
                             f"compute nodes reach this machine on (Site(address=...), fluxmpi --address)") from None
    if ipaddress.ip_address(resolved).is_loopback:
        raise FluxSetupError(
            f"this host's name {name!r} resolves to {resolved}, a loopback address: the Flux instance manager on "
            f"a compute node would call itself back. Give the site the address compute nodes reach this "
            f"machine on (Site(address=...), fluxmpi --address)")
    return name


def broker_launch_cmd(install: FluxInstall, nodes: int, cores_per_node: int, address: str,
                      broker_pmi: str = BROKER_PMI, link_timeout: int | None = None,
                      publish_to: str | None = None, gpus_per_node: int = 0) -> str:
    """FluxExecutor's launch_cmd: one broker per node of the block, the instance manager as its program.

    Parsl fills {flux} {python} {manager} {protocol} {port} (str.format); the address is fixed here.
    --cpus-per-task gives each broker's step the whole node, so a site that confines steps to their CPUs
    (task/affinity, task/cgroup) does not leave Flux one core per node. --no-kill keeps the other brokers
    running when one node fails. link_timeout: seconds a broker's peer may leave data unacknowledged before
    it is dropped (tbon.tcp_user_timeout; None: Flux's default, 20 s in flux-core 0.88). publish_to: a file the
    instance's remote URI is written to before the manager starts (fluxmpi.launch.flux.block), so this process
    can drain a lost node in the instance (FluxMPIExecutor). gpus_per_node: the instance is told its nodes' cores
    and GPUs by a resource configuration written next to publish_to, as on the flux-jobs path (block_command).
    """
    if not address or any(c in address for c in "{} \t\n'\""):
        raise FluxSetupError(f"callback address {address!r} is not a host name or IP address")
    brokers = broker_step("{flux}", nodes, cores_per_node, broker_pmi, link_timeout)
    manager = "{python} {manager} {protocol} " + address + " {port}"
    if publish_to is None:
        if gpus_per_node:
            raise FluxSetupError("a block with GPUs needs publish_to: its resource configuration goes beside it")
        return " ".join(brokers) + " " + manager
    if any(c in publish_to for c in "{} \t\n'\"\\$`"):
        raise FluxSetupError(f"the run directory {publish_to!r} must not hold spaces, quotes, braces or $: "
                             f"it becomes part of the block's shell command; choose another run_dir")
    write = ""
    if gpus_per_node:
        conf = os.path.join(os.path.dirname(publish_to), "resource.toml")
        write = (f"printf '[resource]\\nnoverify = true\\n[[resource.config]]\\nhosts = \"%s\"\\n"
                 f"cores = \"0-{cores_per_node - 1}\"\\ngpus = \"0-{gpus_per_node - 1}\"\\n' \"$SLURM_JOB_NODELIST\" "
                 f"> {conf} && ")
        brokers[brokers.index("start") + 1:brokers.index("start") + 1] = ["-c", conf]
    return (write + " ".join(brokers)
            + f" {{python}} -m fluxmpi.launch.flux.block {publish_to} {{flux}} --then " + manager)


def broker_step(flux: str, nodes: int, cores_per_node: int, broker_pmi: str = BROKER_PMI,
                link_timeout: int | None = None) -> list[str]:
    """`srun ... flux start [options]`: one broker per node of a block, shared by both Flux paths; the
    instance's initial program follows. See broker_launch_cmd for why each option is there."""
    if link_timeout is not None and (isinstance(link_timeout, bool) or not isinstance(link_timeout, int)
                                     or link_timeout < 1):
        raise SpecError(f"link_timeout={link_timeout!r} must be whole seconds of at least 1")
    srun = ["srun", f"--mpi={broker_pmi}", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            f"--cpus-per-task={cores_per_node}", "--cpu-bind=none", SURVIVE_NODE_LOSS]
    return srun + [flux, "start"] + ([f"-Stbon.tcp_user_timeout={link_timeout}s"] if link_timeout else [])


# On a PBS block the brokers start with the site's mpiexec, one per node of $PBS_NODEFILE (`mpiexec -n N --ppn 1
# flux start`, as Flux is started inside PBS jobs): each mpiexec's words for "one per node, unbound" and for
# "keep the others when one exits" (hydra kills every process once one fails, unless told not to).
_MPIEXEC_BROKERS = {
    "mpiexec-mpich": ["-ppn", "1", "-bind-to", "none", "-disable-auto-cleanup", "-f"],
    "mpiexec-pals": ["--ppn", "1", "--cpu-bind", "none", "--hostfile"],
    "mpiexec-openmpi": ["--map-by", "ppr:1:node", "--bind-to", "none", "--hostfile"],
}


def mpiexec_broker_step(flux: str, nodes: int, mpiexec: str, hostfile: str,
                        link_timeout: int | None = None) -> list[str]:
    """`mpiexec -n N <one per node> <hostfile> flux start [options]`: the brokers of a PBS block (mpiexec: a name of
    fluxmpi.launchers, the site's). Flux's broker bootstraps from the PMI the mpiexec offers (hydra's and PALS'
    PMI-1; Open MPI's PMIx needs flux-core built with it)."""
    if mpiexec not in _MPIEXEC_BROKERS:
        raise SpecError(f"the Flux brokers cannot start with {mpiexec!r}: use one of {', '.join(_MPIEXEC_BROKERS)}")
    program = "mpiexec.mpich" if mpiexec == "mpiexec-mpich" else "mpiexec"
    return ([program, "-n", str(nodes), *_MPIEXEC_BROKERS[mpiexec], hostfile, flux, "start"]
            + ([f"-Stbon.tcp_user_timeout={link_timeout}s"] if link_timeout else []))


def flux_instance_gone(error: str | None) -> bool:
    """Whether a task failed because FluxExecutor lost its connection to the block's Flux instance."""
    return bool(error) and any(words in error for words in _INSTANCE_GONE)


def instance_gone_note(first_nodes: Iterable[str]) -> str:
    """What to tell the user about a task that failed with flux_instance_gone, while its block still ran."""
    where = ", ".join(sorted(first_nodes)) or "unknown"
    return (f"the block's Flux instance stopped answering: its first node ({where}), where the leader broker and "
            f"Parsl's instance manager run, died or cannot be reached, and FluxExecutor starts no other block; "
            f"resume reruns the task")


def flux_lost_nodes(errors: Iterable[str]) -> dict[str, str]:
    """{host: why} for every node Flux reported lost in the task errors `errors` ("node failure on HOST (rank N)"
    in a job's exception: its broker died or stopped answering)."""
    lost: dict[str, str] = {}
    for text in errors:
        for m in _NODE_FAILURE.finditer(text or ""):
            lost.setdefault(m["host"], f"Flux lost its broker (rank {m['rank']}): its jobs failed with "
                                       f"'node failure on {m['host']}'")
    return lost


def drain_in_instance(flux: str, uri: str, hosts: Iterable[str], reason: str, timeout: float = DRAIN_TIMEOUT) -> str:
    """Drain `hosts` in the Flux instance at `uri` (`flux resource drain`), so the scheduler places nothing more
    there; returns "" or what went wrong (the caller logs it and goes on: the drain is a safeguard)."""
    hostlist = ",".join(sorted(hosts))
    try:
        proc = subprocess.run([flux, "resource", "drain", hostlist, reason], env={**os.environ, "FLUX_URI": uri},
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`flux resource drain {hostlist}` did not finish: {err}"
    return "" if proc.returncode == 0 else f"`flux resource drain {hostlist}` failed: {proc.stderr.strip()}"


def flux_client_env(site: Site, install: FluxInstall) -> dict[str, str]:
    """What flux's ssh connector in this process needs to reach the instance on the block's first node."""
    env = {"FLUX_SSH_RCMD": install.flux}
    ssh = site.ssh or os.environ.get("FLUX_SSH")
    if ssh:
        if not (os.path.isfile(ssh) and os.access(ssh, os.X_OK)):
            raise FluxSetupError(
                f"FLUX_SSH must name an executable ssh (a wrapper script), got {ssh!r}: flux runs it without a "
                f"shell, so a command with arguments does not work; write them into a script and give its path")
        env["FLUX_SSH"] = ssh
    return env


def task_init(site: Site, worker_init: str = "") -> str:
    """Shell lines every rank sources before its MPI app (FluxExecutor tasks skip the block's worker_init)."""
    return "\n".join(line for line in (site.worker_init, worker_init) if line.strip())


class _RelayFuture(Future):
    """The future Parsl gets for a FluxExecutor task: it ends when the inner one does, after fluxmpi has acted on a
    lost node (see FluxMPIExecutor); cancelling it cancels the Flux job."""

    def __init__(self, inner: Future):
        super().__init__()
        self._inner = inner

    def cancel(self) -> bool:
        return self._inner.cancel() and Future.cancel(self)


class FluxMPIExecutor(FluxExecutor):
    """Parsl's FluxExecutor, saying how fluxmpi's task bodies run on it: once per rank (launcher "flux"), with
    the resources a spec becomes here and the set-up lines each rank sources (FluxExecutor tasks skip the
    block's worker_init). A task larger than the block is refused at submit (Flux would keep it pending until
    the block ends).

    A task that fails with "node failure on HOST" (Flux lost that node's broker) does not fail towards Parsl
    until HOST is drained in the instance: Flux marks a lost broker offline a moment later, and Parsl's retry,
    submitted from inside the failure, was seen placed on the dead node again within that moment. The block's
    initial program publishes the instance's URI in `instance_file` for this (broker_launch_cmd)."""

    fluxmpi_launcher = "flux"

    def __init__(self, *, nodes_per_block: int, cores_per_node: int, task_init: str = "",
                 instance_file: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.nodes_per_block, self.cores_per_node, self.fluxmpi_task_init = nodes_per_block, cores_per_node, task_init
        self.instance_file = instance_file
        self.drained: set[str] = set()           # hosts drained in the instance after Flux lost them
        self._drain_lock = threading.Lock()

    def fluxmpi_resources(self, spec: MPITaskSpec) -> dict[str, int]:
        return flux_resource_spec(spec, self.cores_per_node)

    def start(self) -> None:
        log_into(self.run_dir)
        if self.instance_file:
            try:
                os.unlink(self.instance_file)    # an earlier run's in this run_dir (resume): stale
            except FileNotFoundError:
                pass
        super().start()

    def submit(self, func, resource_specification, *args, **kwargs):
        nodes = (resource_specification or {}).get("num_nodes") or 1
        if nodes > self.nodes_per_block:
            raise SpecError(f"a task asks for {nodes} nodes but the Flux instance of {self.label} has "
                            f"{self.nodes_per_block}: it could never run; ask for at most {self.nodes_per_block}")
        inner = super().submit(func, resource_specification, *args, **kwargs)
        outer = _RelayFuture(inner)
        inner.add_done_callback(lambda f: self._relay(f, outer))
        return outer

    def _relay(self, inner: Future, outer: Future) -> None:
        if inner.cancelled():
            Future.cancel(outer)
            return
        err = inner.exception()
        if err is None:
            outer.set_result(inner.result())
            return
        lost = set(flux_lost_nodes([str(err)])) - self.drained
        if not lost or not self.instance_file:
            outer.set_exception(err)
            return
        # Off Flux's callback thread: the drain is an ssh round trip.
        threading.Thread(target=self._drain_then_fail, args=(lost, err, outer), daemon=True,
                         name=f"{self.label}-drain").start()

    def _drain_then_fail(self, hosts: set[str], err: BaseException, outer: Future) -> None:
        with self._drain_lock:
            hosts -= self.drained
            if hosts:
                problem = self._drain(hosts)
                if problem:
                    logger.warning("%s: Flux lost %s; %s (a retry may land there once more)", self.label,
                                   ", ".join(sorted(hosts)), problem)
                else:
                    logger.warning("%s: Flux lost %s; drained it in the instance, later tasks avoid it",
                                   self.label, ", ".join(sorted(hosts)))
                self.drained |= hosts
        outer.set_exception(err)

    def _drain(self, hosts: set[str]) -> str:
        try:
            with open(self.instance_file) as f:
                uri = json.load(f)["uri"]
        except (OSError, ValueError, KeyError) as e:
            return f"the instance's URI is unknown ({self.instance_file}: {e})"
        return drain_in_instance(self.flux_path, uri, hosts, "fluxmpi: Flux lost its broker (node failure)")


def flux_config(site: Site, *, nodes_per_block: int | None = None, walltime: int | str = 1800,
                worker_init: str = "", run_dir: str = "runinfo", label: str = "flux",
                install: FluxInstall | None = None, broker_pmi: str = BROKER_PMI,
                apply_env: bool = True, resilience: Resilience | None = None) -> Config:
    """A Parsl Config running MPI tasks as Flux jobs inside one Slurm block of `nodes_per_block` nodes.

    site: partition, node size, the address compute nodes reach this process on, and its ssh wrapper.
    nodes_per_block: nodes of the block [all of the partition]; a task may span up to this many.
    worker_init: extra shell lines for the block (before the brokers start); tasks get them via task_init.
    install: a checked Flux install [check_flux(): found, importable, versions agree, else FluxSetupError].
    apply_env: export FLUX_SSH / FLUX_SSH_RCMD into this process (flux's ssh connector reads them from it).
    resilience: its heartbeat_threshold becomes the brokers' link timeout (tbon.tcp_user_timeout): a node
        whose link is down longer is dropped from the instance [Resilience(): 120 s].
    """
    install = install or check_flux()
    shape = BlockShape.build(site, nodes_per_block, 1, walltime)
    client_env = flux_client_env(site, install)
    res = resilience or Resilience()
    working_dir = os.path.join(os.path.abspath(run_dir), label)
    instance_file = os.path.join(working_dir, "instance.json")
    launch_cmd = broker_launch_cmd(install, shape.nodes_per_block, site.cores_per_node, callback_address(site),
                                   broker_pmi, link_timeout=res.heartbeat_threshold, publish_to=instance_file,
                                   gpus_per_node=site.gpus_per_node)
    if apply_env:
        os.environ.update(client_env)
    executor = FluxMPIExecutor(
        nodes_per_block=shape.nodes_per_block,
        cores_per_node=site.cores_per_node,
        task_init=task_init(site, worker_init),
        instance_file=instance_file,
        label=label,
        provider=slurm_provider(site, shape, worker_init, sbatch_options=(SURVIVE_NODE_LOSS,)),
        working_dir=working_dir,
        flux_path=install.flux,
        launch_cmd=launch_cmd,
    )
    return Config(executors=[executor], run_dir=run_dir, strategy="none", initialize_logging=True)

