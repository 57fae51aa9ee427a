"""`fluxmpi bench`: the launch paths side by side on node-spanning MPI tasks, against bare baselines.

workload.py  what runs (uniform / mixed sizes, sleep or busy, presets, files)
baselines.py the bare srun loop and the bare Flux instance (flux_driver.py runs inside it)
records.py   one run's raw per-task timestamps, completed from the ranks' records
metrics.py   per-task and per-run figures (pure)      targets.py  the issue's targets
report.py    results.json and the Markdown table      plots.py    PNG timelines and overhead plots
driver.py    runs every path and baseline on every workload and writes the outputs
"""

from .driver import BENCH_PATHS, NAMES, BenchError, parse_names, run_bench
from .workload import Workload, WorkloadError

__all__ = ["BENCH_PATHS", "NAMES", "BenchError", "Workload", "WorkloadError", "parse_names", "run_bench"]
