"""The bare mpirun baseline's driver: runs on the first node of one allocation, as an HTEX block's worker does.

    srun --jobid J -N 1 -n 1 -w FIRST --overlap python -m fluxmpi.bench.mpirun_driver JOBS.json RESULT.json

It starts every task with Open MPI's `mpirun --host ...` on free nodes of the allocation, in the node gate's
order, and writes RESULT.json with per-task times. Like the htex-mpiexec path, mpirun starts an orted per node
through Slurm, which is why the job's view of the allocation (node list, tasks per node) is put back first:
inside a one-task step Slurm describes the step, not the job. Prints one JSON line per finished task.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

logger = logging.getLogger(__name__)


def allocation_env(nodes: list[str], cpus_per_node: int) -> dict[str, str]:
    """What mpirun must see to treat every node and core of the allocation as its own (as in a batch script),
    and `SLURM_OVERLAP` so the orted steps may share the nodes with this driver's own step."""
    n = len(nodes)
    return {"SLURM_NODELIST": ",".join(nodes), "SLURM_JOB_NODELIST": ",".join(nodes),
            "SLURM_NNODES": str(n), "SLURM_JOB_NUM_NODES": str(n),
            "SLURM_TASKS_PER_NODE": f"{cpus_per_node}(x{n})", "SLURM_NTASKS_PER_NODE": str(cpus_per_node),
            "SLURM_NTASKS": str(cpus_per_node * n), "SLURM_NPROCS": str(cpus_per_node * n),
            "SLURM_OVERLAP": "1"}


def main(jobs_file: str, result_file: str) -> int:
    from fluxmpi.bench.baselines import LaunchLoop
    from fluxmpi.spec import MPITaskSpec

    jobs = json.loads(open(jobs_file).read())
    out: dict = {"t_ready": time.time(), "tasks": {}, "error": None}
    os.environ.update(allocation_env(jobs["nodes"], int(os.environ.get("SLURM_CPUS_ON_NODE", "1"))))
    specs = [MPITaskSpec.from_dict(t["spec"]) for t in jobs["tasks"]]
    argvs = [t["argv"] for t in jobs["tasks"]]
    rows = [{"submitted": time.time(), "admitted": None, "launched": None, "done": None, "returned": None,
             "ok": False, "error": None} for _ in specs]

    def mpirun(i: int, nodes: list[str]) -> list[str]:
        return specs[i].mpiexec_args("openmpi", hosts=nodes) + argvs[i]

    def progress(done: int, total: int) -> None:
        print(json.dumps({"done": done, "total": total}), flush=True)

    LaunchLoop(jobs["nodes"], specs, mpirun, rows, float(jobs["task_timeout"]), progress, "mpirun").run(
        float(jobs["run_timeout"]))
    out["tasks"] = {t["task"]: row for t, row in zip(jobs["tasks"], rows)}
    tmp = f"{result_file}.tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, result_file)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m fluxmpi.bench.mpirun_driver JOBS.json RESULT.json")
    sys.exit(main(sys.argv[1], sys.argv[2]))
