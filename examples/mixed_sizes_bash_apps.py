"""A workflow as users write them: their own @bash_apps, a compile task first, then node-spanning runs of
2, 2, 3 and 1 nodes with $PARSL_MPI_PREFIX. Only the config comes from fluxmpi (two lines).

    python3 examples/mixed_sizes_bash_apps.py --workdir /tmp/mixed          # the local cluster (booted if down)
    python3 examples/mixed_sizes_bash_apps.py --cluster slurm --partition compute --workdir $PWD/mixed

Prints one line per task (its ranks and the hosts they ran on) and exits 1 if a task failed.
"""

import argparse
import json
import re
import sys
from concurrent.futures import wait
from pathlib import Path

import parsl
from parsl import bash_app

import fluxmpi

HERE = Path(__file__).resolve().parent


@bash_app
def compile_mpitest(src, exe, stdout=None, stderr=None):
    return f"mpicc -O2 -o {exe} {src}"


@bash_app
def run_mpitest(exe, seconds, stdout=None, stderr=None, parsl_resource_specification=None):
    return f"sleep {seconds}; $PARSL_MPI_PREFIX {exe}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", default="local", choices=["local", "slurm"])
    ap.add_argument("--cluster-name", default="fluxmpi")
    ap.add_argument("--partition", default=None)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--sizes", default="2,2,3,1", help="nodes of each task")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(n) for n in args.sizes.split(",")]
    with fluxmpi.open_site(args.cluster, nodes=max(4, *sizes), need=max(sizes), partition=args.partition,
                           name=args.cluster_name) as site:
        parsl.load(fluxmpi.config("htex", site=site, nodes_per_block=max(4, *sizes), run_dir=str(work / "runinfo")))
        try:
            exe = work / "mpitest"
            compile_mpitest(str(HERE / "mpitest.c"), str(exe), stdout=str(work / "compile.out"),
                            stderr=str(work / "compile.err")).result(timeout=300)
            futures = [run_mpitest(str(exe), 2, stdout=str(work / f"t{i}.out"), stderr=str(work / f"t{i}.err"),
                                   parsl_resource_specification={"num_nodes": n, "ranks_per_node": 2})
                       for i, n in enumerate(sizes)]
            done, not_done = wait(futures, timeout=600)
            report = []
            for i, (n, fut) in enumerate(zip(sizes, futures)):
                seen = re.findall(r"rank (\d+) of (\d+) on (\S+)", (work / f"t{i}.out").read_text()) \
                    if fut in done and fut.exception() is None else []
                report.append({"task": f"t{i}", "nodes_asked": n, "ok": fut in done and fut.exception() is None,
                               "error": str(fut.exception()) if fut in done and fut.exception() else
                               (None if fut in done else "not finished within 600 s"),
                               "ranks": sorted(int(r) for r, _, _ in seen), "hosts": sorted({h for *_, h in seen})})
                print(f"t{i}: {n} nodes asked, ranks {report[-1]['ranks']} on {','.join(report[-1]['hosts'])}",
                      file=sys.stderr)
        finally:
            parsl.dfk().cleanup()
    print(json.dumps(report))
    return 0 if all(r["ok"] for r in report) else 1


if __name__ == "__main__":
    sys.exit(main())
