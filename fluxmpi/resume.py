"""Resuming an interrupted run: which of its tasks already finished, read from the run's own files in its workdir.

Two sources, in order: run.json (written after every finished task and when the run ends or is interrupted)
and, for a run killed before it could write that (SIGKILL, a lost login node), the rank records: a task whose
every rank wrote its record ran to the end of MPI_Finalize. A task is only skipped if the earlier run asked for
the same spec under the same task id; anything else is refused before a block is submitted.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from . import placement
from .rundir import RunDir
from .spec import MPITaskSpec, SpecError

logger = logging.getLogger(__name__)


class ResumeError(SpecError):
    """--resume was given a workdir that holds no earlier run, or one of other tasks; says which and the fix."""


def finished_tasks(workdir: str | Path, task_ids: list[str], specs: list[MPITaskSpec],
                   commands: list[list[str]] | None = None) -> dict[str, dict]:
    """{task id: the earlier run's outcome} of the tasks an earlier run in `workdir` finished.

    commands: the user's programs of this run (None: the bundled app). A task whose command changed since is
    not skipped: it runs again."""
    rd = RunDir.at(workdir)
    workdir, run_json, manifest = rd.root, rd.run_json, rd.manifest
    if not run_json.is_file() and not manifest.is_file():
        raise ResumeError(f"--resume: {str(workdir)!r} holds no earlier run (no run.json or manifest.json): "
                          f"give the --workdir of the run to resume")
    wanted = {tid: spec.to_dict() for tid, spec in zip(task_ids, specs)}
    command_of = dict(zip(task_ids, commands)) if commands is not None else {}
    done: dict[str, dict] = {}
    reported: set[str] = set()
    if run_json.is_file():
        try:
            earlier = json.loads(run_json.read_text())
            tasks = earlier["tasks"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ResumeError(f"--resume: {run_json} is not a fluxmpi run record ({err}): give the --workdir "
                              f"of a fluxmpi run, or start afresh in another --workdir") from None
        for outcome in tasks:
            tid = outcome.get("task")
            if tid not in wanted:
                continue
            if outcome.get("spec") != wanted[tid]:
                raise ResumeError(
                    f"--resume: task {tid} of the run in {workdir} was {_describe(outcome.get('spec'))}, this run "
                    f"asks {_describe(wanted[tid])}: give the same task options, or use another --workdir")
            if commands is not None and outcome.get("command") != command_of[tid]:
                continue   # another command under the same name: run it
            if outcome.get("ok"):
                done[tid] = outcome
            if outcome.get("returned") is not None:
                reported.add(tid)
    records_dir = rd.records
    # Rank records do not say which command wrote them: only the bundled app's tasks are judged by them.
    if records_dir.is_dir() and commands is None:
        placements = placement.read_records(records_dir).placements()
        for tid, spec in zip(task_ids, specs):
            if tid in done or tid in reported or tid not in placements:
                continue  # run.json's word (finished or failed) comes first
            found = placements[tid]
            if sorted(r.rank for r in found.records) == list(range(spec.ranks)) and \
                    all(r.size == spec.ranks for r in found.records):
                done[tid] = {"task": tid, "spec": wanted[tid], "ok": True, "submitted": found.start,
                             "returned": found.end, "error": None,
                             "result": {"task": tid, "nodes": list(found.nodes), "t_launch": found.start,
                                        "t_done": found.end, "from_records": True}}
    return done


def _describe(spec) -> str:
    try:
        return str(MPITaskSpec.from_dict({k: v for k, v in spec.items() if k != "ranks"}))
    except (SpecError, AttributeError, TypeError):
        return repr(spec)
