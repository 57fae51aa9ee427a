"""Run one packed Python call as a Flux job (the flux-jobs path's non-MPI tasks, e.g. compiling the C app).

    python -m fluxmpi.launch.flux.pyjob CALL_FILE RESULT_FILE

CALL_FILE holds Parsl's packed (function, args, kwargs) (parsl.serialize.pack_apply_message); the serialized
return value goes to RESULT_FILE. Parsl app functions return exceptions as a RemoteExceptionWrapper, which the
DataFlowKernel re-raises, so a failing call still exits 0: the job failing means the call never ran.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)


def main(call_file: str, result_file: str) -> int:
    from parsl.serialize import serialize, unpack_apply_message

    with open(call_file, "rb") as f:
        func, args, kwargs = unpack_apply_message(f.read())
    payload = serialize(func(*args, **kwargs))
    tmp = f"{result_file}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(payload)
    os.replace(tmp, result_file)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m fluxmpi.launch.flux.pyjob CALL_FILE RESULT_FILE")
    sys.exit(main(sys.argv[1], sys.argv[2]))
