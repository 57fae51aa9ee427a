"""`fluxmpi clean`: remove what runs created, known from the manifest.json each run writes, and nothing else.

A run's manifest lists the paths it creates (Parsl run directory, records, compiled app, summary). Clean removes
exactly those (a listed directory whole: the run made it), then the manifest, then the run directory only if
that left it empty. Anything else in the run directory (a file a user put there) is kept and reported. Listed
paths that point outside the run directory (a damaged or edited manifest) are refused, and a run whose owner
(recorded as "pid" and "host" in the manifest, fluxmpi.rundir) is still running is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from . import rundir
from .cluster.processes import alive
from .errors import FluxmpiError

logger = logging.getLogger(__name__)

MANIFEST = rundir.MANIFEST
DEFAULT_ROOTS = ("fluxmpi-runs", "fluxmpi-bench")

# What each conventional entry of a run directory is, to explain what is removed.
EXPLAIN = {
    "records": "task outputs: the rank records the MPI tasks wrote",
    "bin": "compiled apps: the MPI app built for this run",
    "runinfo": "Parsl run directory: Parsl's logs, submit scripts and worker logs",
    "tasks": "the user's programs' output: NAME.out and NAME.err per task",
    "faults": "markers of --fail-once faults",
    "run.json": "the run's summary: timings, task outcomes, placement report",
}


class CleanError(FluxmpiError, ValueError):
    """A directory or manifest that cannot be cleaned; the message names it and what to do."""


@dataclass
class Item:
    path: Path
    what: str
    kind: str = "file"          # file, directory, link
    files: int = 1
    size: int = 0


@dataclass
class RunPlan:
    """What cleaning one run removes, keeps and refuses."""
    run_dir: Path
    manifest: Path
    remove: list[Item] = field(default_factory=list)
    missing: list[Path] = field(default_factory=list)      # listed but not there (never made, or gone)
    refused: list[str] = field(default_factory=list)        # listed but outside the run directory
    keep: list[Path] = field(default_factory=list)          # in the run directory, not created by the run
    skipped: str | None = None                              # why the whole run is left alone

    @property
    def size(self) -> int:
        return sum(i.size for i in self.remove)


def find_manifests(dirs: list[str | os.PathLike] | None = None, cwd: Path | None = None) -> list[Path]:
    """Manifests under each of `dirs` (a run directory, a manifest file, or a directory holding runs at any
    depth); without dirs, under ./fluxmpi-runs and ./fluxmpi-bench when they exist."""
    cwd = cwd or Path.cwd()
    if not dirs:
        roots = [cwd / r for r in DEFAULT_ROOTS if (cwd / r).is_dir()]
    else:
        roots = []
        for d in dirs:
            path = Path(d).expanduser()
            if not path.exists():
                raise CleanError(f"{d}: no such file or directory; give a run directory, its {MANIFEST}, or a "
                                 "directory holding runs")
            roots.append(path)
    found: list[Path] = []
    for root in roots:
        if root.is_file():
            if root.name != MANIFEST:
                raise CleanError(f"{root} is a file but not a run's {MANIFEST}; give the run directory instead")
            found.append(root.absolute())
            continue
        # A run directory never holds another run, so stop descending at the first manifest on each branch.
        for dirpath, dirnames, filenames in os.walk(root):
            if MANIFEST in filenames:
                found.append((Path(dirpath) / MANIFEST).absolute())
                dirnames.clear()
    return sorted(dict.fromkeys(found))


def _inside(path: Path, run_dir: Path) -> bool:
    """True if `path` names an entry strictly inside run_dir. Only its parent is resolved: a listed symlink is
    removed as a link, never followed."""
    if path.name in ("", ".", ".."):
        return False
    try:
        parent, root = path.parent.resolve(), run_dir.resolve()
    except OSError:
        return False
    return parent.is_relative_to(root)


def _measure(path: Path) -> tuple[str, int, int]:
    if path.is_symlink():
        return "link", 1, 0
    if path.is_dir():
        files = size = 0
        for dirpath, _, filenames in os.walk(path):
            for name in filenames:
                files += 1
                try:
                    size += (Path(dirpath) / name).lstat().st_size
                except OSError:
                    pass
        return "directory", files, size
    return "file", 1, path.lstat().st_size


def _owner_running(data: dict) -> bool:
    pid, host = data.get("pid"), data.get("host")
    return isinstance(pid, int) and host == socket.gethostname() and pid != os.getpid() and alive(pid)


def plan_run(manifest: Path) -> RunPlan:
    """What cleaning the run of `manifest` would do (nothing is touched)."""
    run_dir = manifest.parent
    plan = RunPlan(run_dir, manifest)
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as err:
        plan.skipped = f"{manifest} is not readable JSON ({err}); remove the run by hand if it is yours"
        return plan
    created = data.get("created") if isinstance(data, dict) else None
    if not isinstance(created, list):
        plan.skipped = f"{manifest} has no 'created' list: not a fluxmpi run manifest"
        return plan
    if _owner_running(data):
        plan.skipped = f"the run is still going (pid {data['pid']} on this host)"
        return plan
    recorded = Path(data.get("workdir") or run_dir)
    listed: set[Path] = set()
    for entry in created:
        raw, what = (entry.get("path"), entry.get("what")) if isinstance(entry, dict) else (entry, None)
        if not isinstance(raw, str) or not raw:
            plan.refused.append(f"{entry!r}: not a path")
            continue
        path = Path(raw)
        if path.is_absolute() and path.is_relative_to(recorded):
            path = run_dir / path.relative_to(recorded)     # the run directory was moved since
        elif not path.is_absolute():
            path = run_dir / path
        if not _inside(path, run_dir):
            plan.refused.append(f"{raw}: not inside the run directory {run_dir}")
            continue
        if path == manifest or path in listed:
            continue
        listed.add(path)
        if not (path.exists() or path.is_symlink()):
            plan.missing.append(path)
            continue
        kind, files, size = _measure(path)
        name = path.relative_to(run_dir).parts[0]
        plan.remove.append(Item(path, what or EXPLAIN.get(name, "created by the run (listed in its manifest)"),
                                kind, files, size))
    plan.remove.append(Item(manifest, "the run's manifest: the list of what it created", "file", 1,
                            manifest.stat().st_size))
    listed.add(manifest)
    try:
        plan.keep = sorted(p for p in run_dir.iterdir() if p not in listed)
    except OSError:
        pass
    return plan


def execute(plan: RunPlan) -> list[str]:
    """Remove the plan's items, then the run directory if empty. Returns problems (empty when all went)."""
    problems = []
    if plan.skipped:
        return problems
    for item in plan.remove:
        try:
            if item.kind == "directory":
                shutil.rmtree(item.path)
            else:
                item.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as err:
            problems.append(f"could not remove {item.path}: {err}")
    try:
        plan.run_dir.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        pass        # not empty: it holds what the run did not create, reported as kept
    return problems


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def _show(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def render(plans: list[RunPlan], dry_run: bool, base: Path | None = None) -> str:
    base = base or Path.cwd()
    verb = "would remove" if dry_run else "removed"
    lines = []
    for plan in plans:
        lines.append(f"run {_show(plan.run_dir, base)}:")
        if plan.skipped:
            lines.append(f"  skipped: {plan.skipped}")
            continue
        for item in plan.remove:
            files = f"{item.files} file{'' if item.files == 1 else 's'}"
            shape = (f"directory, {files}, {_human(item.size)}" if item.kind == "directory"
                     else item.kind if item.kind == "link" else _human(item.size))
            suffix = "/" if item.kind == "directory" else ""
            lines.append(f"  {verb} {_show(item.path, base)}{suffix} ({shape}): {item.what}")
        for path in plan.missing:
            lines.append(f"  not present: {_show(path, base)} (listed, never made or already gone)")
        for why in plan.refused:
            lines.append(f"  refused: {why}")
        for path in plan.keep:
            lines.append(f"  kept {_show(path, base)}: not created by the run")
        if plan.keep:
            lines.append("  kept the run directory: it holds files the run did not create")
        else:
            lines.append(f"  {verb} {_show(plan.run_dir, base)}/ (the run directory, then empty)")
    done = [p for p in plans if not p.skipped]
    total = sum(p.size for p in done)
    lines.append(f"{verb} {sum(len(p.remove) for p in done)} item(s), {_human(total)}, from {len(done)} run(s)"
                 + (f"; skipped {len(plans) - len(done)}" if len(done) < len(plans) else ""))
    return "\n".join(lines)


def clean(dirs: list[str | os.PathLike] | None = None, dry_run: bool = False,
          cwd: Path | None = None) -> tuple[list[RunPlan], list[str]]:
    """Plan (and unless dry_run, carry out) the cleaning of every run found; returns (plans, problems)."""
    plans = [plan_run(m) for m in find_manifests(dirs, cwd)]
    problems: list[str] = []
    if not dry_run:
        for plan in plans:
            problems += execute(plan)
    return plans, problems
