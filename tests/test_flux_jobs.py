"""The flux-jobs launch path: fluxmpi submits each MPI task as a Flux job whose command is the MPI app itself.

Everything that needs no broker (translation to jobspecs, commands, config, errors) runs always; runs on the
local cluster need it and flux-core (marks cluster, flux) and are skipped with the reason otherwise.
"""

import functools
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import parsl
import pytest

from fluxmpi import placement, slurm
from fluxmpi.apps import MPITaskFailed, run_mpi_task
from fluxmpi.launch.flux.block import block_command, job_environment
from fluxmpi.launch.flux.install import FluxInstall, FluxSetupError
from fluxmpi.launch.flux.jobs import (
    FluxJobsBlockError,
    FluxJobsExecutor,
    _Block,
    flux_jobs_config,
)
from fluxmpi.launch.flux.jobspec import (
    LAUNCHER,
    FluxJobsError,
    JobEnd,
    check_fits,
    jobspec,
    mpi_request,
    python_request,
    resource_spec,
    spec_from_resources,
    task_failure,
    task_result,
)
from fluxmpi.launch.paths import get_path
from fluxmpi.rankfault import RankFault
from fluxmpi.runner import _cleanup_parsl, run_tasks
from fluxmpi.site import Site
from fluxmpi.spec import MPITaskSpec, SpecError

SPEC = MPITaskSpec(nodes=2, ranks_per_node=2, cores_per_rank=1, walltime=90)
SITE = Site(name="test", partition="debug", nodes=4, cores_per_node=2)
INSTALL = FluxInstall(flux="/usr/local/bin/flux", version="0.88.0")   # given, so config tests need no flux


def _call(spec=SPEC, launcher=LAUNCHER, argv=("/bin/app", "--x"), task="t7", timeout=60.0, **kw):
    """What Parsl hands an executor for run_app(spec.to_dict(), launcher, argv, task, timeout, **kw)."""
    return (spec.to_dict(), launcher, list(argv), task, timeout), kw


# --- resource specifications ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [SPEC, MPITaskSpec(nodes=3, ranks_per_node=1, exclusive=False),
                                  MPITaskSpec(nodes=1, ranks_per_node=2, cores_per_rank=1, gpus_per_rank=2)])
def test_resource_spec_round_trips_to_the_same_task_shape(spec):
    rs = resource_spec(spec)
    assert set(rs) == {"num_nodes", "num_tasks", "cores_per_task", "gpus_per_task", "exclusive"}
    back = spec_from_resources(rs)
    assert (back.nodes, back.ranks_per_node, back.cores_per_rank, back.gpus_per_rank, back.exclusive) == \
        (spec.nodes, spec.ranks_per_node, spec.cores_per_rank, spec.gpus_per_rank, spec.exclusive)


def test_an_empty_resource_spec_is_one_shared_rank():
    spec = spec_from_resources({})
    assert (spec.nodes, spec.ranks, spec.exclusive) == (1, 1, False)


def test_unknown_resource_keys_are_refused_not_ignored():
    with pytest.raises(FluxJobsError, match=r"\['num_ranks'\].*use only"):
        spec_from_resources({"num_nodes": 2, "num_ranks": 4})


def test_tasks_that_do_not_split_over_the_nodes_are_refused():
    with pytest.raises(FluxJobsError, match="ranks=3 does not split evenly over nodes=2"):
        spec_from_resources({"num_nodes": 2, "num_tasks": 3})


# --- what a call becomes --------------------------------------------------------------------------------

def test_an_mpi_task_runs_the_app_itself_with_the_tightest_time_limit(tmp_path):
    args, kw = _call(timeout=60.0)
    req = mpi_request(run_mpi_task, resource_spec(SPEC), args, kw, tmp_path)
    assert req.command == ["/bin/app", "--x"] and req.app_argv == ["/bin/app", "--x"]
    assert req.kind == "mpi" and req.task == "t7"
    assert req.duration == 60.0                       # timeout 60 beats the spec's walltime 90
    assert (req.stdout, req.stderr) == (str(tmp_path / "t7.out"), str(tmp_path / "t7.err"))
    args, kw = _call(timeout=None)
    assert mpi_request(run_mpi_task, None, args, kw, tmp_path).duration == 90.0


def test_the_call_is_recognised_through_parsls_wrapper(tmp_path):
    @functools.wraps(run_mpi_task)
    def wrapped(*a, **k):   # Parsl's wrap_error does the same: functools.wraps keeps __wrapped__
        return run_mpi_task(*a, **k)
    args, kw = _call()
    assert mpi_request(wrapped, {}, args, kw, tmp_path) is not None
    assert mpi_request(print, {}, ("x",), {}, tmp_path) is None      # any other function: not an MPI task


def test_another_launcher_is_refused_with_the_path_to_use(tmp_path):
    args, kw = _call(launcher="srun")
    with pytest.raises(FluxJobsError, match="launcher 'srun' cannot run on the flux-jobs executor"):
        mpi_request(run_mpi_task, {}, args, kw, tmp_path)


def test_a_resource_spec_that_disagrees_with_the_task_spec_is_refused(tmp_path):
    args, kw = _call()
    other = resource_spec(MPITaskSpec(nodes=1, ranks_per_node=4))
    with pytest.raises(FluxJobsError, match="task t7: resource_specification"):
        mpi_request(run_mpi_task, other, args, kw, tmp_path)


def test_task_set_up_lines_are_sourced_by_a_shell_that_then_execs_the_app(tmp_path):
    args, kw = _call(argv=[sys.executable, "-c", "import os; print(os.environ['FXJ_MARK'])"],
                     init="export FXJ_MARK=from-init")
    req = mpi_request(run_mpi_task, None, args, kw, tmp_path)
    assert req.command[:2] == ["bash", "-c"]
    out = subprocess.run(req.command, capture_output=True, text=True, timeout=30)   # run it for real
    assert out.returncode == 0 and out.stdout.strip() == "from-init"


def test_a_task_too_large_for_the_instance_is_refused(tmp_path):
    args, kw = _call(spec=MPITaskSpec(nodes=5, ranks_per_node=1))
    req = mpi_request(run_mpi_task, None, args, kw, tmp_path)
    with pytest.raises(SpecError, match="needs 5 nodes but the Flux instance has 4"):
        check_fits(req, 4, 2)


@pytest.mark.flux_bindings
def test_the_jobspec_has_the_shape_limits_environment_and_labelled_output_files(tmp_path):
    import flux.job as flux_job
    args, kw = _call(spec=MPITaskSpec(nodes=2, ranks_per_node=2, exclusive=True))
    req = mpi_request(run_mpi_task, None, args, kw, tmp_path)
    js = jobspec(req, {"PATH": "/usr/bin", "FXJ": "1"}, str(tmp_path))
    node = js["resources"][0]
    assert (node["type"], node["count"], node.get("exclusive")) == ("node", 2, True)
    assert node["with"][0]["count"] == 2 and node["with"][0]["with"] == [{"type": "core", "count": 1}]
    assert js["tasks"][0]["command"] == ["/bin/app", "--x"]
    system = js["attributes"]["system"]
    assert system["duration"] == 60.0 and system["cwd"] == str(tmp_path)
    assert system["environment"] == {"PATH": "/usr/bin", "FXJ": "1"}
    output = system["shell"]["options"]["output"]
    assert output["stderr"] == {"type": "file", "path": req.stderr, "label": True}
    assert output["stdout"]["path"] == req.stdout
    assert system["shell"]["options"]["exit-on-error"] == 1
    flux_job.JobspecV1(**js)          # Flux's own jobspec class accepts it (it validates on construction)


def test_a_python_call_runs_under_the_given_python_with_its_files(tmp_path):
    req = python_request("parsl-3", {"num_nodes": 1, "num_tasks": 1}, "/opt/py/bin/python3", tmp_path)
    assert req.command == ["/opt/py/bin/python3", "-m", "fluxmpi.launch.flux.pyjob", req.call_file, req.result_file]
    assert req.kind == "python" and req.spec.ranks == 1


def test_flux_pyjob_runs_a_packed_call_and_writes_its_result(tmp_path):
    from parsl.serialize import deserialize, pack_apply_message
    call, result = tmp_path / "c", tmp_path / "r"
    call.write_bytes(pack_apply_message(divmod, (17, 5), {}))
    proc = subprocess.run([sys.executable, "-m", "fluxmpi.launch.flux.pyjob", str(call), str(result)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(
                              Path(__file__).resolve().parent.parent)})
    assert proc.returncode == 0, proc.stderr
    assert deserialize(result.read_bytes()) == (3, 2)


# --- what a finished job becomes --------------------------------------------------------------------------

def _req(tmp_path, spec=SPEC):
    args, kw = _call(spec=spec)
    return mpi_request(run_mpi_task, None, args, kw, tmp_path)


def test_a_good_job_gives_the_result_the_runner_and_bench_read(tmp_path):
    req = _req(tmp_path)
    Path(req.stdout).write_text("0: hello\n1: hello\n")
    end = JobEnd(jobid="f1", status=0, times={"start": 10.0, "finish": 11.0, "clean": 11.2}, nodes=["n1", "n2"])
    r = task_result(req, end, "/env.sh")
    assert (r["task"], r["t_launch"], r["t_done"], r["nodes"], r["ranks"]) == ("t7", 10.0, 11.0, ["n1", "n2"], 4)
    assert r["argv"] == ["/bin/app", "--x"] and r["stdout_tail"].endswith("1: hello") and r["env_file"] == "/env.sh"


def test_a_failed_rank_is_named_with_its_host_and_stderr(tmp_path):
    req = _req(tmp_path)
    Path(req.stderr).write_text("0: starting\n3: mpi_hello: rank 3 on n2 fails on purpose\n")
    err = task_failure(req, JobEnd(jobid="fA", status=7 << 8, nodes=["n1", "n2"]))
    assert isinstance(err, MPITaskFailed) and err.task == "t7"
    text = str(err)
    assert "task t7: flux job fA failed on n1,n2: a rank exited with code 7" in text
    assert ("3", "n2", "mpi_hello: rank 3 on n2 fails on purpose") in err.failures
    assert "fails on purpose" in err.stderr_tail


def test_signals_timeouts_and_lost_connections_are_told_apart(tmp_path):
    req = _req(tmp_path)
    assert "killed by signal 11" in str(task_failure(req, JobEnd(jobid="f", status=11, nodes=["n1"])))
    timeout = task_failure(req, JobEnd(jobid="f", exception=("timeout", "resource allocation expired")))
    assert "did not finish within 60s" in str(timeout)
    lost = task_failure(req, JobEnd(error="the connection failed before the job ended (ssh://n1/x)"))
    assert "its flux job: the connection failed" in str(lost)


# --- the block --------------------------------------------------------------------------------------------

def test_the_block_starts_one_broker_per_node_with_the_publisher_as_initial_program():
    cmd = block_command("/run/block-0/instance.json", "/usr/local/bin/flux", 3, 2, 600, python="/py",
                        link_timeout=30)
    words = cmd.split()
    # The brokers start as on the flux path: whole nodes, and the block survives losing one (--no-kill).
    assert words[:8] == ["srun", "--mpi=pmi2", "--nodes=3", "--ntasks=3", "--ntasks-per-node=1",
                         "--cpus-per-task=2", "--cpu-bind=none", "--no-kill"]
    assert words[8:] == ["/usr/local/bin/flux", "start", "-Stbon.tcp_user_timeout=30s", "/py", "-m",
                         "fluxmpi.launch.flux.block", "/run/block-0/instance.json", "/usr/local/bin/flux", "600"]
    assert "-Stbon" not in block_command("/i.json", "flux", 3, 2, 600)


def test_a_block_with_gpus_tells_its_instance_the_nodes_gpus_and_each_rank_gets_its_own():
    cmd = block_command("/run/block-0/instance.json", "flux", 2, 2, 600, gpus_per_node=4)
    write, start = cmd.split(" && ")
    # The nodes Slurm gave the block, with their cores and GPUs: Flux's hwloc discovery finds no GPU here.
    assert '"$SLURM_JOB_NODELIST" > /run/block-0/resource.toml' in write
    assert 'noverify = true' in write and 'cores = \\"0-1\\"' not in write and 'cores = "0-1"' in write
    assert 'gpus = "0-3"' in write
    assert " flux start -c /run/block-0/resource.toml " in start
    assert " && " not in block_command("/i.json", "flux", 2, 2, 600)       # no GPUs: as before
    from fluxmpi.launchers.flux import gpu_affinity
    # An exclusive job holds all of a node's GPUs: each local rank is mapped to its own; a shared job got just
    # its own, which per-task divides.
    assert gpu_affinity(MPITaskSpec(nodes=2, ranks_per_node=2, gpus_per_rank=1)) == "map:0;1"
    assert gpu_affinity(MPITaskSpec(nodes=1, ranks_per_node=2, gpus_per_rank=2)) == "map:0-1;2-3"
    assert gpu_affinity(MPITaskSpec(nodes=1, ranks_per_node=2, gpus_per_rank=1, exclusive=False)) == "per-task"
    args, kw = _call(spec=MPITaskSpec(nodes=1, ranks_per_node=2, gpus_per_rank=1))
    js = jobspec(mpi_request(run_mpi_task, None, args, kw, "/out"), {}, "/w")
    assert js["attributes"]["system"]["shell"]["options"]["gpu-affinity"] == "map:0;1"
    args, kw = _call(spec=MPITaskSpec(nodes=1, ranks_per_node=2))
    assert "gpu-affinity" not in jobspec(mpi_request(run_mpi_task, None, args, kw, "/out"), {}, "/w")[
        "attributes"]["system"]["shell"]["options"]


def test_jobs_get_the_blocks_environment_without_the_brokers_own_variables():
    env = job_environment({"PATH": "/p", "OMPI_MCA_btl": "tcp", "FLUX_URI": "local:///x", "SLURM_JOB_ID": "3",
                           "PMI_FD": "4", "FLUXMPI_ENV_FILE": "/e", "SHLVL": "2"})
    assert env == {"PATH": "/p", "OMPI_MCA_btl": "tcp", "FLUXMPI_ENV_FILE": "/e"}


def test_the_block_program_refuses_to_run_outside_flux(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FLUX_URI"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-m", "fluxmpi.launch.flux.block", str(tmp_path / "i.json"), "flux", "60"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "FLUX_URI is unset" in proc.stderr
    assert not (tmp_path / "i.json").exists()


# --- config and executor ----------------------------------------------------------------------------------

def test_the_config_holds_one_executor_over_one_exclusive_block(tmp_path):
    config = flux_jobs_config(SITE, nodes_per_block=3, walltime="00:10:00", run_dir=str(tmp_path), install=INSTALL,
                              apply_env=False)
    (ex,) = config.executors
    assert isinstance(ex, FluxJobsExecutor) and ex.label == "flux_jobs"
    assert (ex.nodes_per_block, ex.cores_per_node, ex.walltime, ex.flux_path) == (3, 2, 600, INSTALL.flux)
    assert ex.provider.nodes_per_block == 3 and ex.provider.exclusive and ex.provider.max_blocks == 1
    assert ex.working_dir == str(tmp_path.resolve() / "flux_jobs")
    # Like the flux path's block, it survives a lost node and drops a broker whose link stays down.
    assert "#SBATCH --no-kill" in ex.provider.scheduler_options.splitlines()
    with_threshold = flux_jobs_config(SITE, nodes_per_block=3, run_dir=str(tmp_path), install=INSTALL,
                                      apply_env=False, link_timeout=45).executors[0]
    assert "-Stbon.tcp_user_timeout=45s" in with_threshold._get_launch_command("0")
    assert ex.admission == "largest-first"
    in_order = flux_jobs_config(SITE, run_dir=str(tmp_path), install=INSTALL, apply_env=False, admission="in-order")
    assert in_order.executors[0].admission == "in-order"
    with pytest.raises(SpecError, match="admission policy 'smallest' is not known"):
        flux_jobs_config(SITE, run_dir=str(tmp_path), install=INSTALL, apply_env=False, admission="smallest")


def test_admission_sends_mixed_sizes_as_the_node_gate_would_and_one_size_at_once(tmp_path):
    """Flux's first-come scheduler lets a queued job that does not fit hold back the smaller ones behind it, so
    node-holding tasks of mixed sizes go to the instance one by one, as fluxmpi's node gate picks them."""
    from fluxmpi.launch.flux.jobs import admit

    def req(nodes, exclusive=True, task="t"):
        args, kw = _call(spec=MPITaskSpec(nodes=nodes, ranks_per_node=1, exclusive=exclusive), task=task)
        return mpi_request(run_mpi_task, None, args, kw, tmp_path)
    def held(*reqs):      # what a block holds: node-holding jobs counted by size
        return Counter(r.spec.nodes for r in reqs)
    waiting = [req(1), req(3), req(2), req(4)]
    # 4 free nodes: the 4-node task alone (largest first), not the 1- and 3-node tasks ahead of it.
    assert admit(waiting, {}, 4) == [3]
    # A 2-node job holds two of the 4 nodes: the largest that fits the other two is the 2-node task.
    assert admit(waiting, held(req(2)), 4) == [2]
    assert admit(waiting, held(req(2)), 4, "in-order") == [0]          # the earliest that fits, then nothing else fits
    assert admit(waiting, held(req(3)), 3) == []                        # none fits beside it: they wait here
    # One size everywhere: Flux's own order is the gate's, so all go at once (no round trip per task).
    assert admit([req(2), req(2), req(2)], held(req(2), req(2)), 4) == [0, 1, 2]
    # Tasks that share their nodes, and the run's Python calls, go at once whatever the gate holds.
    py = python_request("parsl-1", {}, "python3", tmp_path)
    assert admit([req(4), req(1, exclusive=False), py, req(2)], held(req(3)), 4) == [1, 2]
    assert admit([req(1), req(4)], {}, 3) == [0]     # a task larger than the nodes usable is never sent


def test_a_flux_ssh_that_is_a_command_line_is_refused(tmp_path):
    site = Site(name="t", partition="debug", nodes=2, cores_per_node=2, ssh="ssh -p 2222")
    with pytest.raises(FluxSetupError, match="FLUX_SSH must name an executable"):
        flux_jobs_config(site, run_dir=str(tmp_path), install=INSTALL, apply_env=False)


def test_the_path_is_registered():
    lp = get_path("flux-jobs")
    assert lp.launcher == LAUNCHER and lp.replaces_blocks is True     # a block that ends is replaced
    assert lp.resources(SPEC, SITE) == resource_spec(SPEC)


@pytest.mark.flux     # the path's check looks for a working flux first
def test_the_path_refuses_a_too_large_task_before_anything_runs():
    with pytest.raises(SpecError, match="task 1 .*needs 5 nodes but the block has 4"):
        get_path("flux-jobs").check(SITE, [SPEC, MPITaskSpec(nodes=5, ranks_per_node=1)])


def test_waiting_for_the_instance_is_bounded_and_names_the_block(tmp_path):
    ex = FluxJobsExecutor(None, working_dir=str(tmp_path), uri_timeout=0.5)
    t = time.monotonic()
    with pytest.raises(FluxJobsBlockError, match=r"Slurm job 4242 did not publish its URI in .* within 0s"):
        ex._wait_for_instance(str(tmp_path / "instance.json"), "4242")
    assert time.monotonic() - t < 5


def test_the_instance_is_read_once_the_block_publishes_it(tmp_path):
    info = tmp_path / "instance.json"
    ex = FluxJobsExecutor(None, working_dir=str(tmp_path), uri_timeout=10)
    threading.Timer(0.3, lambda: info.write_text(json.dumps({"uri": "ssh://n1/tmp/x"}))).start()
    assert ex._wait_for_instance(str(info), "1")["uri"] == "ssh://n1/tmp/x"


def test_refused_calls_fail_their_future_and_fail_all_leaves_finished_tasks_alone(tmp_path):
    ex = FluxJobsExecutor(None, working_dir=str(tmp_path), nodes_per_block=2, cores_per_node=2)
    args, kw = _call(launcher="srun")
    refused = ex.submit(run_mpi_task, {}, *args, **kw)
    assert isinstance(refused.exception(timeout=1), FluxJobsError)
    args, kw = _call(spec=MPITaskSpec(nodes=3, ranks_per_node=1))
    assert "needs 3 nodes but the Flux instance has 2" in str(ex.submit(run_mpi_task, {}, *args, **kw).exception(1))
    args, kw = _call()
    waiting = ex.submit(run_mpi_task, {}, *args, **kw)      # fits: waits for the instance (none here)
    assert not waiting.done() and ex.outstanding == 1
    ex.set_bad_state_and_fail_all(FluxJobsBlockError("block gone"))   # Parsl's fail-all: every task it was given
    assert "block gone" in str(waiting.exception(timeout=1))
    assert isinstance(refused.exception(), FluxJobsError)            # a finished task keeps its own outcome
    with pytest.raises(FluxJobsBlockError, match="block gone"):
        ex.submit(run_mpi_task, {}, *args, **kw)


def test_a_task_longer_than_any_block_is_refused_at_submit_and_shorter_ones_wait(tmp_path):
    ex = FluxJobsExecutor(None, working_dir=str(tmp_path), nodes_per_block=2, cores_per_node=2, walltime=40)
    assert ex.usable_walltime == 30            # the instance shuts down 10 s before the block's walltime
    args, kw = _call(spec=MPITaskSpec(nodes=2, ranks_per_node=2, walltime=60))
    refused = ex.submit(run_mpi_task, {}, *args, **kw).exception(timeout=1)
    assert isinstance(refused, FluxJobsError), refused
    assert "task t7 has a walltime of 60s but a block's Flux instance runs jobs for at most 30s" in str(refused)
    assert "at least 72s" in str(refused)      # the walltime that would hold it
    # 28 s + 2 s to start: exactly what a fresh block holds. A timeout alone (fluxmpi's default kill limit) is no
    # declared walltime: it is not held against the block.
    for spec, timeout in ((MPITaskSpec(nodes=2, ranks_per_node=2, walltime=28), None),
                          (MPITaskSpec(nodes=2, ranks_per_node=2), 600.0)):
        args, kw = _call(spec=spec, timeout=timeout)
        assert not ex.submit(run_mpi_task, {}, *args, **kw).done()


def test_a_block_takes_a_task_only_while_its_walltime_fits_the_time_left(tmp_path):
    args, kw = _call(spec=MPITaskSpec(nodes=2, ranks_per_node=2, walltime=10), timeout=60.0)
    req = mpi_request(run_mpi_task, None, args, kw, tmp_path)
    untimed = mpi_request(run_mpi_task, None, *_call(spec=MPITaskSpec(nodes=2, ranks_per_node=2), timeout=60.0),
                          tmp_path)
    block = _Block("0", nodes=2, ends=time.time() + 30)
    assert block.fits_time(req) and block.fits_time(untimed)
    block.ends = time.time() + 11.0           # 10 s and the 2 s it may take to start do not fit in 11 s
    assert not block.fits_time(req) and block.fits_time(untimed)
    assert _Block("1", nodes=2).fits_time(req)     # an instance that did not say when it ends: no limit known


# --- elastic blocks (max_blocks, min_blocks, idle_release), without a cluster ----------------------------

class _Connected:
    """Stands in for a block's InstanceClient: the dispatch only asks whether one is there."""
    lost = None

    def close(self):
        pass


def _elastic_executor(tmp_path, **kw):
    ex = FluxJobsExecutor(None, working_dir=str(tmp_path), nodes_per_block=2, cores_per_node=2, **kw)
    ex.sent, ex.asked = [], []
    ex._send = lambda b, req, fut: ex.sent.append((b.block_id, req.task))
    ex._new_block = lambda why: ex.asked.append(why)
    ex.blocks_to_job_id = {"0": "100"}          # the executor has started a block (Parsl's own record)
    return ex


def _block(block_id, connected=True, nodes=2, idle_for=0.0):
    b = _Block(block_id, nodes=nodes, job_id=str(100 + int(block_id)))
    b.client = _Connected() if connected else None
    b.last_busy = time.time() - idle_for
    return b


def _wait_for(ex, tmp_path, n, nodes=1):
    from concurrent.futures import Future
    for i in range(n):
        args, kw = _call(spec=MPITaskSpec(nodes=nodes, ranks_per_node=1), task=f"w{i}")
        fut = Future()
        fut.parsl_executor_task_id = i
        ex._waiting.append((mpi_request(run_mpi_task, None, args, kw, tmp_path), fut))


def test_bad_elastic_settings_name_the_value_and_the_fix(tmp_path):
    from fluxmpi.launch.scaling import Scaling
    for kw, fragment in (({"max_blocks": 0}, "max_blocks=0 must be a whole number of at least 1"),
                         ({"min_blocks": -1}, "min_blocks=-1 must be a whole number of at least 0"),
                         ({"max_blocks": 2, "min_blocks": 3}, "min_blocks=3 exceeds max_blocks=2"),
                         ({"idle_release": 0}, "idle_release=0 must be positive seconds"),
                         ({"idle_release": "5m"}, "idle_release='5m' must be positive seconds")):
        with pytest.raises(SpecError, match=fragment):
            flux_jobs_config(SITE, run_dir=str(tmp_path), install=INSTALL, apply_env=False, **kw)
    with pytest.raises(SpecError, match="apply to the flux-jobs path, not htex.*use --path flux-jobs"):
        Scaling(max_blocks=3).check_path("htex")
    Scaling().check_path("htex")          # the default asks for nothing elastic: every path takes it
    ex = flux_jobs_config(SITE, run_dir=str(tmp_path), install=INSTALL, apply_env=False, max_blocks=3,
                          min_blocks=1, idle_release=30).executors[0]
    assert (ex.max_blocks, ex.min_blocks, ex.idle_release, ex.provider.max_blocks) == (3, 1, 30, 3)


def test_a_block_counts_the_node_holding_jobs_it_was_sent_by_size(tmp_path):
    from concurrent.futures import Future

    b = _block("0", nodes=4)
    reqs = [mpi_request(run_mpi_task, None, *_call(spec=MPITaskSpec(nodes=n, ranks_per_node=1, exclusive=ex),
                                                   task=f"s{i}"), tmp_path)
            for i, (n, ex) in enumerate([(1, True), (2, True), (2, True), (3, False)])]
    py = python_request("parsl-1", {}, "python3", tmp_path)
    futs = [Future() for _ in range(5)]
    for req, fut in zip([*reqs, py], futs):
        b.send(req, fut)
    assert b.held == {1: 1, 2: 2} and b.held_nodes() == 5        # the shared-node task and the Python call hold none
    b.unsend(futs[1])
    b.unsend(futs[0])
    b.unsend(futs[0])                                             # a second end of the same job changes nothing
    assert b.held == {2: 1} and b.held_nodes() == 2 and len(b.sent) == 3


def test_with_several_blocks_each_gets_two_waves_and_the_rest_bring_another_block(tmp_path):
    from fluxmpi.launch.flux.jobs import QUEUE_DEPTH, admit
    waiting = [mpi_request(run_mpi_task, None, *_call(spec=MPITaskSpec(nodes=1, ranks_per_node=1), task=f"w{i}"),
                           tmp_path) for i in range(7)]
    assert admit(waiting, {}, 2) == list(range(7))                  # one block: all of one size go at once
    assert admit(waiting, {}, 2, depth=QUEUE_DEPTH) == [0, 1, 2, 3]   # several: twice its nodes
    assert admit(waiting, {1: 3}, 2, depth=QUEUE_DEPTH) == [0]

    ex = _elastic_executor(tmp_path, max_blocks=2)
    ex._blocks = [_block("0")]
    _wait_for(ex, tmp_path, 7)
    ex._dispatch()
    assert ex.sent == [("0", f"w{i}") for i in range(4)] and len(ex._waiting) == 3
    assert ex.asked == ["3 task(s) wait that the running blocks cannot start"]
    # While that block starts, no third is asked for (it will take the 3); once connected it takes them.
    ex._new_block = lambda why: ex.asked.append(why) if len(ex._blocks) < ex.max_blocks else None
    ex._blocks.append(_block("1", connected=False))
    ex._dispatch()
    assert len(ex.asked) == 1
    ex._blocks[1].client = _Connected()
    ex._dispatch()
    assert ex.sent[4:] == [("1", "w4"), ("1", "w5"), ("1", "w6")] and ex._waiting == []

    # A burst larger than one more block holds asks for as many as it needs at once, up to max_blocks.
    wide = _elastic_executor(tmp_path, max_blocks=4)
    wide._blocks = [_block("0")]
    _wait_for(wide, tmp_path, 13)
    wide._dispatch()
    assert len(wide.sent) == 4 and len(wide.asked) == 3      # 9 waiting: 4 + 4 + 1 in three new blocks
    wide.asked.clear()
    wide._blocks += [_block("1", connected=False), _block("2", connected=False)]   # two are starting: 8 of 9
    wide._dispatch()
    assert wide.asked == ["9 task(s) wait that the running blocks cannot start"]

    one = _elastic_executor(tmp_path)      # max_blocks 1 (the default): one block takes everything, asks none
    one._blocks = [_block("0")]
    _wait_for(one, tmp_path, 7)
    one._dispatch()
    assert len(one.sent) == 7 and one.asked == []


def test_an_idle_block_is_given_back_down_to_min_blocks_and_not_while_a_task_could_use_it(tmp_path):
    ex = _elastic_executor(tmp_path, max_blocks=3, min_blocks=1, idle_release=5)
    ex._cancel_quietly = lambda job_id: None
    busy, fresh = _block("0", idle_for=60), _block("1", idle_for=1)
    busy.sent[1] = (None, None)                        # a job runs in it: not idle however long ago it began
    idle_a, idle_b = _block("2", idle_for=60), _block("3", idle_for=60)
    idle_b.ends = time.time() + 100                    # less time left than idle_a: given back first
    ex._blocks = [busy, fresh, idle_a, idle_b]
    ex.min_blocks = 3
    ex._give_back_idle()
    assert [b.block_id for b in ex._blocks] == ["0", "1", "2"]        # min_blocks 3 of 4: one goes
    assert idle_b.released and "ran nothing for 60s (idle_release 5s): given back" in idle_b.ended
    assert ex.asked == []                    # given back, not replaced; and not counted as a failed block
    assert ex._failed_in_a_row == 0
    # A waiting task that fits it keeps an idle block (it is about to be busy).
    ex.min_blocks = 0
    _wait_for(ex, tmp_path, 1, nodes=2)
    ex._give_back_idle()
    assert [b.block_id for b in ex._blocks] == ["0", "1", "2"]
    ex._waiting.clear()
    starting = _block("4", connected=False, idle_for=30)   # asked for a burst that is over: cancelled unstarted
    ex._blocks.append(starting)
    ex._give_back_idle()
    assert [b.block_id for b in ex._blocks] == ["0", "1"]
    assert "was still starting with nothing to run" in starting.ended
    spans = {s["block"]: s for s in ex.block_spans()}
    assert spans["3"]["released"] and spans["3"]["ended"] is not None and spans["0"]["ended"] is None


def test_an_extra_block_may_queue_while_another_runs_and_is_bounded_once_alone(tmp_path):
    ex = FluxJobsExecutor(None, working_dir=str(tmp_path), uri_timeout=0.5, max_blocks=2)
    running, extra = _block("0"), _block("1", connected=False)
    ex._blocks = [running, extra]
    threading.Timer(1.5, lambda: setattr(running, "ended", "walltime")).start()
    t = time.monotonic()
    with pytest.raises(FluxJobsBlockError, match="did not publish its URI"):
        ex._wait_for_instance(str(tmp_path / "instance.json"), "101", until_ended=extra)
    assert 1.5 <= time.monotonic() - t < 6     # waited past uri_timeout while block 0 ran, then 0.5 s more


def test_node_seconds_paid_against_used():
    from fluxmpi.usage import Usage, paid_node_seconds, task_node_seconds
    spans = {"1": {"start": 100.0, "end": 160.0, "nodes": 2}, "2": {"start": 130.0, "end": None, "nodes": 1},
             "3": {"start": None, "end": None, "nodes": 4}}     # 3 never ran: costs nothing
    assert paid_node_seconds(spans, now=170.0) == 2 * 60 + 40
    used = task_node_seconds([(2, 100.0, 130.0), (1, 135.0, 165.0)])
    assert used == 90
    u = Usage(paid=160, used=used, blocks=spans, unaccounted=("4",))
    assert u.idle == 70 and abs(u.idle_fraction - 70 / 160) < 1e-9
    assert u.render() == ("node-seconds: paid 160 in 2 block(s), used by tasks 90, idle 70 (44%); not counted "
                          "(no longer listed): 4")
    assert Usage.from_json(u.to_json()) == u


# --- on the local cluster ---------------------------------------------------------------------------------

def _summary(result) -> str:
    return "\n".join([result.placement_report] + [f"{t.task}: {t.error}" for t in result.failed])


@pytest.mark.cluster
@pytest.mark.flux
def test_four_concurrent_two_node_tasks_run_as_flux_jobs_where_flux_put_them(site, tmp_path):
    specs = [MPITaskSpec(nodes=2, ranks_per_node=2)] * 4
    result = run_tasks("flux-jobs", site, specs, app="c", workdir=tmp_path, sleep=2.0, nodes_per_block=4,
                       run_timeout=600)
    assert result.ok, _summary(result)
    placements = placement.read_records(tmp_path / "records").placements()
    for t in result.tasks:
        p = placements[t.task]
        assert sorted(p.nodes) == sorted(t.result["nodes"]), \
            f"{t.task}: Flux gave {t.result['nodes']}, its ranks ran on {p.nodes}"
        assert len(p.nodes) == 2 and t.result["flux_job_id"]
        assert t.result["t_launch"] <= p.start and p.end <= t.result["t_done"]   # Flux's stamps bracket the ranks
        assert t.result["argv"][0].endswith("mpi_hello")                          # the app itself, no Python
    ordered = sorted(placements.values(), key=lambda p: p.start)
    overlapping = [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1:] if b.start < a.end]
    assert overlapping, "no two tasks ran at the same time: Flux did not run them concurrently"
    for a, b in overlapping:       # exclusive 2-rank tasks fill 2-core nodes: concurrent ones must not share
        assert not set(a.nodes) & set(b.nodes), f"{a.task} and {b.task} shared nodes while running"
    assert len(result.blocks) == 1, f"one block expected, the run had {result.blocks}"
    assert not [j for j in slurm.jobs(env=site.env) if j.job_id in result.blocks and j.state in slurm.ACTIVE_STATES], \
        "the run left its block running"


@pytest.mark.cluster
@pytest.mark.flux
def test_mixed_sizes_start_in_the_node_gates_order_not_flux_first_come(site, tmp_path):
    """4, 1, 3, 2, 4 nodes on 4 nodes: while the first holds every node the others wait. Flux's first-come order
    would then start the 1- and 3-node tasks, and the second 4-node one only after the 2-node one; the gate
    starts the largest first, then 3 + 1 side by side, then 2."""
    specs = [MPITaskSpec(nodes=n, ranks_per_node=1) for n in (4, 1, 3, 2, 4)]
    result = run_tasks("flux-jobs", site, specs, app="c", workdir=tmp_path, sleep=1.0, nodes_per_block=4,
                       run_timeout=600)
    assert result.ok, _summary(result)
    p = placement.read_records(tmp_path / "records").placements()
    start, end = {t: p[t].start for t in p}, {t: p[t].end for t in p}
    assert start["t4"] > end["t0"] and start["t4"] < min(start["t1"], start["t2"], start["t3"]), start
    assert start["t2"] < end["t1"] and start["t1"] < end["t2"], "the 3- and 1-node tasks did not run side by side"
    assert start["t3"] >= min(end["t1"], end["t2"]), start


@pytest.mark.cluster
@pytest.mark.flux
def test_a_failing_rank_fails_its_task_naming_rank_host_and_stderr(site, tmp_path):
    specs = [MPITaskSpec(nodes=2, ranks_per_node=2)] * 2
    result = run_tasks("flux-jobs", site, specs, app="c", workdir=tmp_path, nodes_per_block=4, run_timeout=600,
                       fault=RankFault(rank=3, tasks=("t1",)))
    by_task = {t.task: t for t in result.tasks}
    assert by_task["t0"].ok, by_task["t0"].error
    t1 = by_task["t1"]
    error = t1.error or ""
    assert not t1.ok and "task t1: flux job" in error, error
    node = site.name.split(":")[-1] + "n"          # the local cluster's nodes are <name>n1..
    assert f"rank 3 on {node}" in error, error
    assert "fails on purpose" in error, error
    # The job ends at the failure (exit-on-error), not after the other ranks hang for Flux's 30 s exit-timeout.
    assert t1.returned - t1.admitted < 20, f"the failure took {t1.returned - t1.admitted:.1f}s to come back"
    assert not [j for j in slurm.jobs(env=site.env) if j.job_id in result.blocks and j.state in slurm.ACTIVE_STATES], \
        "the run left its block running"


@pytest.mark.cluster
@pytest.mark.flux
def test_a_task_too_large_for_the_block_is_refused_before_submission(site, tmp_path):
    before = {j.job_id for j in slurm.jobs(env=site.env)}
    with pytest.raises(SpecError, match="needs 3 nodes but the block has 2"):
        run_tasks("flux-jobs", site, [MPITaskSpec(nodes=3, ranks_per_node=1)], workdir=tmp_path, nodes_per_block=2)
    # No new job (earlier tests' jobs may age out of slurmctld meanwhile, so not equality).
    assert not {j.job_id for j in slurm.jobs(env=site.env)} - before, "a Slurm job was submitted for a refused task"
    # The executor refuses it too, without a Flux job, if called directly with a task the block cannot hold.
    site.apply_env()
    dfk = parsl.load(flux_jobs_config(site, nodes_per_block=2, walltime=300, run_dir=str(tmp_path / "runinfo")))
    try:
        app = parsl.python_app(run_mpi_task, executors=["flux_jobs"])
        big = MPITaskSpec(nodes=1, ranks_per_node=3)            # 3 ranks on 2-core nodes
        fut = app(big.to_dict(), LAUNCHER, ["/bin/true"], "big", 60, parsl_resource_specification=resource_spec(big))
        with pytest.raises(SpecError, match="needs 3 ranks x 1 cores = 3 cores per node but a Flux instance node"):
            fut.result(timeout=60)
        assert not list((tmp_path / "runinfo" / "flux_jobs" / "tasks").glob("big.*")), "it reached Flux"
    finally:
        _cleanup_parsl(dfk)


@pytest.mark.cluster
@pytest.mark.flux
def test_a_task_over_its_time_limit_is_killed_by_flux_and_says_so(site, tmp_path):
    result = run_tasks("flux-jobs", site, [MPITaskSpec(nodes=2, ranks_per_node=1)], app="c", workdir=tmp_path,
                       sleep=60, task_timeout=3, nodes_per_block=2, run_timeout=300)
    (t0,) = result.tasks
    assert not t0.ok and "did not finish within 3s" in (t0.error or ""), t0.error
    assert t0.returned - t0.admitted < 30, "the limit was not enforced by the job's duration"
