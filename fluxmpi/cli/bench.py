"""`fluxmpi bench`: every launch path and the bare baselines on the same workloads and nodes."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import time
from pathlib import Path

import click

from .. import warm as holds
from ..bench import bursts
from ..bench import scale as scaling
from ..bench.driver import NAMES, BenchError, bench_site, parse_names, run_bench
from ..bench.workload import KINDS, PRESETS, WorkloadError, resolve
from ..cluster.layout import DEFAULT_NAME
from ..container import Container, ContainerError
from ..errors import FluxmpiError, exit_code
from ..site import open_site, running_local_nodes
from .common import fail, given_options

logger = logging.getLogger(__name__)


@click.command()
@click.option("--cluster", type=click.Choice(["local", "slurm"]), default="local", show_default=True,
              help="local: the embedded cluster (booted for the run and torn down if none is up); "
                   "slurm: the Slurm this machine uses.")
@click.option("--cluster-name", default=DEFAULT_NAME, show_default=True, help="Name of the local cluster to use.")
@click.option("--cluster-nodes", type=int, default=4, show_default=True,
              help="Nodes the benchmark uses (and of a local cluster booted for it).")
@click.option("--partition", default=None, help="Slurm partition [the default partition].")
@click.option("--paths", default="all", show_default=True,
              help=f"Comma list of paths and baselines: {','.join(NAMES)}.")
@click.option("--workload", "workloads", multiple=True,
              help=f"{'|'.join(KINDS)}, a preset ({'|'.join(PRESETS)}), a YAML/JSON file (repeatable), or "
                   "scale alone: the scale curve over --scale-nodes x --scale-tasks x --scale-sizes, or bursts "
                   "alone: idle node-seconds of flux-jobs held against elastic (an elastic cluster) "
                   "[uniform; with --quick: quick].")
@click.option("--tasks", type=int, default=None, help="Tasks of a uniform/mixed workload [20; --quick: 4].")
@click.option("--nodes", "task_nodes", type=int, default=None,
              help="Nodes per task (uniform) or the largest task (mixed: sizes 1..N) [uniform 2, mixed all].")
@click.option("--ranks-per-node", type=int, default=None, help="MPI ranks per node of every task [1].")
@click.option("--sleep", type=float, default=None, help="Seconds each rank sleeps [1; --quick: 0.2].")
@click.option("--busy", type=float, default=None, help="Seconds each rank spins instead of sleeping.")
@click.option("--seed", type=int, default=None, help="Shuffles the sizes of a mixed workload [0].")
@click.option("--quick", is_flag=True, help="A small run (~2-3 min here): tiny workloads, every available path.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output directory [./fluxmpi-bench/<timestamp>].")
@click.option("--task-timeout", type=float, default=600, show_default=True, help="Seconds before a task is killed.")
@click.option("--run-timeout", type=float, default=3600, show_default=True,
              help="Seconds one path may take for all tasks of a workload.")
@click.option("--progress/--no-progress", default=None, help="Progress bars on stderr [when stderr is a terminal].")
@click.option("--warm", type=int, default=None,
              help="Each launch path run warms this many nodes while it starts and releases them right before its "
                   "blocks are submitted (rows PATH+warm; docs/operations.md).")
@click.option("--container", "container_text", metavar="RUNTIME:IMAGE", default=None,
              help="Adds the rows htex+ctr and flux-jobs+ctr: the +wrap rows' command with every rank inside this "
                   "image (e.g. charliecloud:/var/tmp/bookworm-openmpi), and the image's cost per task.")
@click.option("--scale-nodes", default=None, metavar="N,N,..",
              help=f"--workload scale: node counts [{','.join(map(str, scaling.DEFAULT_NODES))}].")
@click.option("--scale-tasks", default=None, metavar="T,T,..",
              help=f"--workload scale: task counts [{','.join(map(str, scaling.DEFAULT_TASKS))}].")
@click.option("--scale-sizes", default=None, metavar="S,S,..",
              help=f"--workload scale: nodes per task [{','.join(map(str, scaling.DEFAULT_SIZES))}].")
@click.option("--bursts", "burst_count", type=int, default=None,
              help=f"--workload bursts: bursts of --tasks tasks [{bursts.DEFAULT_BURSTS}; --tasks "
                   f"{bursts.DEFAULT_TASKS}, --sleep {bursts.DEFAULT_SLEEP:g}].")
@click.option("--burst-gap", type=float, default=None,
              help=f"--workload bursts: quiet seconds between bursts [{bursts.DEFAULT_GAP:g}].")
@click.option("--idle-release", type=float, default=None,
              help=f"--workload bursts: idle seconds before an elastic block is given back "
                   f"[{bursts.DEFAULT_IDLE_RELEASE:g}].")
@click.option("--rounds", type=int, default=1, show_default=True,
              help="Run every selected path and baseline this many times, in rounds; start-up is then the median "
                   "of the rounds (the other figures are the first round's).")
@click.option("--compare-warm", is_flag=True,
              help="With --warm: run each launch path cold, then warm, each from powered-down nodes (an elastic "
                   "cluster), and show their time to first result side by side.")
def bench(cluster, cluster_name, cluster_nodes, partition, paths, workloads, tasks, task_nodes, ranks_per_node,
          sleep, busy, seed, quick, out_dir, task_timeout, run_timeout, progress, warm, container_text,
          scale_nodes, scale_tasks, scale_sizes, burst_count, burst_gap, idle_release, rounds, compare_warm) -> None:
    """Run the same MPI workloads through every launch path and the bare baselines (a loop of srun in one
    allocation; flux submit in one Flux instance), and compare per-task launch overhead, makespan against
    its lower bound, utilization and throughput.

    Writes OUT/results.json (raw per-task records), OUT/results.md (the table, also printed) and PNG plots.
    A path that cannot run here is reported with the reason. Exits 1 if a run failed.
    """
    plan = burst_plan = None
    try:
        burst_given = {k: v for k, v in {"--bursts": burst_count, "--burst-gap": burst_gap,
                                         "--idle-release": idle_release}.items() if v is not None}
        if "bursts" in workloads:
            burst_plan = _burst_plan(workloads, burst_count, burst_gap, idle_release, tasks, task_nodes, sleep,
                                     [k for k, v in {"--busy": busy, "--ranks-per-node": ranks_per_node,
                                                     "--warm": warm, "--container": container_text,
                                                     "--quick": quick or None, "--scale-nodes": scale_nodes}.items()
                                      if v is not None])
            burst_plan.check(cluster_nodes)
            workloads = ()
        elif burst_given:
            raise BenchError(f"{', '.join(burst_given)} {'go' if len(burst_given) > 1 else 'goes'} with "
                             f"--workload bursts")
        if "scale" in workloads:
            plan = _scale_plan(workloads, scale_nodes, scale_tasks, scale_sizes, sleep,
                               [k for k, v in {"--tasks": tasks, "--nodes": task_nodes, "--busy": busy,
                                               "--ranks-per-node": ranks_per_node, "--warm": warm,
                                               "--container": container_text, "--quick": quick or None}.items()
                                if v is not None])
            cluster_nodes = max(plan.nodes) if "cluster_nodes" not in given_options() else cluster_nodes
            paths = scaling.DEFAULT_PATHS if "paths" not in given_options() else paths
            workloads = ()
        elif any(v is not None for v in (scale_nodes, scale_tasks, scale_sizes)):
            raise BenchError("--scale-nodes, --scale-tasks and --scale-sizes go with --workload scale")
        if rounds < 1:
            raise BenchError(f"--rounds {rounds} must be at least 1")
        if rounds != 1 and (plan is not None or burst_plan is not None):
            raise BenchError(f"--rounds goes with the uniform and mixed workloads, not --workload "
                             f"{'scale' if plan is not None else 'bursts'} (run it again for another round)")
        if cluster_nodes < 1:
            raise BenchError(f"--cluster-nodes {cluster_nodes} must be at least 1")
        if cluster == "local" and "cluster_nodes" not in given_options():
            # A local cluster already up is benchmarked as it is (the workloads are sized for its nodes).
            cluster_nodes = running_local_nodes(cluster_name) or cluster_nodes
        container = Container.parse(container_text) if container_text else None
        names = parse_names(paths, container=container is not None)
        wls = resolve(list(workloads), nodes=cluster_nodes, tasks=tasks, task_nodes=task_nodes,
                      ranks_per_node=ranks_per_node, sleep=sleep, busy=busy, seed=seed, quick=quick)
        if cluster == "local":
            for wl in wls:   # the local nodes have this machine's cores: refuse before booting anything
                wl.check_fits(cluster_nodes, os.cpu_count() or 1)
        for limit, value in (("--task-timeout", task_timeout), ("--run-timeout", run_timeout)):
            if value <= 0:
                raise BenchError(f"{limit} {value:g} must be a positive number of seconds")
        if compare_warm and warm is None:
            raise BenchError("--compare-warm compares runs with and without --warm N: give --warm N too")
        if warm is not None:
            holds.check_warm_nodes(warm, cluster_nodes, f"the bench (--cluster-nodes {cluster_nodes})")
    except (BenchError, WorkloadError, holds.WarmError, ContainerError, scaling.ScaleError,
            bursts.BurstsError) as err:
        fail(str(err), code=2)
    out = Path(out_dir or Path.cwd() / "fluxmpi-bench" / time.strftime("%Y%m%d-%H%M%S"))
    command = _command_line(click.get_current_context())
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    # A killed bench must still release its allocations, Parsl blocks and the cluster it booted: SIGTERM
    # becomes SystemExit, so every `finally` on the way out runs.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        with open_site(cluster, nodes=cluster_nodes, partition=partition, name=cluster_name, log=log) as site:
            site = bench_site(site, cluster_nodes)
            shown = sys.stderr.isatty() if progress is None else progress
            if burst_plan is not None:
                doc = bursts.run_bursts(site, burst_plan, out, log, command=command)
            elif plan is not None:
                doc = scaling.run_scale(site, plan, names, out, run_bench=run_bench, log=log, task_timeout=task_timeout,
                                        run_timeout=run_timeout, progress=shown, command=command)
            else:
                doc = run_bench(site, wls, names, out, task_timeout=task_timeout, run_timeout=run_timeout,
                                progress=shown, command=command, log=log, warm=warm, compare_warm=compare_warm,
                                container=container, rounds=rounds)
    except FluxmpiError as err:      # bad input (a ValueError) exits 2, a failure 1
        fail(str(err), code=exit_code(err))
    except KeyboardInterrupt:   # Ctrl-C, or the runner's RunInterrupted: the finished runs are on disk
        saved = out / "results.json"
        fail("interrupted; " + (f"the runs that finished are in {saved}" if saved.exists() else "no run finished"),
             code=130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if burst_plan is not None:
        click.echo((out / "bursts.md").read_text())
        click.echo(f"fluxmpi: results in {out}: bursts.json, bursts.md, bursts.png", err=True)
        failed = [f"bursts/{r['name']}" for r in doc["runs"] if r["status"] == "failed"]
    elif plan is not None:
        click.echo((out / "scale.md").read_text())
        click.echo(f"fluxmpi: results in {out}: scale.json, scale.md, scale.png, nodes-N/ (each node count's bench)",
                   err=True)
        failed = [f"{r['nodes']} nodes/t{r['tasks']}-n{r['size']}/{r['name']}" for r in doc["rows"]
                  if r["status"] == "failed"]
    else:
        click.echo((out / "results.md").read_text())
        click.echo(f"fluxmpi: results in {out}: results.json, results.md, "
                   + ", ".join(Path(p).name for p in doc.get("plots", [])), err=True)
        failed = [f"{e['workload']['name']}/{r['name']}" for e in doc["workloads"] for r in e["runs"]
                  if r["status"] == "failed"]
        failed += [f"{e['workload']['name']}/{name} (round {r['round']})" for e in doc["workloads"]
                   for name, seen in (e.get("startup_rounds") or {}).items() for r in seen
                   if r["round"] > 1 and r["status"] == "failed"]
    if failed:
        click.echo(f"fluxmpi: failed runs: {', '.join(failed)}", err=True)
    raise SystemExit(1 if failed else 0)



def _check_alone(name: str, why: str, workloads, conflicting, own_flags: str) -> None:
    """Refuse other workloads and size flags beside a workload that runs alone, naming what to drop."""
    if len(workloads) > 1:
        raise BenchError(f"--workload {name} runs alone ({why}); drop "
                         f"{', '.join(w for w in workloads if w != name)}")
    if conflicting:
        raise BenchError(f"{', '.join(conflicting)} do not apply to --workload {name}: its tasks are set by "
                         f"{own_flags}")


def _burst_plan(workloads, count, gap, idle_release, tasks, task_nodes, sleep, conflicting) -> bursts.BurstPlan:
    """The plan of `--workload bursts` (which runs alone: two flux-jobs variants on one workload)."""
    _check_alone("bursts", "flux-jobs held against elastic", workloads, conflicting,
                 "--bursts, --tasks, --nodes, --sleep and --burst-gap")
    given = {k: v for k, v in {"bursts": count, "gap": gap, "idle_release": idle_release, "tasks": tasks,
                               "task_nodes": task_nodes, "sleep": sleep}.items() if v is not None}
    return bursts.BurstPlan(**given)


def _scale_plan(workloads, nodes, tasks, sizes, sleep, conflicting) -> scaling.ScalePlan:
    """The scale plan of `--workload scale` (which takes no other workload and none of the size flags)."""
    _check_alone("scale", "its own workloads at every node count", workloads, conflicting,
                 "--scale-tasks and --scale-sizes (and --sleep)")
    return scaling.ScalePlan(nodes=scaling.parse_counts(nodes, scaling.DEFAULT_NODES, "--scale-nodes"),
                             tasks=scaling.parse_counts(tasks, scaling.DEFAULT_TASKS, "--scale-tasks"),
                             sizes=scaling.parse_counts(sizes, scaling.DEFAULT_SIZES, "--scale-sizes"),
                             sleep=scaling.DEFAULT_SLEEP if sleep is None else sleep)


def _command_line(ctx: click.Context) -> str:
    """The invocation as typed (options given on the command line), to print with the results."""
    if Path(sys.argv[0]).name == "fluxmpi":
        return shlex.join(["fluxmpi", *sys.argv[1:]])
    words = ["fluxmpi", "bench"]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) != click.core.ParameterSource.COMMANDLINE:
            continue
        value, flag = ctx.params[param.name], param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0]
        if isinstance(param, click.Option) and param.is_flag:
            words.append(flag if value else param.secondary_opts[0] if param.secondary_opts else flag)
        elif isinstance(value, tuple):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)
