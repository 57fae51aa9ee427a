"""Task files for `fluxmpi run --tasks FILE`: an ensemble of named MPI tasks, read and checked in full.

The whole file is validated before anything is submitted, and every problem in it is reported at once (one per
line, each naming the file, the task and the field, and saying what to write instead): a typo in task 40 of an
ensemble should cost a second at the login node, not a queue wait and 39 finished tasks. Nothing here runs or
submits anything.

Format (YAML; JSON is the same structure)::

    defaults:                  # optional; applies to every task that does not set the field itself
      ranks_per_node: 2
      walltime: "00:10:00"
      env: {OMP_NUM_THREADS: "1"}
    tasks:
      - name: member-01
        command: ./wrf.exe -c member01.nml    # a string (split as a shell would, by shlex) or a list of strings
        nodes: 2
        ranks_per_node: 4                      # any two of nodes / ranks_per_node / ranks (MPITaskSpec.build)
        cores_per_rank: 1
        gpus_per_rank: 0
        exclusive: true
        walltime: 600                          # the launcher's limit: seconds, or a Slurm form ("10:00", "1-00")
        timeout: 900                           # fluxmpi's own limit for the task, in seconds (or "15m")
        env: {FOO: bar}                        # merged over defaults.env, the task's value winning
        container: charliecloud:/var/tmp/img   # RUNTIME:IMAGE, or {runtime:, image:, binds: [...], env:, options:}
        cwd: runs/member-01                    # kept as written
        repeats: 3                             # runs member-01.0, member-01.1, member-01.2

Also accepted, because people write them:

* a top-level list of tasks, without `defaults:` / `tasks:`;
* `tasks:` as a mapping of name to task (`member-01: {command: ..., nodes: 2}`);
* top-level keys starting with `x-` are ignored, to hold YAML anchors for `<<: *anchor` merges;
* a task that is only a command (a string or a list), taking everything else from `defaults`;
* keys in any case and with `-` for `_` (`ranks-per-node`), and Slurm's spellings: ntasks, ntasks_per_node,
  cpus_per_task, gpus_per_task, time (= walltime); environment (= env); workdir, chdir (= cwd);
* env as a mapping, as `"K=V;K2=V2"` or as a list of `"K=V"`; numbers in env are turned into strings;
* CSV (`.csv`): a header row of field names, one task per row, `command` as a shell string, env as
  `K=V;K2=V2`, empty cells unset; whole numbers in cells are numbers, so `walltime` 600 is seconds as in YAML.
  Blank rows and rows starting with `#` are skipped. CSV has no defaults.

Rules:

* `name` is optional: an unnamed task is `task-<i>`, i its 1-based position in the file (give names if you
  use --resume, since inserting a task renumbers the ones after it). Names become file names: letters, digits,
  `_`, `.` and `-` only. With `repeats: N` (N > 1) a task runs N times as `<name>.0` ... `<name>.<N-1>`.
  Two tasks with the same name after that expansion are an error naming both.
* `defaults` may set every field except `name`. For the sizes (nodes / ranks_per_node / ranks), a task that
  sets any of them takes from defaults only enough to know two (in that order), so a task giving nodes and
  ranks is not contradicted by a default ranks_per_node.
* A string command is split, not run by a shell: a command using `|`, `>`, `&&`, `;` ... as a word is refused
  (write `[bash, -c, "..."]` for that).
* `cwd: null`, `timeout: null` and `walltime: null` in a task undo a default.
* `timeout`: a number is seconds; a string is seconds when it is a number ("90"), else a walltime form
  ("10m", "1:30:00"). Unlike walltime, it is not part of the task's identity (`TaskEntry.key`).
* When `load_tasks` is given `max_nodes` or `cores_per_node`, every task must fit (MPITaskSpec.check_fits);
  `gpus_per_node` (default 0) is then part of that description, so GPU tasks need it given.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
import math
import numbers
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .spec import MPITaskSpec, SpecError, parse_walltime

logger = logging.getLogger(__name__)

SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".csv": "csv"}
SPEC_KEYS = ("nodes", "ranks_per_node", "ranks", "cores_per_rank", "gpus_per_rank", "exclusive", "walltime",
             "container")
SIZE_KEYS = SPEC_KEYS[:3]
TASK_KEYS = ("name", "command") + SPEC_KEYS + ("env", "cwd", "timeout", "repeats")
DEFAULT_KEYS = tuple(k for k in TASK_KEYS if k != "name")
TOP_KEYS = ("defaults", "tasks")
# Slurm's and other launchers' words for the same fields: HPC users write them from habit.
ALIASES = {
    "ntasks": "ranks",
    "ntasks_per_node": "ranks_per_node",
    "cpus_per_task": "cores_per_rank",
    "gpus_per_task": "gpus_per_rank",
    "time": "walltime",
    "environment": "env",
    "workdir": "cwd",
    "chdir": "cwd",
}
# Words that only mean something to a shell; split by shlex they would reach the program as arguments.
SHELL_OPERATORS = frozenset({"|", "||", "&&", ";", ";;", "&", ">", ">>", "<", "<<", "2>", "2>>", "&>", "2>&1"})
ANCHOR_PREFIXES = ("x-", "x_")  # top-level keys ignored, to hold YAML anchors
MAX_NAME_LENGTH = 200  # leaves room under the usual 255-byte file-name limit for suffixes like ".3.out"

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT_RE = re.compile(r"[+-]?\d+")
_NUMERIC_CSV_KEYS = frozenset(SPEC_KEYS) - {"exclusive", "container"} | {"repeats"}


class TaskFileError(SpecError):
    """A task file that cannot run as written; lists every problem, each with its task, field and fix.

    `source` is the file (or the label parse_tasks was given) and `problems` the lines without it.
    """

    def __init__(self, source: str, problems: str | Sequence[str]):
        problems = (problems,) if isinstance(problems, str) else tuple(problems)
        super().__init__(source, problems)  # both in args, so the error survives pickling (Parsl does that)
        self.source = source
        self.problems = problems

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}"
        lines = [f"{self.source}: {len(self.problems)} problems, so nothing was run; fix them all and run again:"]
        lines += [f"  {self.source}: {problem}" for problem in self.problems]
        return "\n".join(lines)


class _Bad(Exception):
    """One field's value is unusable; the message says why and what to give instead."""


# ---- one field at a time ------------------------------------------------------------------------------------


def _check_name(value: Any) -> str:
    if not isinstance(value, str):
        # YAML reads `name: 01` as the number 1 and `name: 1e3` as 1000.0: quoting keeps what was written.
        raise _Bad(f"{value!r} ({type(value).__name__}) is not text: quote it, e.g. name: \"{value}\"")
    name = value.strip()
    if not name:
        raise _Bad("is empty: give a name of letters, digits, '_', '.' and '-', or leave name out for task-<i>")
    if not _NAME_RE.fullmatch(name):
        bad = "".join(sorted({c for c in name if not _NAME_RE.fullmatch(c)}))
        fixed = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")
        raise _Bad(f"{name!r} has {bad!r} in it: use only letters, digits, '_', '.' and '-' "
                   "(the name becomes a file name)" + (f", e.g. {fixed!r}" if fixed.strip(".") else ""))
    if name in (".", ".."):
        raise _Bad(f"{name!r} is not usable as a file name: give a name with a letter or digit in it")
    if len(name) > MAX_NAME_LENGTH:
        raise _Bad(f"is {len(name)} characters long: give at most {MAX_NAME_LENGTH} (it becomes a file name)")
    return name


def _check_command(value: Any) -> tuple[str, ...]:
    hint = "give the program and its arguments, as a string (command: ./app -i in.nml) or a list of strings"
    if value is None:
        raise _Bad(f"is empty: {hint}")
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError as err:
            raise _Bad(f"{value!r} cannot be split into arguments ({err}): close the quote, "
                       "or give the command as a list of strings") from None
        if not argv:
            raise _Bad(f"is empty: {hint}")
        operators = [word for word in argv if word in SHELL_OPERATORS]
        if operators:
            raise _Bad(f"{value!r} uses shell syntax ({' '.join(operators)}) but no shell runs it: write "
                       f"command: [bash, -c, {value!r}], or drop the redirection and use the task's output files")
        return tuple(argv)
    if isinstance(value, (list, tuple)):
        if not value:
            raise _Bad(f"is an empty list: {hint}")
        argv = []
        for j, item in enumerate(value):
            if isinstance(item, str):
                argv.append(item)
            elif isinstance(item, numbers.Real) and not isinstance(item, bool):
                argv.append(str(item))  # `[./app, -n, 10]`: the 10 is meant as the string "10"
            else:
                raise _Bad(f"item {j} ({item!r}, {type(item).__name__}) is not a string: quote it in the list")
        if not argv[0].strip():
            raise _Bad(f"the program (item 0) is empty: {hint}")
        return tuple(argv)
    raise _Bad(f"is a {type(value).__name__}: {hint}")


def _env_pairs(value: Any) -> list[tuple[Any, Any]]:
    """(name, value) pairs from a mapping, "K=V;K2=V2" or ["K=V", ...]."""
    if isinstance(value, Mapping):
        return list(value.items())
    if isinstance(value, str):
        parts = [p.strip() for p in re.split(r"[;\n]", value)]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise _Bad(f"is a {type(value).__name__}: give a mapping (env: {{OMP_NUM_THREADS: \"1\"}}) "
                   "or \"K=V;K2=V2\"")
    pairs = []
    for part in parts:
        if part == "":
            continue
        if not isinstance(part, str) or "=" not in part:
            raise _Bad(f"{part!r} is not NAME=value: write env entries as K=V (or give env as a mapping)")
        name, _, text = part.partition("=")
        pairs.append((name.strip(), text))
    return pairs


def _check_env(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    env: dict[str, str] = {}
    errors = []
    for name, text in _env_pairs(value):
        if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
            errors.append(f"{name!r} is not a variable name: use letters, digits and '_', not starting with a digit")
        elif isinstance(text, bool):
            # YAML reads FOO: yes / on / true as a bool; the program would see "True".
            errors.append(f"{name}={text!r} is a yes/no value, not text: quote it in the file, e.g. {name}: \"yes\"")
        elif text is None:
            errors.append(f"{name} has no value: give a string ({name}: \"\" for an empty one)")
        elif isinstance(text, str):
            env[name] = text
        elif isinstance(text, numbers.Real):
            env[name] = str(text)
        else:
            errors.append(f"{name}={text!r} is a {type(text).__name__}: give a string or a number")
    if errors:
        raise _Bad("; ".join(errors))
    return env


def _check_cwd(value: Any) -> str | None:
    if value is None:  # `cwd: null` in a task: none, even if defaults give one
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise _Bad(f"{value!r} ({type(value).__name__}) is not a path: give a directory, e.g. cwd: runs/member-01")
    if not value.strip():
        raise _Bad("is empty: give a directory, or leave cwd out to run where fluxmpi runs the task")
    if "\0" in value:
        raise _Bad(f"{value!r} has a NUL character: give a plain directory path")
    return value.strip()


def _check_timeout(value: Any) -> float | None:
    hint = "give seconds (900, 1.5) or a time like '15m' or '1:30:00'; leave timeout out for no limit"
    if value is None:  # `timeout: null` in a task: no limit, even if defaults give one
        return None
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise _Bad(f"timeout={value!r} ({type(value).__name__}) is not a duration: {hint}")
    if isinstance(value, str):
        try:
            seconds = float(value.strip())
        except ValueError:
            try:
                seconds = float(parse_walltime(value))  # type: ignore[arg-type]
            except SpecError:
                raise _Bad(f"timeout={value!r} is not a duration: {hint}") from None
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise _Bad(f"timeout={value!r} is not a positive duration: {hint}")
    return seconds


def _check_repeats(value: Any) -> int:
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _Bad(f"repeats={value!r} ({type(value).__name__}) is not a whole number: give a whole number >= 1")
    if value < 1:
        raise _Bad(f"repeats={value!r} is too small: give a whole number >= 1 (leave repeats out to run it once)")
    return int(value)


def _spec_field(key: str) -> Callable[[Any], Any]:
    """The spec's own check of one field (build with just that field), so messages match MPITaskSpec's."""

    def check(value: Any) -> Any:
        if value is None and key in SIZE_KEYS:
            # build() reads None as "not given" and would quietly infer this one from the others.
            raise _Bad("has no value: give a whole number, or leave the key out")
        try:
            return getattr(MPITaskSpec.build(**{"nodes": 1, key: value}), key)
        except SpecError as err:
            raise _Bad(str(err)) from None

    return check


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "name": _check_name,
    "command": _check_command,
    **{key: _spec_field(key) for key in SPEC_KEYS},
    "env": _check_env,
    "cwd": _check_cwd,
    "timeout": _check_timeout,
    "repeats": _check_repeats,
}


# ---- one task -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskEntry:
    """One task to run: its name (also its file names), argv, spec, and where/how long it runs.

    `timeout` is seconds fluxmpi waits for the task (None: no limit), apart from the spec's walltime.
    """

    name: str
    command: tuple[str, ...]
    spec: MPITaskSpec
    env: dict[str, str] = field(default_factory=dict, hash=False)  # a dict cannot hash; the rest identifies
    cwd: str | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.command, str):
            raise SpecError(f"TaskEntry {self.name!r} command={self.command!r} is a string: give a list of "
                            "arguments (shlex.split it first)")
        if not isinstance(self.spec, MPITaskSpec):
            raise SpecError(f"TaskEntry spec={self.spec!r} is not an MPITaskSpec: build one with MPITaskSpec.build")
        checks = [("name", _check_name), ("command", _check_command), ("env", _check_env)]
        checks += [("cwd", _check_cwd)] if self.cwd is not None else []
        checks += [("timeout", _check_timeout)] if self.timeout is not None else []
        for name, check in checks:
            try:
                object.__setattr__(self, name, check(getattr(self, name)))
            except _Bad as bad:
                raise SpecError(f"TaskEntry {self.name!r} {name}: {bad}") from None

    def key(self) -> str:
        """A stable hash of what the task computes (name, command, spec, env, cwd), for --resume.

        A changed command, size or env gives a new key, so resume reruns the task; timeout is left out because
        giving a finished task more time does not change its result. Env order does not matter.
        """
        payload = {"name": self.name, "command": list(self.command), "spec": self.spec.to_dict(),
                   "env": self.env, "cwd": self.cwd}
        blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _canonical(key: Any) -> str | None:
    """The field a key names (case, '-' and Slurm spellings forgiven), or None if it is not text."""
    if not isinstance(key, str):
        return None
    word = re.sub(r"[\s-]+", "_", key.strip().lower())
    return ALIASES.get(word, word)


def _unknown_key(key: Any, allowed: Sequence[str]) -> str:
    word = _canonical(key) or str(key)
    words = list(allowed) + [alias for alias, target in ALIASES.items() if target in allowed]
    close = difflib.get_close_matches(word, words, n=1, cutoff=0.6)
    if close:
        return f"unknown key {key!r}: did you mean {ALIASES.get(close[0], close[0])!r}?"
    return f"unknown key {key!r}: use only {', '.join(allowed)}"


def _fields(raw: Mapping[Any, Any], allowed: Sequence[str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """{field: raw value} by canonical name, and (field, problem) for unknown or doubled keys."""
    out: dict[str, Any] = {}
    spelled: dict[str, Any] = {}
    problems = []
    for key, value in raw.items():
        word = _canonical(key)
        if word == "name" and "name" not in allowed:
            problems.append(("name", "cannot be a default: each task gives its own name (or is task-<i>)"))
        elif word not in allowed:
            problems.append((str(key), _unknown_key(key, allowed)))
        elif word in out:
            problems.append((word, f"is given twice (as {spelled[word]!r} and {key!r}): keep one"))
        else:
            out[word] = value
            spelled[word] = key
    return out, problems


class _Report:
    """The problems found so far, each line '<who>, <field>: <what to do>'."""

    def __init__(self, early: Sequence[str] = ()):
        self.lines = list(early)

    def add(self, who: str, field_name: str | None, message: str) -> None:
        self.lines.append(f"{who}, {field_name}: {message}" if field_name else f"{who}: {message}")


def _check_fields(raw: Mapping[str, Any], who: str, report: _Report) -> tuple[dict[str, Any], set[str]]:
    """Cleaned values of the fields that pass, and the names of those that do not (already reported)."""
    clean: dict[str, Any] = {}
    bad: set[str] = set()
    for key, value in raw.items():
        try:
            clean[key] = _CHECKS[key](value)
        except _Bad as err:
            report.add(who, key, str(err))
            bad.add(key)
    return clean, bad


def _sizes(task: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """nodes / ranks_per_node / ranks for the spec: the task's, topped up from defaults until two are known."""
    sizes = {k: task[k] for k in SIZE_KEYS if k in task}
    if not sizes:
        return {k: defaults[k] for k in SIZE_KEYS if k in defaults}
    for key in SIZE_KEYS:
        if len(sizes) >= 2:
            break
        if key not in sizes and key in defaults:
            sizes[key] = defaults[key]
    return {k: sizes[k] for k in SIZE_KEYS if k in sizes}


@dataclass(frozen=True)
class _Site:
    max_nodes: int | None
    cores_per_node: int | None
    gpus_per_node: int

    def check(self, spec: MPITaskSpec) -> tuple[str, str] | None:
        """(fields, message) if the spec cannot run here, else None."""
        nodes = spec.nodes if self.max_nodes is None else self.max_nodes
        cores = spec.cores_per_node if self.cores_per_node is None else self.cores_per_node
        try:
            spec.check_fits(nodes, cores, self.gpus_per_node, where="block")
        except SpecError as err:
            over = []
            if spec.nodes > nodes:
                over.append("nodes")
            if spec.cores_per_node > cores:
                over += ["ranks_per_node", "cores_per_rank"]
            if spec.gpus_per_node > self.gpus_per_node:
                over += [k for k in ("ranks_per_node", "gpus_per_rank") if k not in over]
            return ", ".join(over) or "nodes", str(err)
        return None


def _site(max_nodes: Any, cores_per_node: Any, gpus_per_node: Any) -> _Site | None:
    if max_nodes is None and cores_per_node is None:
        return None
    # A bad site description is the caller's mistake, not the file's: plain SpecError, raised now.
    MPITaskSpec(nodes=1, ranks_per_node=1).check_fits(
        1 if max_nodes is None else max_nodes, 1 if cores_per_node is None else cores_per_node, gpus_per_node)
    return _Site(None if max_nodes is None else int(max_nodes),
                 None if cores_per_node is None else int(cores_per_node), int(gpus_per_node))


def _task_entries(position: int, raw: Any, implied_name: str | None, defaults: Mapping[str, Any],
                  bad_defaults: set[str], site: _Site | None, names: dict[str, str],
                  report: _Report) -> list[TaskEntry]:
    who = f"task {position}"
    if implied_name is not None:  # listed as `tasks: {name: task}`: the key is the name
        try:
            implied_name = _check_name(implied_name)
        except _Bad as err:
            report.add(who, "name", str(err))
            implied_name = None
        else:
            who = f"task {position} {implied_name!r}"
    if isinstance(raw, (str, list, tuple)):
        raw = {"command": raw}  # a bare command; everything else from defaults
    if raw is None:
        report.add(who, None, "is empty: give at least its command, e.g. `- command: ./app`")
        return []
    if not isinstance(raw, Mapping):
        report.add(who, None, f"is a {type(raw).__name__}, not a task: write it as `- name: ...` with "
                              "`command:` and sizes under it")
        return []
    given, key_problems = _fields(raw, TASK_KEYS)

    # The name first, so every other message about this task can carry it.
    name = implied_name
    if "name" in given:
        try:
            name = _check_name(given["name"])
        except _Bad as err:
            report.add(who, "name", str(err))
            name = None
        else:
            if implied_name is not None and name != implied_name:
                report.add(who, "name", f"is {name!r} but the task is listed under {implied_name!r}: "
                                        "drop the name field or make them agree")
                name = None
            else:
                who = f"task {position} {name!r}"
    for key, message in key_problems:
        report.add(who, key, message)

    clean, bad = _check_fields({k: v for k, v in given.items() if k != "name"}, who, report)
    # A field the task leaves out and whose default was bad is already reported under defaults.
    blocked = bad | {k for k in bad_defaults if k not in given}
    merged = {k: v for k, v in defaults.items() if k not in SIZE_KEYS}
    merged.update({k: v for k, v in clean.items() if k not in SIZE_KEYS})
    merged["env"] = {**defaults.get("env", {}), **clean.get("env", {})}

    if "command" not in merged and "command" not in blocked:
        report.add(who, "command", "is missing: give the program and its arguments, e.g. "
                                   "command: ./app -i in.nml (a string or a list of strings)")
    spec = None
    if not blocked & set(SPEC_KEYS):
        sizes = _sizes(clean, defaults)
        args = {**{k: merged[k] for k in SPEC_KEYS if k in merged}, **sizes}
        try:
            spec = MPITaskSpec.build(**args)
        except SpecError as err:
            inherited = [f"{k}={args[k]!r}" for k in SIZE_KEYS if k in args and k not in clean]
            note = f" ({', '.join(inherited)} comes from defaults)" if inherited else ""
            report.add(who, ", ".join(sizes) or "nodes", f"{err}{note}")
        else:
            misfit = site.check(spec) if site else None
            if misfit:
                report.add(who, *misfit)
                spec = None

    base = name or f"task-{position}"
    repeats = merged.get("repeats", 1)
    expanded = [base] if repeats == 1 else [f"{base}.{r}" for r in range(repeats)]
    label = who if name else f"{who} (unnamed, so {base!r})"
    clashes = []
    for r, task_name in enumerate(expanded):
        if task_name in names:
            clashes.append(f"{task_name!r} is also the name of {names[task_name]}")
        else:
            names[task_name] = label + (f" (repeat {r})" if repeats > 1 else "")
    if clashes:
        shown = "; ".join(clashes[:3]) + (f"; and {len(clashes) - 3} more" if len(clashes) > 3 else "")
        report.add(who, "name", f"{shown}: names become file names, so give every task its own name")

    if spec is None or "command" not in merged or bad or clashes:
        return []
    return [TaskEntry(name=task_name, command=merged["command"], spec=spec, env=dict(merged["env"]),
                      cwd=merged.get("cwd"), timeout=merged.get("timeout")) for task_name in expanded]


# ---- the whole file -----------------------------------------------------------------------------------------


def _top_level(data: Any, source: str, report: _Report) -> tuple[Any, list[tuple[Any, str | None]]]:
    """(raw defaults, [(raw task, name it is listed under)]); raises for a file with no tasks at all."""
    shape = ("give a mapping with a `tasks:` list (and optional `defaults:`), or a list of tasks, "
             "e.g. `tasks: [{name: a, command: ./app, nodes: 2}]`")
    if data is None or (isinstance(data, (str, bytes)) and not data.strip()):
        raise TaskFileError(source, report.lines + [f"is empty: {shape}"])
    defaults = None
    if isinstance(data, Mapping):
        top: dict[str, Any] = {}
        for key, value in data.items():
            word = _canonical(key)
            if word in TOP_KEYS:
                top[word] = value
            elif isinstance(key, str) and key.startswith(ANCHOR_PREFIXES):
                continue  # a place to define YAML anchors (`x-base: &base {...}`), as docker-compose allows
            elif word in TASK_KEYS:
                # A single task written at the top level (or keys indented one level too little).
                report.add("top level", str(key), "is a task field: put tasks in a list under `tasks:` "
                                                  "(each `- name: ...`), or this under `defaults:`")
            else:
                report.add("top level", str(key), _unknown_key(key, TOP_KEYS).replace(
                    "use only", "the top level takes only") + " (and keys starting with x- for YAML anchors)")
        defaults = top.get("defaults")
        if "tasks" not in top:
            raise TaskFileError(source, report.lines + [f"has no `tasks:`: {shape}"])
        tasks = top["tasks"]
    elif isinstance(data, (list, tuple)):
        tasks = data
    else:
        raise TaskFileError(source, report.lines + [f"is a {type(data).__name__}, not a task list: {shape}"])
    if isinstance(tasks, Mapping):  # tasks: {member-01: {...}, member-02: {...}}
        listed = []
        for key, body in tasks.items():
            listed.append((body, key if isinstance(key, str) else str(key)))
        return defaults, listed
    if tasks is None or (isinstance(tasks, (list, tuple)) and not tasks):
        raise TaskFileError(source, report.lines + [f"has no tasks: {shape}"])
    if not isinstance(tasks, (list, tuple)):
        raise TaskFileError(source, report.lines + [f"tasks is a {type(tasks).__name__}, not a list: {shape}"])
    return defaults, [(task, None) for task in tasks]


def _defaults(raw: Any, report: _Report) -> tuple[dict[str, Any], set[str]]:
    if raw is None:
        return {}, set()
    if not isinstance(raw, Mapping):
        report.add("defaults", None, f"is a {type(raw).__name__}: give a mapping of field: value, "
                                     "e.g. `defaults: {ranks_per_node: 2}`")
        return {}, set()
    given, key_problems = _fields(raw, DEFAULT_KEYS)
    for key, message in key_problems:
        report.add("defaults", key, message)
    return _check_fields(given, "defaults", report)


def _validate(data: Any, source: str, site: _Site | None, early: Sequence[str] = ()) -> list[TaskEntry]:
    report = _Report(early)
    raw_defaults, tasks = _top_level(data, source, report)
    defaults, bad_defaults = _defaults(raw_defaults, report)
    names: dict[str, str] = {}
    entries: list[TaskEntry] = []
    for position, (raw, implied_name) in enumerate(tasks, 1):
        entries += _task_entries(position, raw, implied_name, defaults, bad_defaults, site, names, report)
    if report.lines:
        raise TaskFileError(source, report.lines)
    logger.debug("%s: %d task(s) from %d entr%s", source, len(entries), len(tasks), "y" if len(tasks) == 1 else "ies")
    return entries


def parse_tasks(data: Any, source: str = "<tasks>", *, max_nodes: int | None = None,
                cores_per_node: int | None = None, gpus_per_node: int = 0) -> list[TaskEntry]:
    """Check already-loaded task data (as `yaml.safe_load` or `json.load` give it) and expand it into tasks.

    Raises TaskFileError listing every problem, labelled with `source`. See the module docstring for the format.
    """
    if isinstance(data, (str, bytes)) and data.strip():
        raise TaskFileError(source, "is text, not loaded data: give parse_tasks a list or mapping "
                                    "(or use load_tasks for a file)")
    return _validate(data, source, _site(max_nodes, cores_per_node, gpus_per_node))


def load_tasks(path: str | os.PathLike[str], *, max_nodes: int | None = None, cores_per_node: int | None = None,
               gpus_per_node: int = 0) -> list[TaskEntry]:
    """Read a .yaml/.yml, .json or .csv task file and check all of it; raises TaskFileError listing every problem.

    With max_nodes or cores_per_node (and gpus_per_node) every task must also fit that block.
    """
    site = _site(max_nodes, cores_per_node, gpus_per_node)
    source = str(path)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets save CSV with a byte-order mark
    except FileNotFoundError:
        raise TaskFileError(source, f"does not exist: check the path (relative paths start at {os.getcwd()})") \
            from None
    except IsADirectoryError:
        raise TaskFileError(source, "is a directory: give the task file in it (.yaml, .yml, .json or .csv)") \
            from None
    except UnicodeDecodeError as err:
        raise TaskFileError(source, f"is not a text file ({err.reason} at byte {err.start}): give a YAML, JSON "
                                    "or CSV file saved as UTF-8") from None
    except OSError as err:
        raise TaskFileError(source, f"cannot be read ({err.strerror or err}): check its permissions") from None
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        said = f"has the suffix {path.suffix!r}" if path.suffix else "has no suffix"
        raise TaskFileError(source, f"{said}, so its format is unknown: name it .yaml or .yml (YAML), .json or "
                                    ".csv")
    if not text.strip():
        raise TaskFileError(source, "is empty: give a `tasks:` list (see `fluxmpi run --help`)")
    if kind == "yaml":
        data, early = _load_yaml(text, source)
    elif kind == "json":
        data, early = _load_json(text, source)
    else:
        data, early = _load_csv(text, source)
    return _validate(data, source, site, early)


# ---- the three formats --------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that notes keys given twice in one mapping (plain PyYAML silently keeps the last one)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.doubled: list[str] = []

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may be overridden, on purpose
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    first = seen.get(key)
                except TypeError:  # a list or mapping as a key: SafeLoader itself refuses it below
                    continue
                if first is None:
                    seen[key] = line
                else:
                    self.doubled.append(f"line {line}, {key}: is given twice in one mapping (first on line "
                                        f"{first}): keep one")
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, source: str) -> tuple[Any, list[str]]:
    loader = _Loader(text)
    try:
        return loader.get_single_data(), loader.doubled
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = err.problem or err.context or "syntax error"
        raise TaskFileError(source, f"is not valid YAML ({where}{what}): fix it there; common causes are a tab "
                                    "in the indentation and an unquoted value containing ': ' or '#'") from None
    except yaml.YAMLError as err:
        raise TaskFileError(source, f"is not valid YAML ({' '.join(str(err).split())}): fix the syntax") from None
    finally:
        loader.dispose()


def _load_json(text: str, source: str) -> tuple[Any, list[str]]:
    doubled: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                doubled.append(f"{key}: is given twice in one object: keep one")
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs), doubled
    except json.JSONDecodeError as err:
        raise TaskFileError(source, f"is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}): fix "
                                    "it there; JSON needs double quotes and no trailing commas (or write the file "
                                    "as .yaml)") from None


def _load_csv(text: str, source: str) -> tuple[list[dict[str, Any]], list[str]]:
    report = _Report()
    rows = []
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            if not any(cell.strip() for cell in row) or row[0].lstrip().startswith("#"):
                continue
            rows.append((reader.line_num, row))
    except csv.Error as err:
        raise TaskFileError(source, f"is not valid CSV (line {reader.line_num}: {err}): close the quote there")\
            from None
    if not rows:
        raise TaskFileError(source, "is empty: give a header row of field names (name,command,nodes,...) and "
                                    "one row per task")
    header_line, header = rows[0]
    columns: list[str | None] = []  # canonical field per column; None for one already reported
    for j, cell in enumerate(header, 1):
        word = _canonical(cell)
        if not cell.strip():
            report.add(f"header (line {header_line})", f"column {j}", "is empty: give a field name, or delete the "
                                                                      "column")
            word = None
        elif word not in TASK_KEYS:
            report.add(f"header (line {header_line})", cell.strip(), _unknown_key(cell.strip(), TASK_KEYS))
            word = None
        elif word in columns:
            report.add(f"header (line {header_line})", cell.strip(), "is a column twice: keep one")
            word = None
        columns.append(word)
    tasks = []
    for position, (line, row) in enumerate(rows[1:], 1):
        if len(row) > len(columns):
            report.add(f"task {position} (line {line})", None,
                       f"has {len(row)} cells but the header has {len(columns)}: quote cells that contain commas")
        task: dict[str, Any] = {}
        for word, cell in zip(columns, row):
            cell = cell.strip()
            if word is None or not cell:
                continue
            # Whole numbers as numbers, so 600 in walltime means seconds here as it does in YAML.
            task[word] = int(cell) if word in _NUMERIC_CSV_KEYS and _INT_RE.fullmatch(cell) else cell
        tasks.append(task)
    if not tasks:
        raise TaskFileError(source, report.lines + ["has a header but no task rows: add one row per task"])
    return tasks, report.lines
