"""fluxmpi's log records in Parsl's own log file, so one file tells what Parsl and fluxmpi's executors did.

Every module logs to `logging.getLogger(__name__)` (the "fluxmpi" tree). Parsl writes its log to
RUN_DIR/NNN/parsl.log through a handler on the "parsl" logger only; a fluxmpi executor's start() calls
`log_into(run_dir)` to send the "fluxmpi" tree to the same file, in Parsl's format.
"""

from __future__ import annotations

import logging
import os
import threading

logger = logging.getLogger(__name__)

# Parsl's own file format (parsl.log.py), so the two kinds of lines read alike.
FORMAT = ("%(created)f %(asctime)s %(processName)s-%(process)d %(threadName)s-%(thread)d "
          "%(name)s:%(lineno)d %(funcName)s %(levelname)s: %(message)s")
_attached: dict[str, logging.Handler] = {}
_lock = threading.Lock()


def log_into(run_dir: str | None, level: int = logging.DEBUG) -> str | None:
    """Send the "fluxmpi" loggers to RUN_DIR/parsl.log as well (once per file); returns the file or None."""
    if not run_dir:
        return None
    path = os.path.join(os.path.abspath(run_dir), "parsl.log")
    with _lock:
        if path in _attached:
            return path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.setLevel(level)
        root = logging.getLogger("fluxmpi")
        root.addHandler(handler)
        root.setLevel(min(root.level or level, level))
        _attached[path] = handler
    logger.debug("fluxmpi log records go to %s too", path)
    return path


def detach_all() -> None:
    """Close the file handlers log_into attached (at shutdown of the run)."""
    with _lock:
        for handler in _attached.values():
            logging.getLogger("fluxmpi").removeHandler(handler)
            handler.close()
        _attached.clear()
