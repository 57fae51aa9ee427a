"""One run: load a launch path's Parsl config, compile the app on the cluster, run the tasks, check placements.

Every wait is bounded and says what it waited for; finished tasks' records are kept whatever happens after:
run.json is rewritten within a second of every finished task and when the run ends, fails or is interrupted (SIGINT,
SIGTERM), and a run can be resumed from it (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import parsl
from parsl.executors.high_throughput.errors import ManagerLost

from . import pbs, placement, slurm, usage
from .apps import compile_app, run_mpi_task
from .errors import FluxmpiError
from .launch.flux.executor import (
    flux_instance_gone,
    flux_lost_nodes,
    instance_gone_note,
)
from .launch.gate import check_policy
from .launch.paths import LaunchPath, get_path
from .launch.resilience import Resilience
from .launch.scaling import Scaling
from .launchers import compiler_for
from .launch.watch import ACTIVE_STATES, BlockWatch
from .container import site_binds
from .mpi_apps import TASK_ID_RE, app_command
from .mpiapp import MPICommand
from .rank_wrapper import wrap
from .rankfault import RankFault, as_faults, task_fault_options
from .resume import finished_tasks
from .rundir import RunDir, write_json_text
from .schedulers import ERRORS, client_for, client_of_provider
from .site import Site
from .spec import MPITaskSpec, SpecError, parse_walltime

logger = logging.getLogger(__name__)

COMPILE_TIMEOUT = 300.0
CLEANUP_TIMEOUT = 60.0
CANCEL_TIMEOUT = 30.0   # seconds to wait for cancelled blocks to leave squeue's active states
WATCH_PERIOD = 5.0      # seconds between looks at the blocks' Slurm jobs
RUN_JSON_PERIOD = 1.0   # seconds: run.json is at most this much behind the tasks that finished (see below)
RUN_JSON_CPU_SHARE = 0.01   # ... unless a rewrite costs more than this share of a core at that pace: then rarer


class RunError(FluxmpiError, RuntimeError):
    """The run could not proceed (blocks never started, compile failed); the message says what and where."""


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run. Its blocks were cancelled and run.json written before this was raised;
    `result` holds what finished (run again with resume=True / --resume to run only the rest)."""

    def __init__(self, signal_name: str, result: "RunResult | None" = None):
        super().__init__(signal_name)
        self.signal_name, self.result = signal_name, result


@dataclass
class TaskOutcome:
    task: str
    spec: dict
    submitted: float
    returned: float | None = None
    ok: bool = False
    error: str | None = None
    result: dict | None = None
    admitted: float | None = None       # handed to the executor (after the node gate, if the path has one)
    attempts: int = 0                   # times it ran (more than 1 with retries)
    earlier_errors: list[str] = field(default_factory=list)   # why the attempts before the last failed
    skipped: bool = False               # finished in an earlier run of the same workdir (resume)
    command: list[str] | None = None    # the user's program and arguments (None: the bundled app)
    lost_pool_hosts: list[str] = field(default_factory=list)  # hosts whose worker pool was lost running it


@dataclass
class RunResult:
    path: str
    site: str
    workdir: str
    t_start: float
    t_loaded: float
    t_compiled: float | None
    t_first_result: float | None
    t_end: float
    tasks: list[TaskOutcome] = field(default_factory=list)
    placement_ok: bool = False
    placement_report: str = ""
    interrupted: str | None = None      # "SIGINT" / "SIGTERM" if a signal stopped the run
    retries: int = 0
    blocks: dict = field(default_factory=dict)        # Slurm job id -> last state seen (state, reason, nodes)
    block_walltime: int | None = None                 # seconds each block was asked for
    lost_nodes: dict = field(default_factory=dict)    # node -> Slurm state (reason), for nodes of the run's blocks
    nodes_back: dict = field(default_factory=dict)    # node lost, back in service and given tasks again -> how
    cancelled_jobs: list[str] = field(default_factory=list)   # blocks still active at the end, cancelled
    retired_jobs: list[str] = field(default_factory=list)     # blocks cancelled mid-run: their worker pool was lost
    # For the start-up breakdown: when the first block started running (Slurm's StartTime, whole seconds) and
    # when the compile task began on a node (its worker pool or Flux instance was ready by then).
    t_block_started: float | None = None
    t_compile_began: float | None = None
    usage: dict = field(default_factory=dict)   # node-seconds paid (blocks) and used (tasks): fluxmpi.usage

    @property
    def failed(self) -> list[TaskOutcome]:
        return [t for t in self.tasks if not t.ok]

    @property
    def skipped(self) -> list[TaskOutcome]:
        return [t for t in self.tasks if t.skipped]

    @property
    def ok(self) -> bool:
        return not self.failed and self.placement_ok and not self.interrupted

    def to_json(self) -> dict:
        data = asdict(self)
        data["ok"] = self.ok
        data["complete"] = True
        return data


def _task_names(names: list[str] | None, count: int) -> list[str]:
    """The tasks' names: given ones checked (they name files), else t0, t1, ..."""
    if names is None:
        return [f"t{i}" for i in range(count)]
    if len(names) != count:
        raise SpecError(f"{len(names)} names for {count} tasks: give one name per task")
    bad = [n for n in names if not isinstance(n, str) or not TASK_ID_RE.fullmatch(n)]
    if bad:
        raise SpecError(f"task name(s) {bad}: use letters, digits, '_', '.', '-' (they name files), at most 128")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SpecError(f"task name(s) {twice} given more than once: each task needs a name of its own")
    return list(names)


def default_workdir(path: str) -> Path:
    return Path.cwd() / "fluxmpi-runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{path}"


def _python_app(fn: Callable, label: str):
    return parsl.python_app(fn, executors=[label])


def _cleanup_parsl(dfk, timeout: float = CLEANUP_TIMEOUT, cancelled: list[str] | None = None,
                   let_go: set[str] = frozenset()) -> list[str]:
    """Shut Parsl down within `timeout`, then cancel whatever of its Slurm jobs is still active: Parsl leaves its
    blocks running when an executor is in a bad state, and a hung shutdown leaves them all. Returns the run's job
    ids; the ones that had to be cancelled here are appended to `cancelled`. `let_go`: jobs cancelled earlier
    (a lost worker pool's block), whose end is not waited for."""
    done = threading.Event()

    def shut():
        try:
            dfk.cleanup()
        finally:
            done.set()
    threading.Thread(target=shut, name="fluxmpi-cleanup", daemon=True).start()
    done.wait(timeout)
    job_ids = _job_ids(dfk)
    still = _cancel_active([j for j in job_ids if j not in let_go], client=_client_of(dfk))
    if cancelled is not None:
        cancelled += still
    parsl.clear()
    return job_ids


def _client_of(dfk):
    """The batch system client (fluxmpi.schedulers) the run's blocks were submitted with."""
    clients = {client_of_provider(ex.provider) for ex in dfk.executors.values() if getattr(ex, "provider", None)}
    return pbs if pbs in clients else slurm


def _job_ids(dfk) -> list[str]:
    """The Slurm job ids of every block the run's executors submitted."""
    ids = []
    for ex in dfk.executors.values():
        ids += [str(j) for j in (getattr(getattr(ex, "provider", None), "resources", {}) or {})]
    return ids


# A job in these states still holds (or will hold) nodes: scancel it. COMPLETING ones are only waited for.
_CANCEL_STATES = ACTIVE_STATES - {"COMPLETING", "STAGE_OUT"}


def _cancel_active(job_ids: list[str], timeout: float = CANCEL_TIMEOUT, client=slurm) -> list[str]:
    """Cancel the jobs still active (scancel, or qdel on PBS: `client`) and wait until the batch system shows none
    of them active; returns those cancelled.

    A job COMPLETING on a node that does not respond is not waited for: it stays so until Slurm declares the
    node down, and nothing of it can run meanwhile."""
    if not job_ids:
        return []
    states = _states(job_ids, client)
    if states is None:   # squeue did not answer: cancel them all, scancel ignores finished jobs
        targets, waiting = list(job_ids), list(job_ids)
    else:
        targets = [j for j, info in states.items() if info["state"] in _CANCEL_STATES]
        waiting = [j for j, info in states.items() if info["state"] in ACTIVE_STATES]
    try:
        client.cancel(targets)
    except ERRORS as err:
        print(f"fluxmpi: warning: {err}", file=sys.stderr)
    deadline = time.monotonic() + timeout
    left = waiting
    while left and time.monotonic() < deadline:
        states = _states(left, client)
        if states is not None:
            left = [j for j, info in states.items() if info["state"] in ACTIVE_STATES and not (
                info["state"] == "COMPLETING" and _unresponsive(info["nodes"], client))]
        if left:
            time.sleep(0.5)
    if left:
        print(f"fluxmpi: warning: Slurm job(s) {', '.join(left)} still active {timeout:.0f}s after scancel; "
              f"check with `squeue -j {','.join(left)}`", file=sys.stderr)
    return targets


def _states(job_ids: list[str], client=slurm) -> dict[str, dict] | None:
    """The jobs' states, or None when squeue (qstat) did not answer (the clean-up goes on without)."""
    try:
        return client.job_states(job_ids)
    except ERRORS:
        return None


def _unresponsive(hostlist: str, client=slurm) -> bool:
    try:
        return client.any_unresponsive(hostlist)
    except ERRORS:
        return False


class _SignalGuard:
    """While the run waits, SIGINT and SIGTERM raise RunInterrupted; while it cleans up, they only print a note,
    so a second Ctrl-C cannot leave blocks behind. Python delivers signals to the main thread only, so
    elsewhere (a run started from a worker thread) the caller's handling stays as it is."""
    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> "_SignalGuard":
        self.active = threading.current_thread() is threading.main_thread()
        self.previous = {sig: signal.signal(sig, self._raise) for sig in self.SIGNALS} if self.active else {}
        return self

    @staticmethod
    def _raise(signum, frame) -> None:
        raise RunInterrupted(signal.Signals(signum).name)

    @staticmethod
    def _note(signum, frame) -> None:
        print(f"fluxmpi: {signal.Signals(signum).name}: still cancelling the run's blocks and writing run.json "
              f"(at most {CLEANUP_TIMEOUT + CANCEL_TIMEOUT:.0f}s)", file=sys.stderr, flush=True)

    def hold(self) -> None:
        for sig in self.previous:
            signal.signal(sig, self._note)

    @contextlib.contextmanager
    def sparing_children(self):
        """Processes started inside (Parsl's interchange, during parsl.load) never see Ctrl-C.

        Ctrl-C at a terminal goes to the whole process group: the interchange died of it, and HTEX's shutdown
        then waited on it until fluxmpi's clean-up bound (the run returned 60.7 s after the Ctrl-C, measured).
        SIGINT is blocked here, so those children inherit it blocked for good; this process unblocks it after,
        and a Ctrl-C that came meanwhile is delivered then, not lost."""
        if not self.active:
            yield
            return
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)

    def __exit__(self, *exc) -> bool:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def check_app_binary(app: str, app_binary) -> Path | None:
    """An already built C app to run instead of compiling: it must exist and be executable, before any job."""
    if app_binary is None:
        return None
    if app != "c":
        raise SpecError(f"--app-binary {app_binary} only applies to --app c (the {app} app is not compiled)")
    path = Path(app_binary).expanduser().resolve()
    if not path.is_file() or not os.access(path, os.X_OK):
        raise SpecError(f"--app-binary {str(app_binary)!r} is not an executable file: build it with "
                        f"`make -C mpi_apps` (or leave the option out and fluxmpi compiles it on the cluster)")
    return path


def run_tasks(path: str | LaunchPath, site: Site, specs: list[MPITaskSpec], *, app: str = "c",
              workdir: Path | None = None, sleep: float | None = None, busy: float | None = None,
              nodes_per_block: int | None = None, walltime: int | str = 1800, worker_init: str = "",
              task_timeout: float = 600, run_timeout: float = 3600,
              on_progress: Callable[[int, int], None] | None = None, retries: int | None = None,
              resilience: Resilience | None = None, fault: RankFault | list[RankFault] | None = None,
              resume: bool = False,
              app_binary: str | os.PathLike | None = None, admission: str = "largest-first",
              scaling: Scaling | None = None, log: Callable[[str], None] | None = None,
              before_load: Callable[[], object] | None = None,
              commands: list[MPICommand] | None = None, names: list[str] | None = None,
              timeouts: list[float | None] | None = None) -> RunResult:
    """Run `specs` concurrently through `path` on `site`; returns timings, outcomes and the placement check.

    retries: reruns of a failed task (overrides resilience.retries). resilience: heartbeats, how blocks are
    watched and replaced, block_timeout (fluxmpi.launch.blocks.Resilience). fault: make one rank of chosen tasks
    fail (fluxmpi.rankfault.RankFault; given several, a task gets the first that applies to it). resume: skip the
    tasks an earlier run in `workdir` finished. app_binary: a built C app to run instead of compiling one on the
    cluster. admission: which waiting task the node gate admits first (fluxmpi.launch.gate). scaling: blocks held
    at once and when an idle one is given back (fluxmpi.launch.scaling; the flux-jobs path). log: where notes for
    the user go. before_load: called once, after every input check and right
    before parsl.load submits the blocks (e.g. a warm hold's hand-over, fluxmpi.warm.WarmHold.hand_over); it is
    not called when the input is refused or nothing is left to run.
    commands: the user's own programs, one per spec (fluxmpi.MPICommand: argv, env, cwd), run behind the rank
    wrapper (fluxmpi.rank_wrapper) instead of the bundled app; their output goes to WORKDIR/tasks/NAME.out/.err.
    names: the tasks' names (files, messages, resume) [t0, t1, ...]. timeouts: per task, seconds before it is
    killed (None: task_timeout).
    SIGINT / SIGTERM: the blocks are cancelled, run.json written, and RunInterrupted raised (result attached).
    """
    lp = get_path(path) if isinstance(path, str) else path
    plan = lp.check(site, specs, nodes_per_block)          # bad input stops here, before any job exists
    res = resilience or Resilience()
    if retries is not None:
        res = replace(res, retries=retries)
    faults = as_faults(fault)
    for f in faults:
        for spec in specs:
            f.check(spec.ranks)
    if commands is not None and len(commands) != len(specs):
        raise SpecError(f"{len(commands)} commands for {len(specs)} task specs: give one command per task")
    task_ids = _task_names(names, len(specs))
    binary = check_app_binary(app, app_binary) if commands is None else None
    parse_walltime(walltime)                            # the blocks' walltime, checked before the config is built
    check_policy(admission)
    scaling = scaling or Scaling()
    scaling.check_path(lp.name)
    if resume and workdir is None:
        raise SpecError("resume needs the workdir of the run to resume: give --workdir")
    workdir = Path(workdir or default_workdir(lp.name)).resolve()
    index = {tid: i for i, tid in enumerate(task_ids)}
    user_argvs = [list(c.argv) for c in commands] if commands is not None else None
    earlier = finished_tasks(workdir, task_ids, specs, user_argvs) if resume else {}
    rd = RunDir.at(workdir)
    records_dir, bin_dir, markers = rd.records, rd.bin, rd.faults
    rd.create(with_faults=any(f.once for f in faults))
    if commands is not None:      # the user's programs, each rank behind the wrapper that records its placement
        # A container task starts in its cwd, else the run's workdir: the runtime must be told where (ch-run and
        # podman would start in /). The wrapper stays outside the image, on the host (fluxmpi.container).
        cwds = [c.cwd or (str(workdir) if spec.container else None) for c, spec in zip(commands, specs)]
        binds = site_binds(site, lp.name) if any(s.container for s in specs) else ()
        app_argvs = [wrap(spec.container.argv(argv, workdir=cwd, site_binds=binds)
                          if spec.container else argv, tid, records_dir)
                     for argv, tid, spec, cwd in zip(user_argvs, task_ids, specs, cwds)]
        io = [dict(zip(("stdout", "stderr"), map(str, rd.task_output(tid))), cwd=cwd, env=dict(c.env))
              for tid, c, cwd in zip(task_ids, commands, cwds)]
        for extra, limit in zip(io, timeouts or []):
            if limit:
                extra["timeout"] = limit
    else:
        c_binary = (binary or bin_dir / "mpi_hello") if app == "c" else None
        app_argvs = [app_command(app, task=tid, out_dir=records_dir, sleep=sleep, busy=busy, c_binary=c_binary,
                                 **task_fault_options(faults, tid, markers)) for tid in task_ids]
        io = [{} for _ in task_ids]

    site.apply_env()
    plan = replace(plan, walltime=walltime, worker_init=worker_init, run_dir=str(rd.runinfo),
                   resilience=res, admission=admission, scaling=scaling)
    outcomes: list[TaskOutcome] = []
    for tid, spec in zip(task_ids, specs):
        if tid in earlier:
            e = earlier[tid]
            outcomes.append(TaskOutcome(tid, spec.to_dict(), submitted=e.get("submitted") or 0.0,
                                        returned=e.get("returned"), ok=True, result=e.get("result"),
                                        admitted=e.get("admitted"), attempts=e.get("attempts") or 1,
                                        skipped=True, command=e.get("command")))
    if earlier and log:
        log(f"fluxmpi: resuming the run in {workdir}: skipping {len(earlier)} of {len(specs)} task(s) that "
            f"finished before ({', '.join(sorted(earlier, key=index.get))})")
    todo = [(tid, spec, argv, extra) for tid, spec, argv, extra in zip(task_ids, specs, app_argvs, io)
            if tid not in earlier]
    t_start = time.time()
    state = {"t_loaded": None, "t_compiled": None, "t_compile_began": None, "interrupted": None, "cancelled": [],
             "retired": []}
    writer = _RunJsonWriter(lp.name, site.name, workdir, t_start, outcomes, res.retries, index,
                            block_walltime=parse_walltime(walltime))
    if not todo:
        if log:
            log("fluxmpi: every task finished in the earlier run; nothing to submit")
        return writer.finish(specs, None, state)

    dfk = watch = None
    someone_elses = _loaded_dfk()    # parsl.load refuses to replace it; the clean-up must leave it alone
    failures = _FailureLog()
    with _SignalGuard() as guard:
        try:
            config = lp.build_config(site, plan)
            config.retries = res.retries
            config.retry_handler = failures.note   # Parsl forgets a retried task's earlier errors
            if before_load is not None:
                before_load()     # inside the guard: Ctrl-C while it waits still ends the run cleanly
            with guard.sparing_children():
                dfk = parsl.load(config)
            state["t_loaded"] = time.time()
            watch = BlockWatch(lambda: _job_ids(dfk), site.partition, lp.replaces_blocks, res.block_timeout,
                               client=client_for(site.scheduler))
            state["spans"] = usage.BlockSpans(watch.client)     # the blocks' node-seconds, asked as they go
            run_app = _python_app(run_mpi_task, lp.label)
            task_kw = lp.task_options(site, plan)     # e.g. the Flux path's set-up lines for each rank
            if commands is None and app == "c" and binary is None:
                state["t_compile_began"], state["t_compiled"] = _compile_first(lp, bin_dir, site, task_kw)
            futures: dict[Future, TaskOutcome] = {}
            app_futures: dict[str, Future] = {}
            for tid, spec, argv, extra in todo:
                outcome = TaskOutcome(tid, spec.to_dict(), submitted=time.time(),
                                      command=user_argvs[index[tid]] if user_argvs else None)
                rs = lp.resources(spec, site)
                kwargs = {"parsl_resource_specification": rs} if rs else {}
                outcome.admitted = time.time()    # the executor's node gate may say later (see _record)
                extra = dict(extra)
                limit = extra.pop("timeout", task_timeout)
                fut = app_futures[tid] = run_app(spec.to_dict(), lp.launcher_on(site), argv, tid, limit, **task_kw,
                                                 **extra, **kwargs, records=str(records_dir))
                fut.add_done_callback(lambda f, o=outcome: (_record(o, f, app_futures.get(o.task), failures),
                                                            writer.note_change(o)))
                futures[fut] = outcome
                outcomes.append(outcome)
            outcomes.sort(key=lambda o: index[o.task])
            skipped = len(earlier)
            progress = on_progress and (lambda done, total: on_progress(done + skipped, total + skipped))
            _wait_all(futures, run_timeout, progress, watch,
                      on_look=lambda: (state["retired"].extend(_retire_blocks_of_lost_pools(dfk, failures)),
                                       state["spans"].look(list(watch.jobs))))
        except RunInterrupted as err:
            state["interrupted"] = err.signal_name
        finally:
            guard.hold()     # from here on a signal only prints a note: the clean-up must finish
            why = f"interrupted by {state['interrupted']}" if state["interrupted"] else "the run stopped"
            for o in outcomes:
                if o.returned is None and o.error is None:
                    o.error = f"{why} before it finished"
            if dfk is None and _loaded_dfk() is not someone_elses:
                dfk = _loaded_dfk()      # interrupted inside parsl.load: what it had started
            if watch is not None:
                watch.check()
            if dfk is not None:
                state["nodes_back"] = {h: why for ex in dfk.executors.values()
                                       for h, why in (getattr(ex, "nodes_back", None) or {}).items()}
                _cleanup_parsl(dfk, cancelled=state["cancelled"], let_go=set(state["retired"]))
            result = writer.finish(specs, watch, state)
    if state["interrupted"]:
        raise RunInterrupted(state["interrupted"], result)
    return result


def _loaded_dfk():
    """The DataFlowKernel parsl.load left behind if it was interrupted before returning it (or None)."""
    try:
        return parsl.dfk()
    except Exception:  # noqa: BLE001 - parsl raises NoDataFlowKernelError when none is loaded
        return None


class _RunJsonWriter:
    """Keeps run.json current: at most RUN_JSON_PERIOD s after a task finished (complete: false), and once at the end.

    Not after every task: the file is rewritten whole, so that costs O(tasks) each time, and the callbacks it ran
    in are where the flux-jobs executor follows Flux's journal. Measured with py-spy on 200 one-node tasks (8
    nodes): those rewrites were 3/4 of the driver's busy samples. A background thread writes instead, coalescing
    the changes of each period, and each task's JSON is made again only when the runner said the task changed
    (note_change). A rewrite still costs O(tasks) (the join and the write): on 2,000 tasks it was a third of the
    HTEX driver's busy samples over a 5-minute run, so the next rewrite waits at least 1/RUN_JSON_CPU_SHARE
    times what the last one cost (a 20 ms rewrite: 2 s)."""

    def __init__(self, path: str, site: str, workdir: Path, t_start: float, outcomes: list[TaskOutcome],
                 retries: int, index: dict[str, int], block_walltime: int | None = None):
        self.path, self.site, self.workdir, self.t_start = path, site, workdir, t_start
        self.block_walltime = block_walltime
        self.outcomes, self.retries, self.index = outcomes, retries, index
        self._lock = threading.Lock()
        self._changed, self._finished = threading.Event(), threading.Event()
        self._flusher: threading.Thread | None = None
        self._texts: dict[int, tuple] = {}      # id(outcome) -> (what it was, its JSON)
        self._dirty: set[int] = set()           # id(outcome) of the tasks changed since the last rewrite
        self._cost = 0.0                        # CPU seconds the last interim rewrite took

    def _dump_text(self, text: str) -> None:
        write_json_text(RunDir.at(self.workdir).run_json, text)

    def note_change(self, outcome: TaskOutcome | None = None) -> None:
        """A task finished (`outcome`, changed): run.json is rewritten within RUN_JSON_PERIOD s, or later if that
        would cost more than RUN_JSON_CPU_SHARE of a core (by one background thread)."""
        self._changed.set()
        with self._lock:
            if outcome is not None:
                self._dirty.add(id(outcome))
            if self._flusher is None and not self._finished.is_set():
                self._flusher = threading.Thread(target=self._flush_loop, name="fluxmpi-run-json", daemon=True)
                self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._finished.is_set():
            self._changed.wait(RUN_JSON_PERIOD)
            if self._changed.is_set() and not self._finished.is_set():
                self._changed.clear()
                self.write_interim()
            self._finished.wait(max(RUN_JSON_PERIOD, self._cost / RUN_JSON_CPU_SHARE))

    def write_interim(self) -> None:
        with self._lock:
            if self._finished.is_set():    # the final run.json is written: never overwrite it
                return
            began, (dirty, self._dirty) = time.thread_time(), (self._dirty, set())
            head = json.dumps({"path": self.path, "site": self.site, "workdir": str(self.workdir),
                               "t_start": self.t_start, "complete": False, "retries": self.retries,
                               "block_walltime": self.block_walltime})
            tasks = ",\n".join(self._task_text(o, check=id(o) in dirty) for o in list(self.outcomes))
            self._dump_text(f'{head[:-1]}, "tasks": [\n{tasks}\n]}}\n')
            self._cost = time.thread_time() - began

    def _task_text(self, o: TaskOutcome, check: bool = True) -> str:
        """One task's JSON, made again only when a field that changes as it runs has changed (check=False: the
        kept one, if any, unchecked): serializing every task at each rewrite grew with the run (2,000 finished
        tasks: ~0.27 s of CPU a rewrite, measured with dataclasses.asdict and json.dumps), and most tasks do not
        change between two rewrites."""
        kept = self._texts.get(id(o))
        if kept is not None and not check:
            return kept[1]
        # New values are assigned, never changed in place, so the ids of the lists and the result tell a change.
        now = (o.returned, o.ok, o.error, id(o.result), o.admitted, o.attempts, id(o.earlier_errors),
               id(o.lost_pool_hosts), o.skipped)
        if kept is None or kept[0] != now:
            kept = self._texts[id(o)] = (now, json.dumps({f.name: getattr(o, f.name) for f in fields(o)},
                                                         default=str))
        return kept[1]

    def finish(self, specs: list[MPITaskSpec], watch: BlockWatch | None, state: dict) -> RunResult:
        t_end = time.time()
        returned = [o.returned for o in self.outcomes if o.returned and o.ok and not o.skipped]
        records = placement.read_records(self.workdir / "records")
        # A failed task's surviving ranks may have written records; its failure is reported, not its placement.
        failed = {o.task for o in self.outcomes if not o.ok}
        records = placement.Records([r for r in records.records if r.task not in failed], records.problems)
        expected = {o.task: specs[self.index[o.task]] for o in self.outcomes if o.ok}
        report = placement.check_run(records, expected)
        leaders: set[str] = set()
        for o in self.outcomes if watch else ():
            # Failures as a block died are the block's doing: say so (the executors' own words can be obscure).
            ending = watch.ending_near(o.returned, 2 * WATCH_PERIOD) if not o.ok and o.returned else None
            if ending and "block" not in (o.error or ""):
                o.error = f"{o.error} [its block ended: {ending}]"
            elif not o.ok and not state["interrupted"] and flux_instance_gone(o.error):
                leaders.update(watch.first_nodes.values())     # Flux path: its block ran on, its leader did not
                if "stopped answering" not in o.error:         # the flux-jobs executor names the node itself
                    o.error = f"{o.error} [{instance_gone_note(watch.first_nodes.values())}]"
        lost = dict(watch.lost_nodes) if watch else {}
        for host in leaders:
            lost.setdefault(host, "the block's first node: the Flux instance's leader broker on it stopped answering")
        for host in _pool_hosts_lost(self.outcomes):
            lost.setdefault(host, "its worker pool stopped answering (no heartbeat); Slurm had not marked it")
        # Flux drops a dead broker within a second; Slurm may not mark its node until SlurmdTimeout later.
        for host, why in flux_lost_nodes(e for o in self.outcomes for e in [*o.earlier_errors, o.error]).items():
            lost.setdefault(host, why)
        result = RunResult(path=self.path, site=self.site, workdir=str(self.workdir), t_start=self.t_start,
                           t_loaded=state["t_loaded"] or self.t_start, t_compiled=state["t_compiled"],
                           t_first_result=min(returned) if returned else None, t_end=t_end,
                           tasks=list(self.outcomes), placement_ok=report.ok, placement_report=report.render(),
                           interrupted=state["interrupted"], retries=self.retries,
                           blocks=dict(watch.jobs) if watch else {}, block_walltime=self.block_walltime,
                           lost_nodes=lost, nodes_back=dict(state.get("nodes_back") or {}),
                           cancelled_jobs=list(state["cancelled"]), retired_jobs=list(state.get("retired", [])),
                           t_block_started=_first_block_start(watch), t_compile_began=state["t_compile_began"],
                           usage=_usage(watch, state.get("spans"), self.outcomes))
        with self._lock:
            self._finished.set()
            self._dump_text(self._final_text(result))
        return result

    def _final_text(self, result: RunResult) -> str:
        """run.json at the end: result.to_json(), with each task's JSON the one kept for the interim rewrites
        (asdict and an indented dump of 1,000 tasks took about a second of CPU here, most of it the tasks)."""
        head = replace(result, tasks=[]).to_json()
        del head["tasks"]
        head["ok"] = result.ok           # the copy without tasks has no failed task
        text = json.dumps(head, indent=1, default=str)
        tasks = ",\n".join(self._task_text(o) for o in result.tasks)
        return f'{text[:-2]},\n "tasks": [\n{tasks}\n]\n}}\n'


def _usage(watch: BlockWatch | None, spans: usage.BlockSpans | None, outcomes: list[TaskOutcome]) -> dict:
    """Node-seconds the run's blocks held against those its tasks used (fluxmpi.usage), for run.json."""
    if watch is None:
        return {}
    spans = spans or usage.BlockSpans(watch.client)
    return spans.usage(list(watch.jobs), usage.outcome_spans(outcomes)).to_json()


def _first_block_start(watch: BlockWatch | None) -> float | None:
    """When the run's first block started running, as Slurm says (None if it never did or squeue forgot it)."""
    if watch is None or not watch.jobs:
        return None
    try:
        starts = watch.client.job_start_times(list(watch.jobs))
    except ERRORS as err:
        logger.info("start times of the run's blocks: %s", err)
        return None
    return min(starts.values()) if starts else None


def _compile_first(lp: LaunchPath, bin_dir: Path, site: Site,
                   task_kw: dict | None = None) -> tuple[float | None, float]:
    """Compile the C app as the run's first task, on a compute node; fail the run clearly if it cannot.
    Returns when it began on the node (None if the task did not say) and when its result was back here."""
    compile_task = _python_app(compile_app, lp.label)
    one = MPITaskSpec(nodes=1, ranks_per_node=1)
    rs = lp.resources(one, site)
    kwargs = {"parsl_resource_specification": rs} if rs else {}

    mpicc = compiler_for(lp.launcher_on(site))
    fut = compile_task(str(bin_dir), **({"mpicc": mpicc} if mpicc != "mpicc" else {}), **(task_kw or {}), **kwargs)
    try:
        out = fut.result(timeout=COMPILE_TIMEOUT)
    except TimeoutError:
        raise RunError(f"compiling the C app on the cluster did not finish within {COMPILE_TIMEOUT:.0f}s: "
                       "did the block start? (squeue; the run directory's runinfo/ has the logs)") from None
    except Exception as err:
        raise RunError(f"compiling the C app on the cluster failed: {err}") from err
    return (out.get("t_begin") if isinstance(out, dict) else None), time.time()


def _pool_hosts_lost(outcomes: list[TaskOutcome]) -> list[str]:
    """Hosts whose worker pool the interchange declared lost while running one of the run's tasks."""
    hosts: list[str] = []
    for o in outcomes:
        hosts += [h for h in o.lost_pool_hosts if h not in hosts]
    return hosts


class _FailureLog:
    """Every failed attempt's error, per Parsl task id: Parsl's retry handler sees them all (its task record
    keeps only the last attempt's). A lost worker pool is kept as data (Parsl's ManagerLost carries the
    manager's id and host), not read back out of the message."""

    def __init__(self):
        self.errors: dict[int, list[str]] = {}
        self.pool_hosts: dict[int, list[str]] = {}   # task id -> hosts whose worker pool was lost running it
        self._lost_pools: set[str] = set()      # worker pools (manager ids) declared lost, not yet acted on
        self._lock = threading.Lock()

    def note(self, error: BaseException, task_record: dict) -> float:
        text = str(error)[:2000]
        with self._lock:
            self.errors.setdefault(task_record["id"], []).append(text)
            if isinstance(error, ManagerLost):
                manager = error.manager_id
                self._lost_pools.add(manager.decode() if isinstance(manager, bytes) else str(manager))
                self.pool_hosts.setdefault(task_record["id"], []).append(error.hostname)
        return 1.0   # each failure costs one retry, as without a handler

    def take_lost_pools(self) -> set[str]:
        with self._lock:
            managers, self._lost_pools = self._lost_pools, set()
        return managers

    def of(self, app_future: Future | None) -> list[str]:
        return list(self.errors.get(_task_id(app_future), []))

    def pool_hosts_of(self, app_future: Future | None) -> list[str]:
        return list(self.pool_hosts.get(_task_id(app_future), []))


def _task_id(app_future: Future | None):
    return (getattr(app_future, "task_record", None) or {}).get("id")


def _record(outcome: TaskOutcome, fut: Future, app_future: Future | None = None,
            failures: _FailureLog | None = None) -> None:
    if outcome.returned is not None:   # already given up on (run time limit, dead blocks)
        return
    outcome.returned = time.time()
    if fut.cancelled():
        outcome.error = "cancelled before it ran"
    elif fut.exception() is not None:
        outcome.error = str(fut.exception())
    else:  # may come after an interruption note was set: it finished all the same
        outcome.ok, outcome.result, outcome.error = True, fut.result(), None
    record = getattr(app_future, "task_record", None) or {}
    # The executor's own node gate (GatedMPIExecutor) says when the last attempt's nodes were free.
    admitted = getattr(record.get("exec_fu"), "fluxmpi_admitted", None)
    if admitted is not None:
        outcome.admitted = admitted
    outcome.attempts = int(record.get("fail_count", 0) or 0) + (1 if outcome.ok else 0)
    history = failures.of(app_future) if failures else []
    outcome.earlier_errors = history if outcome.ok else history[:-1]
    outcome.lost_pool_hosts = failures.pool_hosts_of(app_future) if failures else []


def _retire_blocks_of_lost_pools(dfk, failures: _FailureLog) -> list[str]:
    """Cancel the blocks whose worker pool the interchange declared lost, through their provider, so Parsl
    counts them as gone at once. Left alone, a block with a dead node stays RUNNING, then COMPLETING, to Parsl
    until Slurm notices the node (SlurmdTimeout and more; ~45 s here with 10 s), and Parsl starts no
    replacement meanwhile. Returns the job ids cancelled."""
    managers = failures.take_lost_pools()
    cancelled = []
    for ex in dfk.executors.values() if managers else ():
        provider, to_job = getattr(ex, "provider", None), getattr(ex, "blocks_to_job_id", None)
        logdir = getattr(ex, "worker_logdir", None)
        if provider is None or not to_job or not isinstance(logdir, str):
            continue
        for manager in managers:
            # A pool logs to <logdir>/block-<block id>/<manager id>/: that names the block it belonged to.
            for found in Path(logdir).glob(f"block-*/{manager}"):
                job = to_job.get(found.parent.name.removeprefix("block-"))
                info = provider.resources.get(job) if job is not None else None
                if info is not None and not info["status"].terminal:
                    provider.cancel([job])
                    cancelled.append(str(job))
    return cancelled


def _wait_all(futures: dict[Future, TaskOutcome], timeout: float, on_progress,
              watch: BlockWatch | None = None, on_look: Callable[[], object] | None = None) -> None:
    deadline = time.monotonic() + timeout
    next_look = time.monotonic() + WATCH_PERIOD
    # Each future counts itself done (concurrent.futures.wait over every pending future once a second costs
    # O(pending) each time: ~3 ms a second with 2,000 pending, for the whole run).
    all_done, lock, left_over = threading.Event(), threading.Lock(), [len(futures)]

    def one_done(_fut: Future) -> None:
        with lock:
            left_over[0] -= 1
            if left_over[0] == 0:
                all_done.set()
    if not futures:
        all_done.set()
    for fut in futures:
        fut.add_done_callback(one_done)      # runs at once for a future already done
    while not all_done.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            _give_up(futures, _not_done(futures), f"not finished when the run's time limit ({timeout:.0f}s) ran out")
            return
        all_done.wait(min(left, 1.0))
        pending = left_over[0]
        if on_progress:
            on_progress(len(futures) - pending, len(futures))
        if watch is not None and pending and time.monotonic() >= next_look:
            next_look = time.monotonic() + WATCH_PERIOD
            if on_look:
                on_look()
            reason = watch.check()
            if reason:
                _give_up(futures, _not_done(futures), f"not run: {reason}")
                return
            notice = watch.waiting_notice()
            if notice:
                logger.warning("%d task(s) waiting: %s", pending, notice)
                print(f"fluxmpi: {pending} task(s) waiting: {notice}", file=sys.stderr, flush=True)


def _not_done(futures: dict[Future, TaskOutcome]) -> list[Future]:
    return [fut for fut in futures if not fut.done()]


def _give_up(futures: dict[Future, TaskOutcome], pending, reason: str) -> None:
    for fut in pending:
        outcome = futures[fut]
        if outcome.returned is None:
            outcome.error, outcome.returned = reason, time.time()

