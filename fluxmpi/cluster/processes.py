"""Starting daemons detached, and finding and stopping them by pid or by network namespace."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Iterable

logger = logging.getLogger(__name__)


def spawn_detached(argv: list[str], log: Path, env: dict | None = None) -> int:
    """Run argv in a new session, reparented away from us (no zombie in a long-lived caller); return its pid.

    The daemons are run in the foreground (`-D`), so the pid returned is the daemon's own pid.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    first = os.fork()
    if first == 0:  # intermediate child: detach, fork the daemon, report its pid, exit
        try:
            os.close(read_end)
            os.setsid()
            second = os.fork()
            if second == 0:
                fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os.close(write_end)
                os.execvpe(argv[0], argv, env if env is not None else os.environ)
            os.write(write_end, str(second).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(first, 0)
    if not text:
        raise OSError(f"could not start {argv[0]} (see {log})")
    return int(text)


def alive(pid: int) -> bool:
    """True if pid runs and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def command_of(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def pids_in_netns(netns_file: Path) -> list[int]:
    """Every process whose network namespace is the one bound at netns_file (like `ip netns pids`)."""
    try:
        target = os.stat(netns_file).st_ino
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                found.append(int(entry))
        except OSError:
            continue
    return found


def terminate(pids: Iterable[int], grace: float = 10.0) -> list[int]:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL what is left. Returns the pids that needed SIGKILL."""
    pids = [p for p in set(pids) if p != os.getpid() and alive(p)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    killed = []
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in killed):
        time.sleep(0.05)
    return killed


def listed(pid: int) -> bool:
    """True while pid has an entry in /proc, zombies included (`pgrep` and `ps` still show those)."""
    return os.path.exists(f"/proc/{pid}")


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of `pids` is listed any more (a stopped daemon stays a zombie until its parent, often
    PID 1, reaps it); returns those still listed after `timeout` seconds."""
    left = [p for p in set(pids) if listed(p)]
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if listed(p)]
    return left


def describe(pid: int) -> str:
    """"1234 slurmd (zombie)": for messages about processes that would not go."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        name = "?"
    return f"{pid} {name}" + ("" if alive(pid) else " (zombie: its parent has not reaped it)")


def find_processes(executable: str) -> list[int]:
    """Pids whose argv[0] ends in `executable` (e.g. every slurmctld on the machine)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            argv = command_of(int(entry))
            if argv and os.path.basename(argv[0]) == executable and alive(int(entry)):
                found.append(int(entry))
    return found


def names_path(argv: list[str], directory: str | Path) -> bool:
    """True if an argument is `directory` or a path under it (…/fxops/… but not …/fxops2/…)."""
    d = str(directory).rstrip("/")
    return any(a == d or a.endswith("=" + d) or f"{d}/" in a for a in argv)


def pids_with_args(directory: str | Path, text: str = "") -> list[int]:
    """Pids (not ours) whose command line names `directory` (or a path in it) and has an argument with `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            argv = command_of(int(entry))
            if argv and any(text in a for a in argv) and names_path(argv, directory) and alive(int(entry)):
                found.append(int(entry))
    return found
