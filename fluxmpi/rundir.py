"""Names and files of one run's directory (WORKDIR): what a run creates there, and the two records it keeps.

Everything a run writes is named here, so the runner, `--resume`, `fluxmpi clean` and the benchmark agree on
where things are and what the records hold:

    WORKDIR/records/      rank records (TASK.RANK.json) of the bundled app or of the rank wrapper
    WORKDIR/tasks/        the user's programs' output: NAME.out, NAME.err
    WORKDIR/bin/          the app compiled for the run
    WORKDIR/faults/       markers of --fail-once faults
    WORKDIR/runinfo/      Parsl's run directory (logs, submit scripts)
    WORKDIR/run.json      the run record: rewritten within a second of a finished task, and at the end
    WORKDIR/manifest.json what the run created (for `fluxmpi clean`), and which process owns it (pid, host)
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RUN_JSON = "run.json"


@dataclass(frozen=True)
class RunDir:
    """The paths of one run's directory (nothing is created until `create` is called)."""
    root: Path

    @classmethod
    def at(cls, path: str | os.PathLike) -> "RunDir":
        return cls(Path(path).resolve())

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def tasks(self) -> Path:
        return self.root / "tasks"

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def faults(self) -> Path:
        return self.root / "faults"

    @property
    def runinfo(self) -> Path:
        return self.root / "runinfo"

    @property
    def run_json(self) -> Path:
        return self.root / RUN_JSON

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    def task_output(self, task: str) -> tuple[Path, Path]:
        """The stdout and stderr files of a user's task."""
        return self.tasks / f"{task}.out", self.tasks / f"{task}.err"

    def create(self, with_faults: bool = False) -> None:
        """Make the run's directories and write its manifest (what it creates, and who owns it)."""
        made = [self.records, self.bin, self.tasks] + ([self.faults] if with_faults else [])
        for d in made:
            d.mkdir(parents=True, exist_ok=True)
        write_json(self.manifest, {"created": [str(p) for p in made + [self.runinfo, self.run_json]],
                                   "workdir": str(self.root), "time": time.time(),
                                   # `fluxmpi clean` skips a run whose owner is still running
                                   "pid": os.getpid(), "host": socket.gethostname()})

    def read_run_json(self) -> dict | None:
        """The run record, or None if there is none (ValueError if it is not JSON)."""
        if not self.run_json.is_file():
            return None
        return json.loads(self.run_json.read_text())


_write_lock = threading.Lock()


def write_json(path: Path, data: dict) -> None:
    """Replace `path` with `data` at once: a reader never sees half a file."""
    write_json_text(path, json.dumps(data, indent=1, default=str))


def write_json_text(path: Path, text: str) -> None:
    """Replace `path` with `text` (JSON made by the caller) at once."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
