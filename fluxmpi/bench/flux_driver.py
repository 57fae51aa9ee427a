"""The bare Flux baseline's driver: runs as the initial program of a Flux instance inside one allocation.

    srun --mpi=pmi2 -N N --ntasks-per-node=1 flux start python -m fluxmpi.bench.flux_driver JOBS.json RESULT.json

It compiles the C app on its node (the instance's first), submits every task at once with the Flux API (what
`flux submit` does, without a process per submission), waits for each, and writes RESULT.json with per-task
times. It prints one JSON line per finished task on stdout so the bench can show progress.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

logger = logging.getLogger(__name__)


def main(jobs_file: str, result_file: str) -> int:
    import flux
    import flux.job

    from fluxmpi.mpi_apps import compile_c_app
    from fluxmpi.spec import MPITaskSpec

    t_ready = time.time()
    jobs = json.loads(open(jobs_file).read())
    out: dict = {"t_ready": t_ready, "t_compiled": None, "tasks": {}, "error": None}

    def save() -> None:
        tmp = f"{result_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, result_file)

    try:
        compile_c_app(jobs["bin_dir"])
        out["t_compiled"] = time.time()
    except Exception as err:  # the bench reports it; nothing else can run without the binary
        out["error"] = f"compiling the C app in the Flux instance failed: {err}"
        save()
        return 1

    h = flux.Flux()
    tasks = jobs["tasks"]
    pending = {t["task"] for t in tasks}
    rows = out["tasks"]
    env = dict(os.environ)

    def finished(fut, tid: str) -> None:
        row = rows[tid]
        row["returned"] = time.time()
        try:
            status = fut.get_status()
            row["ok"] = bool(status.success)
            if not status.success:
                row["error"] = f"flux job {row['jobid']} failed: {status.errstr or 'exit status nonzero'}"
        except Exception as err:
            row["error"] = f"waiting for flux job {row.get('jobid')} failed: {err}"
        pending.discard(tid)
        print(json.dumps({"done": len(tasks) - len(pending), "total": len(tasks)}), flush=True)
        if not pending:
            h.reactor_stop()

    def submitted(fut, tid: str) -> None:
        try:
            jobid = fut.get_id()
        except Exception as err:
            rows[tid]["error"] = f"flux refused the job: {err}"
            rows[tid]["returned"] = time.time()
            pending.discard(tid)
            if not pending:
                h.reactor_stop()
            return
        rows[tid]["jobid"] = int(jobid)
        flux.job.wait_async(h, jobid).then(finished, tid)

    for t in tasks:
        spec = MPITaskSpec.from_dict(t["spec"])
        jobspec = spec.flux_jobspec(t["argv"])
        jobspec["attributes"]["system"].update(environment=env, cwd=jobs["cwd"],
                                               duration=float(jobs["task_timeout"]))
        rows[t["task"]] = {"submitted": time.time(), "ok": False, "error": None}
        flux.job.submit_async(h, json.dumps(jobspec), waitable=True).then(submitted, t["task"])

    def out_of_time(*_args) -> None:
        for tid in pending:
            rows[tid]["error"] = f"not finished when the run's time limit ({jobs['run_timeout']:.0f}s) ran out"
        h.reactor_stop()

    timer = h.timer_watcher_create(float(jobs["run_timeout"]), out_of_time)
    timer.start()
    h.reactor_run()
    timer.stop()

    ids = [r["jobid"] for r in rows.values() if "jobid" in r]
    if ids:
        info = flux.job.JobList(h, ids=ids, attrs=["t_run", "t_cleanup"]).jobs()
        by_id = {int(j.id): j for j in info}
        for row in rows.values():
            j = by_id.get(row.get("jobid"))
            if j is not None:
                row["launched"] = j.t_run or None
                row["done"] = j.t_cleanup or None
    save()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m fluxmpi.bench.flux_driver JOBS.json RESULT.json")
    sys.exit(main(sys.argv[1], sys.argv[2]))
