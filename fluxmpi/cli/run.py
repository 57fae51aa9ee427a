"""`fluxmpi run`: MPI tasks through a launch path, with their placements checked.

    fluxmpi run -N 2 --ranks-per-node 4 --repeats 8 -- ./wrf.exe namelist     # the user's own program
    fluxmpi run --tasks ensemble.yaml                                          # named tasks of their own sizes
    fluxmpi run -N 2 --repeats 2                                               # the bundled hello app
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import click
from tqdm import tqdm

from .. import slurm, spackenv, taskfile
from .. import warm as holds
from ..launch.paths import PATHS
from ..launch.resilience import Resilience
from ..launch.scaling import Scaling
from ..container import ContainerError
from ..mpi_apps import APPS, FAIL_MODES
from ..mpiapp import MPICommand
from ..rankfault import RankFault
from ..runner import RunError, RunInterrupted, RunResult, check_app_binary, run_tasks
from ..site import SiteError, open_site
from ..usage import Usage
from ..spec import MPITaskSpec, SpecError, format_clock, parse_walltime
from .common import fail, given_options

logger = logging.getLogger(__name__)


@click.command(context_settings={"allow_interspersed_args": False})
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--tasks", "tasks_file", type=click.Path(dir_okay=False), default=None,
              help="A task file (YAML, JSON or CSV) of named tasks, each with its command and size; see fluxmpi.taskfile.")
@click.option("--path", "path", type=click.Choice(list(PATHS)), default="htex", show_default=True,
              help="Launch path.")
@click.option("-N", "--nodes", default=None, help="Nodes per task.")
@click.option("--ranks-per-node", default=None, help="MPI ranks on each node.")
@click.option("-n", "--ranks", default=None, help="Total ranks (give two of nodes / ranks-per-node / ranks).")
@click.option("-c", "--cores-per-rank", default="1", show_default=True)
@click.option("--gpus-per-rank", default="0", show_default=True)
@click.option("--repeats", "-K", type=int, default=1, show_default=True, help="Copies of the task run concurrently.")
@click.option("--container", default=None, metavar="RUNTIME:IMAGE",
              help="Run each rank of COMMAND in this image (apptainer, singularity, shifter, podman-hpc, podman, "
                   "charliecloud), e.g. charliecloud:/var/tmp/img; see fluxmpi.container.")
@click.option("--app", type=click.Choice(APPS), default="c", show_default=True)
@click.option("--sleep", type=float, default=None, help="Seconds each rank sleeps after MPI_Init.")
@click.option("--busy", type=float, default=None, help="Seconds each rank spins after MPI_Init.")
@click.option("--cluster", type=click.Choice(["local", "slurm", "pbs"]), default="local", show_default=True,
              help="local: the embedded cluster (booted if none is up); slurm: the Slurm this machine uses; pbs: "
                   "the PBS Pro server it uses (paths htex-mpiexec, ranks by PALS mpiexec).")
@click.option("--cluster-name", default="fluxmpi", show_default=True, help="Name of the local cluster to use.")
@click.option("--cluster-nodes", type=int, default=4, show_default=True, help="Nodes of a local cluster booted for this run.")
@click.option("--partition", default=None, help="Slurm partition, or PBS queue [the default one].")
@click.option("--nodes-per-block", type=int, default=None, help="Nodes in each Parsl block [all of the partition].")
@click.option("--walltime", default="00:30:00", show_default=True, help="Walltime of each block.")
@click.option("--task-timeout", type=float, default=600, show_default=True, help="Seconds before a task is killed.")
@click.option("--env-file", default=None,
              help="Env file the blocks source before starting workers (see `fluxmpi env`); checked first.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Where records and Parsl logs go [./fluxmpi-runs/<time>-<path>].")
@click.option("--run-timeout", type=float, default=3600, show_default=True,
              help="Seconds before the run gives up on the tasks still unfinished.")
@click.option("--resume", is_flag=True,
              help="Skip the tasks an earlier run in --workdir finished (its run.json and rank records).")
@click.option("--retries", type=int, default=0, show_default=True, help="Reruns of a failed task.")
@click.option("--heartbeat-period", type=int, default=30, show_default=True,
              help="Seconds between a worker pool's heartbeats (HTEX paths).")
@click.option("--heartbeat-threshold", type=int, default=120, show_default=True,
              help="Seconds without a heartbeat before a worker pool (its block's first node) is declared lost.")
@click.option("--block-poll", "status_period", type=int, default=60, show_default=True,
              help="Seconds between polls of the blocks' Slurm states: how soon a dead block is replaced.")
@click.option("--max-block-failures", type=int, default=3, show_default=True,
              help="Failed blocks in a row before the run stops replacing them and fails its tasks.")
@click.option("--block-timeout", type=float, default=None,
              help="Fail the waiting tasks when no block has been running for this many seconds [no limit].")
@click.option("--app-binary", type=click.Path(dir_okay=False), default=None,
              help="An already built C app (mpi_hello) to run instead of compiling one on the cluster.")
@click.option("--fail-rank", type=int, default=None, help="Fault injection: this rank fails after MPI_Init.")
@click.option("--fail-mode", type=click.Choice(FAIL_MODES), default="exit", show_default=True,
              help="How --fail-rank fails: exit code 3, or a segfault.")
@click.option("--fail-task", "fail_tasks", multiple=True,
              help="Only these tasks (t0, t1, ...) get --fail-rank [all]; repeatable.")
@click.option("--fail-once", is_flag=True, help="--fail-rank fails only a task's first attempt.")
@click.option("--max-blocks", type=int, default=1, show_default=True,
              help="flux-jobs: blocks held at once; more are added (as many as the waiting tasks need) while "
                   "tasks wait that the running ones cannot start.")
@click.option("--min-blocks", type=int, default=0, show_default=True,
              help="flux-jobs: blocks kept however idle.")
@click.option("--idle-release", default=None, metavar="DURATION",
              help="flux-jobs: give a block back after it ran nothing this long (90s, 2m, HH:MM:SS), so an "
                   "elastic cluster's nodes power down [never].")
@click.option("--warm", type=int, default=None,
              help="Power up this many nodes while the run starts (a warm hold), released right before the "
                   "blocks are submitted so they land on warm nodes (elastic clusters; docs/operations.md).")
@click.option("--warm-for", default="10m", show_default=True,
              help="With --warm: the longest the hold may last (90s, 10m, HH:MM:SS); it ends sooner at the hand-over.")
def run(command, tasks_file, path, nodes, ranks_per_node, ranks, cores_per_rank, gpus_per_rank, repeats, container, app,
        sleep, busy, cluster, cluster_name, cluster_nodes, partition, nodes_per_block, walltime, task_timeout, env_file, workdir,
        run_timeout, resume, retries, heartbeat_period, heartbeat_threshold, status_period, max_block_failures,
        block_timeout, app_binary, fail_rank, fail_mode, fail_tasks, fail_once, max_blocks, min_blocks, idle_release,
        warm, warm_for) -> None:
    """Run MPI tasks concurrently and check where every rank ran: --repeats copies of COMMAND (after `--`), the
    tasks of a --tasks file, or, with neither, of the bundled hello app (--app).

    Each rank of a user's command runs behind a small wrapper that records where it ran; its output goes to
    WORKDIR/tasks/NAME.out and .err. Prints a placement table (one row per task) and exits 1 if any task
    failed or was misplaced; 130 / 143 after SIGINT / SIGTERM, which cancel the run's blocks and keep run.json
    for --resume (which then skips what finished, and reruns a task whose command changed).
    """
    names = commands = timeouts = None
    try:
        given = given_options()
        if command and tasks_file:
            raise SpecError("give a COMMAND after `--` or --tasks FILE, not both")
        bundled_only = sorted(given & {"app", "sleep", "busy", "app_binary", "fail_rank", "fail_tasks", "fail_once"})
        if (command or tasks_file) and bundled_only:
            raise SpecError(f"--{bundled_only[0].replace('_', '-')} is for the bundled app; a COMMAND or --tasks "
                            f"runs your own program as it is")
        if tasks_file:
            sized = sorted(given & {"nodes", "ranks_per_node", "ranks", "cores_per_rank", "gpus_per_rank", "repeats",
                                    "container"})
            if sized:
                raise SpecError(f"--{sized[0].replace('_', '-')} does not go with --tasks: each task of the file "
                                f"gives its own size (and `repeats`, `container`)")
            entries = taskfile.load_tasks(tasks_file)       # the whole file checked before anything else
            specs = [e.spec for e in entries]
            names = [e.name for e in entries]
            # Like srun's tasks, each runs where `fluxmpi run` was started (a task's cwd is taken from there).
            commands = [MPICommand(e.command, env=e.env, cwd=os.path.abspath(e.cwd or ".")) for e in entries]
            timeouts = [e.timeout for e in entries]
            spec = max(specs, key=lambda s: s.nodes)
        else:
            if container and not command:
                raise SpecError("--container wraps your COMMAND (after `--`); the bundled app runs on the host")
            spec = MPITaskSpec.build(nodes=nodes, ranks_per_node=ranks_per_node, ranks=ranks,
                                     cores_per_rank=cores_per_rank, gpus_per_rank=gpus_per_rank, container=container)
            specs = [spec] * repeats
            if command:
                commands = [MPICommand(MPICommand.of(list(command), where="COMMAND").argv, cwd=os.getcwd())] * repeats
        if repeats < 1:
            raise SpecError(f"--repeats {repeats} must be at least 1")
        if run_timeout <= 0:
            raise SpecError(f"--run-timeout {run_timeout:g} must be positive seconds")
        if resume and not workdir:
            raise SpecError("--resume needs --workdir: the directory of the run to resume")
        resilience = Resilience(retries=retries, heartbeat_period=heartbeat_period,
                                heartbeat_threshold=heartbeat_threshold, status_period=status_period,
                                max_block_failures=max_block_failures, block_timeout=block_timeout)
        try:
            idle_seconds = None if idle_release is None else slurm.parse_duration(idle_release)
        except slurm.DurationError as err:
            raise SpecError(f"--idle-release {idle_release}: {err}") from None
        scaling = Scaling(max_blocks=max_blocks, min_blocks=min_blocks, idle_release=idle_seconds)
        scaling.check_path(path)
        fault = None
        if fail_rank is not None:
            fault = RankFault(fail_rank, fail_mode, tuple(fail_tasks) or None, fail_once)
            fault.check(spec.ranks)
            unknown = sorted(set(fail_tasks) - {f"t{i}" for i in range(repeats)})
            if unknown:
                raise SpecError(f"--fail-task {', '.join(unknown)}: this run's tasks are t0 to t{repeats - 1}")
        elif fail_tasks or fail_once:
            raise SpecError("--fail-task and --fail-once need --fail-rank")
        # Everything a warm hold would outlast if it failed later is checked before the hold is submitted.
        parse_walltime(walltime)
        check_app_binary(app, app_binary)
        if warm is not None:
            holds.check_warm_nodes(warm)
            warm_seconds = slurm.parse_duration(warm_for)
        elif "warm_for" in given:
            raise SpecError("--warm-for goes with --warm N")
        worker_init = ""
        if env_file:
            env_path = spackenv.find_env_file(env_file)   # not `path`: that names the launch path
            spackenv.validate_env_file(env_path)
            worker_init = spackenv.worker_init_line(env_path)
    except (SpecError, ContainerError, spackenv.EnvFileError, holds.WarmError, slurm.DurationError) as err:
        fail(str(err), code=2)
    note = lambda m: click.echo(m, err=True)  # noqa: E731
    site_open = False
    try:
        # A local cluster already up is used whatever --cluster-nodes says (the size to boot one with); the
        # checks below refuse, naming the task, only what does not fit on it.
        with open_site(cluster, nodes=cluster_nodes, need=1, partition=partition, name=cluster_name,
                       log=lambda m: click.echo(m, err=True)) as site:
            site_open = True
            if tasks_file:     # each task against the site, named by the file's task and field
                taskfile.load_tasks(tasks_file, max_nodes=nodes_per_block or site.nodes,
                                    cores_per_node=site.cores_per_node, gpus_per_node=site.gpus_per_node)
            PATHS[path].check(site, specs, nodes_per_block)   # refuse before booting Parsl
            if warm is not None:
                if site.scheduler == "pbs":
                    raise SpecError(f"--warm {warm}: the warm hold powers nodes up through Slurm's power saving; "
                                    f"{site.name} is a PBS site: drop --warm")
                holds.check_warm_nodes(warm, site.nodes, f"partition {site.partition!r} of {site.name}")
            what = (f"{len(specs)} tasks of {tasks_file}" if tasks_file else
                    f"{repeats} x {spec}" + (f" {' '.join(command)}" if command else ""))
            click.echo(f"fluxmpi: {what} via {path} on {site.name}", err=True)
            # The hold starts as soon as the site is known, so the nodes power up while the run starts.
            warming = (holds.warm_nodes(warm, warm_seconds, partition=site.partition, env=site.env, log=note)
                       if warm else nullcontext())
            with warming as hold, tqdm(total=len(specs), desc=f"{path}", unit="task",
                                       file=click.get_text_stream("stderr"), disable=None) as bar:
                result = run_tasks(path, site, specs, app=app, workdir=workdir, sleep=sleep, busy=busy,
                                   nodes_per_block=nodes_per_block, walltime=walltime, task_timeout=task_timeout,
                                   worker_init=worker_init, run_timeout=run_timeout, resilience=resilience,
                                   fault=fault, resume=resume, app_binary=app_binary, scaling=scaling,
                                   log=note, on_progress=lambda done, total: bar.update(done - bar.n),
                                   commands=commands, names=names, timeouts=timeouts,
                                   before_load=(lambda: hold.hand_over(log=note)) if hold else None)
    except RunInterrupted as err:
        _report_failures(err.result)
        done = sum(t.ok for t in err.result.tasks) if err.result else 0
        total = len(err.result.tasks) if err.result else len(specs)
        where = err.result.workdir if err.result else workdir
        click.echo(f"fluxmpi: interrupted by {err.signal_name}: {done}/{total} tasks finished; the run's blocks "
                   f"are cancelled and run.json is in {where}. Run the rest: the same command with "
                   f"--resume --workdir {where}", err=True)
        raise SystemExit(130 if err.signal_name == "SIGINT" else 143)
    except holds.WarmError as err:
        fail(str(err), code=2)
    except slurm.SlurmError as err:
        fail(f"warm hold: {err}")
    except taskfile.TaskFileError as err:
        fail(str(err), code=2)
    except (SpecError, ContainerError, SiteError, RunError) as err:
        if isinstance(err, SiteError) and cluster == "slurm" and not site_open:
            # Name the Slurm that was asked: the config the environment points at.
            conf = os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")
            fail(f"asking the Slurm of SLURM_CONF={conf}: {err}", code=1)
        fail(str(err), code=2 if isinstance(err, SpecError) else 1)
    click.echo(result.placement_report)
    _report_failures(result)
    outputs = " (each task's output: tasks/NAME.out, .err)" if commands else ""
    click.echo(f"fluxmpi: {len(result.tasks) - len(result.failed)}/{len(result.tasks)} tasks ok, "
               f"{result.t_end - result.t_start:.1f}s; records and logs in {result.workdir}{outputs}", err=True)
    raise SystemExit(0 if result.ok else 1)


def _report_failures(result: RunResult | None) -> None:
    """Failed and retried tasks, skipped ones, and nodes the run lost, on stderr."""
    if result is None:
        return
    for task in result.tasks:
        if not task.ok:
            click.echo(f"fluxmpi: task {task.task} failed: {task.error}", err=True)
        elif task.attempts > 1:
            first = (task.earlier_errors or ["?"])[0].splitlines()[0][:200]
            click.echo(f"fluxmpi: task {task.task} succeeded on attempt {task.attempts} (first failure: {first})",
                       err=True)
    if result.skipped:
        click.echo(f"fluxmpi: skipped {len(result.skipped)} task(s) that finished in the earlier run", err=True)
    for node, state in result.lost_nodes.items():
        click.echo(f"fluxmpi: node {node} was lost during the run: {state}", err=True)
    for node, how in result.nodes_back.items():
        click.echo(f"fluxmpi: node {node} came back: {how}", err=True)
    if len(result.blocks) > 1:
        walltime = f" of {format_clock(result.block_walltime)} walltime" if result.block_walltime else ""
        states = ", ".join(f"job {j} {b.get('state', '?')}" for j, b in result.blocks.items())
        click.echo(f"fluxmpi: the run used {len(result.blocks)} blocks{walltime}: {states}", err=True)
    if result.usage.get("paid"):
        click.echo(f"fluxmpi: {Usage.from_json(result.usage).render()}", err=True)
    for job in result.retired_jobs:
        click.echo(f"fluxmpi: cancelled block job {job} (its worker pool stopped answering) so a new one could "
                   f"take its tasks", err=True)

