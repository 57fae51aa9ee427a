#!/usr/bin/env python3
"""mpi_hello.py: the mpi4py twin of mpi_hello.c.

Every MPI rank reports where it ran as one JSON line (a "record"): host, rank,
the CPUs of its affinity mask, GPU visibility variables and when it started,
finished MPI_Init and ended. fluxmpi/placement.py reads these records. Each
rank writes only its own record, so the output is complete also when a
launcher runs the command once per rank. See README.md for the options.
"""
import time

T_START = time.time()  # first thing, so it is taken before MPI starts

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

GPU_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ZE_AFFINITY_MASK",
    "GPU_DEVICE_ORDINAL",
)
# The task id becomes part of a file name: keep it to a safe, short alphabet
# (the same rule as mpi_hello.c and fluxmpi/mpi_apps.py).
TASK_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# Exit code of a rank failed on purpose with --fail-mode exit (fluxmpi.rankfault.FAIL_EXIT_CODE).
FAIL_EXIT_CODE = 3


def task_id(text):
    if not TASK_ID_RE.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"invalid task id {text!r}: use letters, digits, '_', '.', '-', "
            "not starting with '.' or '-', at most 128 characters"
        )
    return text


def seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs a number of seconds, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"needs a finite number of seconds, got {text!r}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def rank_number(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"needs a rank (a whole number from 0), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"needs a rank (a whole number from 0), got {text!r}")
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="mpi_hello.py",
        allow_abbrev=False,
        description="Each MPI rank reports its placement as one JSON record.",
    )
    parser.add_argument("--task", type=task_id, help="task id (default: $FLUXMPI_TASK_ID, else 0)")
    parser.add_argument(
        "--affinity", action="store_true", help="report only app, task, host, rank, size, pid, cpus"
    )
    work = parser.add_mutually_exclusive_group()
    work.add_argument("--busy", type=seconds, metavar="SECONDS", help="spin the CPU for SECONDS")
    work.add_argument("--sleep", type=seconds, metavar="SECONDS", help="sleep for SECONDS")
    parser.add_argument("--out", metavar="DIR", help="write DIR/<task>.<rank>.json instead of stdout")
    parser.add_argument("--fail-rank", type=rank_number, metavar="R",
                        help="rank R fails right after MPI_Init (fault injection)")
    parser.add_argument("--fail-mode", choices=("exit", "segv"),
                        help=f"how it fails: exit (code {FAIL_EXIT_CODE}, default) or segv (a real segfault)")
    parser.add_argument("--fail-once-marker", metavar="PATH",
                        help="fail only if PATH does not exist, creating it (a retry then succeeds)")
    args = parser.parse_args(argv)
    if args.out == "":
        parser.error("--out needs a directory, got ''")
    if args.fail_rank is None and (args.fail_mode or args.fail_once_marker is not None):
        parser.error("--fail-mode and --fail-once-marker need --fail-rank")
    if args.fail_once_marker == "":
        parser.error("--fail-once-marker needs a file path, got ''")
    if args.task is None:
        env = os.environ.get("FLUXMPI_TASK_ID", "")
        if env:
            try:
                args.task = task_id(env)
            except argparse.ArgumentTypeError as err:
                parser.error(f"FLUXMPI_TASK_ID: {err} (set a valid id or pass --task)")
        else:
            args.task = "0"
    return args


def do_work(kind, secs):
    # Durations use the monotonic clock so a clock step cannot stretch them.
    deadline = time.monotonic() + secs
    if kind == "busy":
        sink = 0.0
        while time.monotonic() < deadline:
            for k in range(1000):
                sink += k * 0.5
    elif kind == "sleep":
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(left)


def maybe_fail(args, rank):
    """The chosen rank fails on purpose, as a crashing application would: no record, no MPI.Finalize. With a
    marker file it fails only the first time (created atomically, so exactly one attempt fails)."""
    if args.fail_rank != rank:
        return
    if args.fail_once_marker:
        try:
            os.close(os.open(args.fail_once_marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            return  # failed once already: this attempt runs normally
    mode = args.fail_mode or "exit"
    print(f"mpi_hello.py: rank {rank} on {socket.gethostname()} fails on purpose "
          f"(--fail-rank {args.fail_rank} --fail-mode {mode})", file=sys.stderr, flush=True)
    if mode == "segv":
        import ctypes

        ctypes.string_at(0)  # a real invalid access, not a raised signal
    os._exit(FAIL_EXIT_CODE)


def write_stdout(line):
    # One write per record, so lines from ranks sharing a stream stay whole.
    data = line.encode()
    while data:
        written = os.write(sys.stdout.fileno(), data)
        data = data[written:]


def write_record_file(out_dir, task, rank, line):
    # Ranks race to create the directory; a hidden temporary name plus rename
    # means a reader sees either no file or the whole record.
    os.makedirs(out_dir, exist_ok=True)
    final = os.path.join(out_dir, f"{task}.{rank}.json")
    tmp = os.path.join(out_dir, f".{task}.{rank}.json.tmp.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(line)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)  # bad options stop before MPI starts

    import mpi4py

    mpi4py.rc.initialize = False  # explicit Init/Finalize so the times bracket them
    mpi4py.rc.finalize = False
    from mpi4py import MPI

    MPI.Init()
    t_init = time.time()
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    maybe_fail(args, rank)
    # Open MPI pads the string with NULs; keep its first line only.
    library = (MPI.Get_library_version().split("\0", 1)[0].strip().splitlines() or [""])[0].strip()

    record = {
        "app": "mpi4py",
        "task": args.task,
        "host": socket.gethostname(),
        "rank": rank,
        "size": size,
        "pid": os.getpid(),
        "cpus": sorted(os.sched_getaffinity(0)),
    }
    kind = "busy" if args.busy is not None else "sleep" if args.sleep is not None else "none"
    secs = args.busy if args.busy is not None else args.sleep if args.sleep is not None else 0.0
    do_work(kind, secs)
    # No barrier: each rank reports its own end. Finalize comes before t_end
    # because the process holds its CPUs until it is done with MPI.
    MPI.Finalize()
    t_end = time.time()

    if not args.affinity:
        record.update(
            gpus={name: os.environ[name] for name in GPU_VARS if name in os.environ},
            mpi_library=library,
            t_start=T_START,
            t_init=t_init,
            t_end=t_end,
            work={"kind": kind, "seconds": float(secs)},
        )
    line = json.dumps(record) + "\n"
    if args.out:
        try:
            write_record_file(args.out, args.task, rank, line)
        except OSError as err:
            print(f"mpi_hello.py: cannot write the record to {args.out!r}: {err}", file=sys.stderr)
            return 1
    else:
        write_stdout(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
