"""The flux-jobs path: a Parsl executor that submits every MPI task as a Flux job whose command is the MPI app.

Parsl's FluxExecutor runs each rank as a Python program that imports Parsl (~1.3 s of CPU per rank here) before
the app starts. This executor keeps Python out of the ranks:

- its one block (SlurmProvider) runs one Flux broker per node, with fluxmpi.launch.flux.block as the instance's
  initial program, which publishes the instance's ssh:// URI, its Python and the block's environment in
  <working_dir>/block-<id>/instance.json and then waits until the block is cancelled or its walltime is up;
- this process connects to that URI with flux-python (fluxmpi.launch.flux.client) and submits each call of
  fluxmpi.apps.run_mpi_task as a jobspec whose command is the task's app_argv, shaped by the task spec
  (fluxmpi.launch.flux.jobspec); Flux places the ranks and gives them PMI; output goes to per-task files;
- any other call (the run's compile task) runs as a one-rank Python job (fluxmpi.launch.flux.pyjob).

It submits exactly one block (like FluxExecutor) and does not replace it when it ends. Faults
(docs/reliability.md): a job with ranks on a broker Flux lost fails with "node failure on HOST", and that host is
kept out of every later job (Parsl's retry can come before Flux has marked it offline); when the connection to the
instance ends (its first node died), every job still out and every later one fails at once naming that node.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any, Callable

from parsl.config import Config
from parsl.executors.status_handling import BlockProviderExecutor
from parsl.jobs.states import TERMINAL_STATES
from parsl.utils import RepresentationMixin

from ... import slurm as slurm_client
from ...errors import FluxmpiError
from ...logs import log_into
from ...site import Site
from ...spec import MPITaskSpec
from ..blocks import BlockShape, slurm_provider
from .block import block_command
from .client import InstanceClient
from .executor import SURVIVE_NODE_LOSS, flux_client_env, flux_lost_nodes
from .install import FluxInstall, check_flux
from .jobspec import (
    LAUNCHER,
    FluxJobsError,
    JobEnd,
    JobRequest,
    check_fits,
    jobspec,
    mpi_request,
    python_request,
    resource_spec,
    task_failure,
    task_result,
)

logger = logging.getLogger(__name__)

URI_TIMEOUT = 300.0        # seconds for the block to start and publish its instance (queue wait included)
BLOCK_LOOK_PERIOD = 3.0    # seconds between squeue looks while waiting for the instance


class FluxJobsBlockError(FluxmpiError, RuntimeError):
    """The block's Flux instance never became reachable; names the Slurm job and its log."""


class _TaskFuture(Future):
    """A task's future that ignores a second outcome: Parsl's fail-all (set_bad_state_and_fail_all) sets an
    exception on every task the executor was given, finished or not, and may race a job's own end."""

    def set_result(self, result) -> None:
        try:
            super().set_result(result)
        except InvalidStateError:
            pass

    def set_exception(self, exception) -> None:
        try:
            super().set_exception(exception)
        except InvalidStateError:
            pass


class FluxJobsExecutor(BlockProviderExecutor, RepresentationMixin):
    """Run Parsl tasks as Flux jobs in one Slurm block holding a Flux instance (see the module docstring).

    provider: the block's provider (SlurmProvider); nodes_per_block x cores_per_node (+gpus_per_node): the block,
    against which every task is checked before submission. flux_path: the `flux` command on the nodes.
    working_dir: instance info, per-task stdout/stderr, packed Python calls. walltime: the block's, in seconds
    (the instance shuts down shortly before). uri_timeout: how long the block may take to publish its instance.
    """

    fluxmpi_launcher = LAUNCHER     # how fluxmpi's task bodies run here (fluxmpi.mpiapp)

    @staticmethod
    def fluxmpi_resources(spec: MPITaskSpec) -> dict:
        return resource_spec(spec)

    def __init__(self, provider, *, label: str = "flux_jobs", nodes_per_block: int = 1, cores_per_node: int = 1,
                 gpus_per_node: int = 0, flux_path: str = "flux", working_dir: str | None = None,
                 walltime: int = 1800, uri_timeout: float = URI_TIMEOUT, python: str | None = None,
                 link_timeout: int | None = None, block_error_handler: bool | Callable = True):
        super().__init__(provider=provider, block_error_handler=block_error_handler)
        self.label = label
        self.nodes_per_block, self.cores_per_node, self.gpus_per_node = nodes_per_block, cores_per_node, gpus_per_node
        self.flux_path, self.walltime, self.uri_timeout, self.python = flux_path, int(walltime), uri_timeout, python
        self.link_timeout = link_timeout
        self.working_dir = working_dir
        self._client: InstanceClient | None = None
        self._instance: dict | None = None
        self._waiting: list[tuple[JobRequest, Future]] = []   # submitted before the instance was reachable
        self._lock = threading.Lock()
        self._counter = 0
        self._stopped = threading.Event()
        self._block_started = False
        self._job_id: str | None = None     # the block's Slurm job
        # Hosts whose broker Flux lost: later jobs (Parsl's retries) must not go there. Flux takes a moment to mark
        # a lost broker offline, and a retry submitted within it was seen placed on the dead node again.
        self._lost_hosts: frozenset[str] = frozenset()

    # --- BlockProviderExecutor ------------------------------------------------------------------------------
    @property
    def workers_per_node(self) -> int:
        return self.cores_per_node     # at most one 1-core task per core at once

    @property
    def outstanding(self) -> int:
        return sum(1 for f in list(self._tasks.values()) if not f.done())

    @property
    def tasks_dir(self) -> str:
        return os.path.join(self.working_dir, "tasks")

    def _info_file(self, block_id: str) -> str:
        return os.path.join(self.working_dir, f"block-{block_id}", "instance.json")

    def _get_launch_command(self, block_id: str) -> str:
        info = self._info_file(block_id)
        os.makedirs(os.path.dirname(info), exist_ok=True)
        try:
            os.unlink(info)    # left by an earlier run in this run_dir whose first node died (resume): stale
        except FileNotFoundError:
            pass
        return block_command(info, self.flux_path, self.nodes_per_block, self.cores_per_node, self.walltime,
                             python=self.python, link_timeout=self.link_timeout)

    def start(self) -> None:
        log_into(self.run_dir)
        super().start()
        self.working_dir = os.path.abspath(self.working_dir or os.path.join(self.run_dir, self.label))
        os.makedirs(self.tasks_dir, exist_ok=True)
        blocks = self.scale_out_facade(1)      # the one block, at once (see scale_out_facade)
        threading.Thread(target=self._connect, args=(blocks[0] if blocks else None,), daemon=True,
                         name=f"{self.label}-connect").start()

    def shutdown(self) -> None:
        self._stopped.set()
        if self._client is not None:
            self._client.close()
        job_ids = [j for _, j in zip(*self._get_block_and_job_ids())]
        if job_ids and self.provider is not None:
            self.provider.cancel(job_ids)     # the instance ends with its block
        self._fail_waiting(FluxJobsBlockError(f"executor {self.label} shut down before the task was submitted"))
        super().shutdown()

    def handle_errors(self, status) -> None:
        super().handle_errors(status)
        # The one block ended (walltime, cancel, node failure): nothing will run the tasks still out.
        if status and all(s.state in TERMINAL_STATES for s in status.values()) and self.outstanding \
                and not self.bad_state_is_set:
            ended = "; ".join(f"block {b}: {s.state.name} {s.message or ''}".strip() for b, s in status.items())
            # Parsl's state says COMPLETED for a block that hit its walltime; Slurm's says why (TimeLimit, ...).
            slurm = _job_state(self._job_id) if self._job_id else None
            if slurm:
                ended += f"; Slurm job {self._job_id}: {slurm['state']} ({slurm['reason']})"
            self.set_bad_state_and_fail_all(FluxJobsBlockError(
                f"the Flux instance's block ended ({ended}); this executor does not start another"))

    def scale_out_facade(self, n: int) -> list[str]:
        """Start the executor's one block, once: start() asks at once, and Parsl's init-only strategy asks again at
        its first poll (seconds later), which must not start a second instance."""
        with self._lock:
            if self._block_started:
                return []
            self._block_started = True
        return super().scale_out_facade(1)

    # --- connecting -----------------------------------------------------------------------------------------
    def _block_log(self, job_id: str | None) -> str:
        info = (getattr(self.provider, "resources", {}) or {}).get(job_id) or {}
        return info.get("job_stdout_path") or f"the provider's script directory ({self.label}, job {job_id})"

    def _connect(self, block_id: str | None) -> None:
        try:
            if block_id is None or block_id not in self.blocks_to_job_id:
                why = "; ".join(s.message or s.state.name for s in self._simulated_status.values())
                raise FluxJobsBlockError(f"the Flux block could not be submitted: {why or 'no block was started'}")
            job_id = self.blocks_to_job_id[block_id]
            self._job_id = str(job_id)
            self._instance = self._wait_for_instance(self._info_file(block_id), str(job_id))
            self._client = InstanceClient(self._instance["uri"]).start()
            logger.info("%s: connected to the Flux instance of Slurm job %s at %s", self.label, job_id,
                        self._instance["uri"])
        except Exception as err:  # noqa: BLE001 - every waiting task gets the reason
            if not self._stopped.is_set():
                self.set_bad_state_and_fail_all(err if isinstance(err, FluxJobsBlockError)
                                                else FluxJobsBlockError(str(err)))
            self._fail_waiting(err)
            return
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for req, fut in waiting:
            self._send(req, fut)

    def _wait_for_instance(self, info_file: str, job_id: str) -> dict:
        """The block's instance.json, once it exists; an error naming the job and its log if it does not come."""
        deadline = time.monotonic() + self.uri_timeout
        next_look = time.monotonic() + BLOCK_LOOK_PERIOD
        while time.monotonic() < deadline and not self._stopped.is_set():
            if os.path.exists(info_file):
                with open(info_file) as f:
                    return json.load(f)
            if time.monotonic() >= next_look:
                next_look = time.monotonic() + BLOCK_LOOK_PERIOD
                state = _job_state(job_id)
                if state.get("state") not in (None, "PENDING", "CONFIGURING", "RUNNING"):
                    raise FluxJobsBlockError(
                        f"Slurm job {job_id} (the Flux block) is {state['state']} ({state.get('reason')}) and never "
                        f"published its instance in {info_file}: see its log {self._block_log(job_id)}")
            time.sleep(0.1)
        if self._stopped.is_set():
            raise FluxJobsBlockError("the executor shut down while waiting for its Flux instance")
        raise FluxJobsBlockError(
            f"the Flux instance of Slurm job {job_id} did not publish its URI in {info_file} within "
            f"{self.uri_timeout:.0f}s (still queued? `squeue -j {job_id}`); see its log {self._block_log(job_id)}")

    def _fail_waiting(self, err: BaseException) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
        for _, fut in waiting:
            if not fut.done():
                fut.set_exception(err)

    # --- tasks ----------------------------------------------------------------------------------------------
    def submit(self, func: Callable, resource_specification: dict, *args: Any, **kwargs: Any) -> Future:
        if self.bad_state_is_set:
            raise self.executor_exception
        fut = _TaskFuture()
        with self._lock:
            self._counter += 1
            fut.parsl_executor_task_id = self._counter
            self._tasks[self._counter] = fut
            n = self._counter
        try:
            req = mpi_request(func, resource_specification, args, kwargs, self.tasks_dir)
            if req is None:
                req = self._python_call(n, func, resource_specification, args, kwargs)
            check_fits(req, self.nodes_per_block, self.cores_per_node, self.gpus_per_node)
        except Exception as err:  # noqa: BLE001 - refused before Flux saw it: the task fails with the reason
            fut.set_exception(err)
            return fut
        with self._lock:
            if self._client is None:
                self._waiting.append((req, fut))
                return fut
        self._send(req, fut)
        return fut

    def _python_call(self, n: int, func: Callable, rs: dict, args: tuple, kwargs: dict) -> JobRequest:
        from parsl.serialize import pack_apply_message

        req = python_request(f"parsl-{n}", rs, self.python or "python3", self.tasks_dir)
        # The block's own Python runs the call once the instance is known (see _send).
        with open(req.call_file, "wb") as f:
            f.write(pack_apply_message(func, args, kwargs))
        return req

    def _send(self, req: JobRequest, fut: Future) -> None:
        info = self._instance or {}
        if req.kind == "python" and not self.python and info.get("python"):
            req.command[0] = info["python"]
        env = info.get("env") or {}
        self._client.submit(jobspec(req, env, self.working_dir, avoid=self._lost_hosts),
                            lambda end: self._ended(req, fut, end, env.get("FLUXMPI_ENV_FILE")))

    def _instance_lost(self, why: str) -> str:
        """What a task still out is told once the connection to the instance is gone: where the instance was."""
        info = self._instance or {}
        return (f"the Flux instance stopped answering: the connection to its leader broker on the first node "
                f"{info.get('host', '?')} of Slurm job {self._job_id} was lost ({why}); that node "
                f"died, cannot be reached or the instance ended, and this executor starts no other instance")

    def _ended(self, req: JobRequest, fut: Future, end: JobEnd, env_file: str | None) -> None:
        if fut.done():
            return
        connection_lost = self._client.lost if self._client is not None else None
        if end.error and connection_lost:
            end.error = self._instance_lost(connection_lost)
        ok = not end.error and not end.exception and end.status == 0
        if end.exception:
            dead = flux_lost_nodes([end.exception[1]])
            if dead:       # before the future fails: Parsl may submit the retry from inside set_exception
                self._lost_hosts = self._lost_hosts | set(dead)
                logger.warning("%s: Flux lost node(s) %s; later jobs avoid them", self.label, ", ".join(sorted(dead)))
        if not ok:
            failure = task_failure(req, end)
            logger.info("%s: %s", self.label, str(failure).splitlines()[0])
            fut.set_exception(failure)
        elif req.kind == "python":
            from parsl.serialize import deserialize
            try:
                with open(req.result_file, "rb") as f:
                    fut.set_result(deserialize(f.read()))
            except Exception as err:  # noqa: BLE001
                fut.set_exception(FluxJobsError(f"task {req.task}: its result {req.result_file} is unreadable: {err}"))
        else:
            fut.set_result(task_result(req, end, env_file))


def _job_state(job_id: str) -> dict:
    """The block's Slurm state, reason and nodes; {} when squeue does not answer (asked again later)."""
    try:
        return slurm_client.job_states([job_id]).get(job_id, {})
    except slurm_client.SlurmError as err:
        logger.info("squeue about the Flux block %s: %s", job_id, err)
        return {}


def flux_jobs_config(site: Site, *, nodes_per_block: int | None = None, walltime: int | str = 1800,
                     worker_init: str = "", run_dir: str = "runinfo", label: str = "flux_jobs",
                     install: FluxInstall | None = None, uri_timeout: float = URI_TIMEOUT,
                     status_period: int = 60, link_timeout: int | None = None, apply_env: bool = True) -> Config:
    """A Parsl Config with one FluxJobsExecutor: one Slurm block of `nodes_per_block` nodes running Flux.

    worker_init: shell lines for the block before the brokers start; the jobs get the resulting environment.
    link_timeout: seconds before a broker whose link is down is dropped (as on the flux path: the run's
    heartbeat threshold). apply_env: export FLUX_SSH / FLUX_SSH_RCMD into this process (flux's ssh connector
    reads them from it).
    """
    install = install or check_flux()
    shape = BlockShape.build(site, nodes_per_block, 1, walltime)
    client_env = flux_client_env(site, install)
    if apply_env:
        os.environ.update(client_env)
    executor = FluxJobsExecutor(
        slurm_provider(site, shape, worker_init, status_period=status_period, sbatch_options=(SURVIVE_NODE_LOSS,)),
        label=label, nodes_per_block=shape.nodes_per_block, cores_per_node=site.cores_per_node,
        gpus_per_node=site.gpus_per_node, flux_path=install.flux,
        working_dir=str(Path(run_dir).resolve() / label), walltime=shape.walltime, uri_timeout=uri_timeout,
        link_timeout=link_timeout)
    return Config(executors=[executor], run_dir=run_dir, strategy="none", initialize_logging=True)
