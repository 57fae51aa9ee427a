"""Bad input is refused before anything is submitted, with an error naming the bad value (docs/reliability.md).

One table across the spec, the `fluxmpi run` command line, the configs and the env files. The cases of
tests/test_htex_paths.py (BAD_INPUTS: node and rank counts, --repeats, --nodes-per-block, --path) are not
repeated here. Every command-line case runs against the real local cluster and checks that slurmctld saw no
new job.
"""

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from fluxmpi import slurm
from fluxmpi.cli import main
from fluxmpi.launch.blocks import BlockShape
from fluxmpi.launch.htex import htex_mpi_config
from fluxmpi.launch.resilience import Resilience
from fluxmpi.mpi_apps import MpiAppError, app_command
from fluxmpi.rankfault import RankFault
from fluxmpi.runner import run_tasks
from fluxmpi.site import Site
from fluxmpi.spec import MPITaskSpec, SpecError


def _closed_port_conf(cluster, tmp: Path) -> str:
    """A copy of the cluster's slurm.conf whose controller port nothing listens on (port 1 is never served)."""
    text = cluster.layout.slurm_conf.read_text()
    lines = ["SlurmctldPort=1" if line.startswith("SlurmctldPort=") else line for line in text.splitlines()]
    conf = tmp / "closed-port.conf"
    conf.write_text("\n".join(lines) + "\n")
    return str(conf)


def _earlier_run(tmp: Path) -> str:
    """A workdir whose run.json says task t0 was a 1-node, 1-rank task."""
    work = tmp / "earlier"
    work.mkdir()
    spec = MPITaskSpec(nodes=1, ranks_per_node=1).to_dict()
    (work / "run.json").write_text(json.dumps({"tasks": [{"task": "t0", "spec": spec, "ok": True}]}))
    return str(work)


def _failing_env_file(tmp: Path) -> str:
    env = tmp / "broken-env.sh"
    env.write_text("export PATH=/nonexistent-fluxmpi-bin:$PATH\nfalse\n")
    return str(env)


# (case, extra `fluxmpi run` arguments (a function of the cluster and a temporary directory), environment,
#  text the error must contain, exit code). All use -N 2 --ranks-per-node 2 unless they say otherwise.
CLI_CASES = [
    ("gpus the site lacks", lambda c, t: ["--gpus-per-rank", "1"], {}, "GPU", 2),
    ("static block smaller than the task", lambda c, t: ["--path", "static", "--nodes-per-block", "1"], {},
     "1 nodes cannot run 2-node tasks", 2),
    ("missing MPI app", lambda c, t: ["--app-binary", "/nonexistent/mpi_hello"], {}, "/nonexistent/mpi_hello", 2),
    ("app binary for the python app", lambda c, t: ["--app", "mpi4py", "--app-binary", "/bin/true"], {},
     "only applies to --app c", 2),
    ("fail rank beyond the task", lambda c, t: ["--fail-rank", "4"], {}, "--fail-rank 4", 2),
    ("fail options without a rank", lambda c, t: ["--fail-once"], {}, "--fail-once need --fail-rank", 2),
    ("fail task that does not exist", lambda c, t: ["--fail-rank", "0", "--fail-task", "t7"], {}, "t7", 2),
    ("negative retries", lambda c, t: ["--retries", "-1"], {}, "retries=-1", 2),
    ("heartbeat threshold below the period",
     lambda c, t: ["--heartbeat-threshold", "5", "--heartbeat-period", "10"], {}, "heartbeat_threshold=5", 2),
    ("zero block timeout", lambda c, t: ["--block-timeout", "0"], {}, "block_timeout=0", 2),
    ("zero run timeout", lambda c, t: ["--run-timeout", "0"], {}, "--run-timeout 0", 2),
    ("unreadable walltime", lambda c, t: ["--walltime", "soon"], {}, "soon", 2),
    ("resume without a workdir", lambda c, t: ["--resume"], {}, "--resume needs --workdir", 2),
    ("resume of an empty workdir", lambda c, t: ["--resume", "--workdir", str(t / "empty")], {}, "empty", 2),
    ("resume of another workload", lambda c, t: ["--resume", "--workdir", _earlier_run(t)], {},
     "task t0 of the run in", 2),
    ("env file that does not exist", lambda c, t: ["--env-file", str(t / "no-env.sh")], {}, "no-env.sh", 2),
    ("env file with a PATH entry that does not exist", lambda c, t: ["--env-file", _failing_env_file(t)], {},
     "/nonexistent-fluxmpi-bin", 2),
    ("flux absent for --path flux", lambda c, t: ["--path", "flux"], {"FLUXMPI_FLUX": "/nonexistent/flux"},
     "/nonexistent/flux", 1),
    ("Slurm not reachable", lambda c, t: ["--cluster", "slurm"], {"SLURM_CONF": "{closed}"}, "closed-port.conf", 1),
    ("partition that does not exist", lambda c, t: ["--cluster", "slurm", "--partition", "nosuchpart"],
     {"SLURM_CONF": "{cluster}"}, "nosuchpart", 1),
]


def job_ids(cluster) -> set[str]:
    """Every job slurmctld still remembers, finished ones included (MinJobAge keeps them a while)."""
    return {job.job_id for job in slurm.jobs(env=cluster.environ())}


@pytest.mark.cluster
@pytest.mark.parametrize("case, args, env, named, code", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_command_line_is_refused_before_any_job(cluster, tmp_path, case, args, env, named, code):
    (tmp_path / "empty").mkdir()
    env = {k: v.format(closed=_closed_port_conf(cluster, tmp_path), cluster=cluster.layout.slurm_conf)
           for k, v in env.items()}
    before = job_ids(cluster)
    t0 = time.monotonic()
    result = CliRunner().invoke(main, ["run", "--cluster-name", cluster.layout.name, "-N", "2",
                                       "--ranks-per-node", "2", *args(cluster, tmp_path)], env=env)
    took = time.monotonic() - t0
    assert result.exit_code == code, result.output
    assert "fluxmpi: error:" in result.output and named in result.output, result.output
    assert took < 60, f"refusing took {took:.0f}s"
    time.sleep(0.2)
    # Slurm may forget finished jobs meanwhile (MinJobAge): only a new one would mean a submission.
    assert job_ids(cluster) - before == set(), "a Slurm job was submitted for bad input"


# Python API and configs: (case, call, exception, text the error must contain).
def _site():
    return Site(name="test", partition="debug", nodes=4, cores_per_node=2)


API_CASES = [
    ("resilience: no block failure allowed", lambda: Resilience(max_block_failures=0), SpecError,
     "max_block_failures=0"),
    ("resilience: retries as text", lambda: Resilience(retries="2"), SpecError, "retries='2'"),
    ("fault: unknown mode", lambda: RankFault(0, "abort"), SpecError, "abort"),
    ("fault: negative rank", lambda: RankFault(-2), SpecError, "-2"),
    ("app command: fail mode without rank", lambda: app_command("mpi4py", task="t0", out_dir=None,
                                                                 fail_mode="segv"), MpiAppError, "fail_rank"),
    ("app command: bad fail rank", lambda: app_command("mpi4py", task="t0", out_dir=None, fail_rank=1.5),
     MpiAppError, "1.5"),
    ("block shape: more nodes than the partition", lambda: BlockShape.build(_site(), 2, 3), SpecError,
     "3 block(s) of 2 nodes"),
    ("htex config: unknown MPI launcher", lambda: htex_mpi_config(_site(), mpi_launcher="mpich"), ValueError,
     "mpich"),
    ("run_tasks: fault rank beyond the spec", lambda: run_tasks("htex", _site(), [MPITaskSpec(1, 2)],
                                                                fault=RankFault(2)), SpecError, "--fail-rank 2"),
    ("run_tasks: resume without workdir", lambda: run_tasks("htex", _site(), [MPITaskSpec(1, 1)], resume=True),
     SpecError, "workdir"),
]


@pytest.mark.parametrize("case, call, error, named", API_CASES, ids=[c[0] for c in API_CASES])
def test_bad_api_input_raises_before_anything_runs(case, call, error, named):
    with pytest.raises(error) as info:
        call()
    assert named in str(info.value)
    assert isinstance(info.value, ValueError), "bad input must be a ValueError subclass"
