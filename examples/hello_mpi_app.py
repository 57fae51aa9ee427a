"""The users' classic hello ensemble, written once with @fluxmpi.mpi_app: compile first, then repeats of a
node-spanning task. Change one word (--path) to run it on another launch path.

    python3 examples/hello_mpi_app.py --path htex --workdir /tmp/hello         # the local cluster
    python3 examples/hello_mpi_app.py --path flux-jobs --workdir /tmp/hello --nodes 3 --repeats 12
    python3 examples/hello_mpi_app.py --cluster slurm --partition compute --path htex --workdir $PWD/hello
    python3 examples/hello_mpi_app.py --cluster pbs --partition debug --path htex-mpiexec --mpicc cc --workdir $PWD/h

Prints where every rank ran (checked by fluxmpi.placement from the rank wrapper's records) and a JSON summary
as its last line; exits 1 if a task failed or ran elsewhere than it asked.
"""

import argparse
import json
import sys
from concurrent.futures import wait
from pathlib import Path

import parsl
from parsl import python_app

import fluxmpi
from fluxmpi import placement

HERE = Path(__file__).resolve().parent


@python_app
def compile_hello(src, exe, mpicc="mpicc"):
    import subprocess
    subprocess.run([mpicc, "-O2", "-o", exe, src], check=True, capture_output=True, text=True)
    return exe


@fluxmpi.mpi_app
def hello(exe, seconds=0):
    """One ensemble member: the MPI program and its arguments; fluxmpi starts its ranks on every path."""
    return ["sh", "-c", f"sleep {seconds}; exec {exe}"] if seconds else [exe]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default="htex", choices=["htex", "htex-mpiexec", "static", "flux", "flux-jobs"])
    ap.add_argument("--cluster", default="local", choices=["local", "slurm", "pbs"])
    ap.add_argument("--cluster-name", default="fluxmpi")
    ap.add_argument("--partition", default=None)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--ranks-per-node", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--sleep", type=float, default=0)
    ap.add_argument("--nodes-per-block", type=int, default=None)
    ap.add_argument("--mpicc", default=None,
                    help="the MPI compiler matching the path's launcher [mpicc; mpicc.mpich on the local PBS cluster]")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    spec = fluxmpi.MPITaskSpec(nodes=args.nodes, ranks_per_node=args.ranks_per_node)
    block = args.nodes_per_block or (args.nodes if args.path == "static" else None)
    with fluxmpi.open_site(args.cluster, need=args.nodes, partition=args.partition, name=args.cluster_name) as site:
        options = {"nodes_per_block": block} if block else {}
        dfk = parsl.load(fluxmpi.config(args.path, site=site, run_dir=str(work / "runinfo"), **options))
        try:
            mpicc = args.mpicc or ("mpicc.mpich" if site.mpiexec == "mpich" else "mpicc")
            exe = compile_hello(str(HERE / "mpitest.c"), str(work / "mpitest"), mpicc)
            futures = [hello(exe, args.sleep, spec=spec, name=f"hello-{i}") for i in range(args.repeats)]
            done, not_done = wait(futures, timeout=900)
            failed = {f"hello-{i}": str(f.exception()) for i, f in enumerate(futures)
                      if f in done and f.exception() is not None}
            failed.update({f"hello-{i}": "not finished within 900 s" for i, f in enumerate(futures) if f in not_done})
            where = fluxmpi.mpiapp.records_dir(dfk)
            records = placement.read_records(where) if where.is_dir() else placement.Records()
        finally:
            dfk.cleanup()
    placed = {t: p for t, p in records.placements().items() if t not in failed}
    report = placement.check_run(list(placed.values()), {t: spec for t in placed})
    print(report.render(), file=sys.stderr)
    for task, why in failed.items():
        print(f"{task} failed: {why}", file=sys.stderr)
    summary = {"path": args.path, "ok": not failed and report.ok, "failed": failed,
               "records_dir": str(fluxmpi.mpiapp.records_dir(dfk)), "stdout_dir": str(work / "runinfo"),
               "tasks": {t: {"ranks": sorted(r.rank for r in p.records), "hosts": sorted(p.nodes)}
                         for t, p in placed.items()}}
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
