"""The issue's targets, evaluated on one bench document. Shown by the benchmark; nothing here is a test.

1. overhead: each fluxmpi path's median per-task overhead within 1.25x of its bare baseline's.
2. makespan: on mixed-size workloads, the Flux paths' (flux, flux-jobs) and the HTEX MPI path's makespan within
   1.3x of the lower bound (max(total node-seconds / nodes, longest task)).
3. growth: on workloads of 200 tasks or more, each fluxmpi path's per-task overhead does not grow: the
   least-squares line through overhead vs task index rises by at most 10% of the median overhead from the first
   task to the last (its standard error is shown with it: on a shared machine, load drift moves it too).
4. start-up: each fluxmpi path's time to first result within 1.5x of its bare baseline's (the baselines compile
   the app too, so the start-ups compare); with --rounds N, the medians of the N rounds.
5. flux-jobs vs htex: on mixed sizes, flux-jobs' makespan ratio at or below htex's in the same run (both admit
   by fluxmpi's node gate; Flux's own first-come order let nodes idle), i.e. their quotient at most 1.
6. container: a +ctr row's overhead with its image's cost counted in, within 1.1x of the same path's overhead
   without the image (its +wrap row; fluxmpi.bench.driver.container_cost).
"""

from __future__ import annotations

import logging

from . import metrics

logger = logging.getLogger(__name__)

OVERHEAD_LIMIT = 1.25
MAKESPAN_LIMIT = 1.3
MAKESPAN_PATHS = ("flux", "flux-jobs", "htex")
GROWTH_MIN_TASKS = 200
GROWTH_LIMIT = 0.10
CONTAINER_LIMIT = 1.10
STARTUP_LIMIT = 1.5


def evaluate(bench: dict) -> list[dict]:
    out: list[dict] = []
    for entry in bench.get("workloads", []):
        wl = entry["workload"]
        runs = {r["name"]: r for r in entry["runs"]}
        for r in entry["runs"]:
            if r["kind"] != "path":
                continue
            base = runs.get(r.get("baseline") or "")
            value = (r.get("summary") or {}).get("overhead_vs_baseline")
            out.append(_target("overhead", wl["name"], r["name"], value, OVERHEAD_LIMIT,
                               _why_missing(r, base, "overhead_median")))
            if not r.get("warm"):    # a warm run's start-up counts from its hold: not comparable
                med = (entry.get("startup_median") or {}).get(r["name"])     # with --rounds: the median's
                t = _target("startup", wl["name"], r["name"],
                            med["vs_baseline"] if med else (r.get("summary") or {}).get("startup_vs_baseline"),
                            STARTUP_LIMIT, _why_missing(r, base, "startup"))
                if med and med["vs_baseline"] is not None:
                    t["rounds"] = med["rounds"]
                out.append(t)
        if len(set(wl.get("sizes", []))) > 1:
            for name in MAKESPAN_PATHS:
                r = runs.get(name)
                value = (r.get("summary") or {}).get("makespan_ratio") if r else None
                out.append(_target("makespan", wl["name"], name, value, MAKESPAN_LIMIT,
                                   _why_missing(r, None, "makespan_ratio")))
            mine, htex = runs.get("flux-jobs"), runs.get("htex")
            value = metrics.ratio(((mine or {}).get("summary") or {}).get("makespan_ratio"),
                                  ((htex or {}).get("summary") or {}).get("makespan_ratio"))
            out.append(_target("packing", wl["name"], "flux-jobs", value, 1.0,
                               _why_missing(mine, htex, "makespan_ratio") if htex is not None
                               else "htex not selected"))
        if wl["tasks"] >= GROWTH_MIN_TASKS:
            for r in entry["runs"]:
                if r["kind"] == "path" and r["status"] in ("ok", "failed"):
                    s = r.get("summary") or {}
                    t = _target("growth", wl["name"], r["name"], s.get("overhead_growth"), GROWTH_LIMIT,
                                _why_missing(r, None, "overhead_growth"))
                    t["slope"], t["slope_se"] = s.get("overhead_slope"), s.get("overhead_slope_se")
                    out.append(t)
        for r in entry["runs"]:
            if r["name"].endswith("+ctr"):
                bare = runs.get(r["name"].removesuffix("+ctr") + "+wrap")
                t = _target("container", wl["name"], r["name"],
                            (r.get("summary") or {}).get("container_overhead_ratio"), CONTAINER_LIMIT,
                            _why_missing(r, bare, "container_overhead_ratio")
                            if bare is not None else "its +wrap row was not selected")
                out.append(t)
    return out


def _target(kind: str, workload: str, name: str, value: float | None, limit: float, missing: str) -> dict:
    return {"target": kind, "workload": workload, "path": name, "value": value, "limit": limit,
            "met": None if value is None else value <= limit, "note": missing if value is None else ""}


def _why_missing(run: dict | None, base: dict | None, key: str) -> str:
    if run is None:
        return "not selected"
    if run["status"] in ("unavailable", "not applicable"):
        return f"{run['status']}: {run['reason']}" if run["status"] == "unavailable" else run["reason"]
    if not (run.get("summary") or {}).get(key) and run["status"] == "failed":
        return f"failed: {run['reason']}"
    if base is not None and base["status"] != "ok" and not (base.get("summary") or {}).get(key):
        return f"baseline {base['name']} {base['status']}: {base['reason']}"
    if run.get("baseline") and base is None:
        return f"baseline {run['baseline']} not selected"
    return "no figure"
