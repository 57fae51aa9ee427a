"""The Flux launch path without a broker: install discovery and its errors, resources, launch command,
address choice, the config, the path entry, and the per-rank task body. Runs with or without flux-core.

Where flux-core would be needed and may be absent, a MOCK `flux` command (a shell script printing what
`flux version` prints) stands in; tests that need the real bindings skip with the reason when they are absent.
"""

import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
from flux_local import flux_local_config, local_launch_cmd
from parsl.executors import FluxExecutor
from parsl.providers import SlurmProvider

from fluxmpi.apps import (
    MPITaskFailed,
    TaskInitFailed,
    run_flux_rank,
    run_mpi_task,
    task_environment,
)
from fluxmpi.launch.flux import install as flux_install
from fluxmpi.launch.flux.executor import (
    FLUX_EXECUTOR_KEYS,
    broker_launch_cmd,
    callback_address,
    check_exclusive_fits,
    flux_client_env,
    flux_config,
    flux_resource_spec,
    task_init,
)
from fluxmpi.launch.flux.install import (
    FluxInstall,
    FluxSetupError,
    check_versions,
    find_flux,
    flux_command_version,
    parse_flux_version,
    release,
)
from fluxmpi.launch.paths import PATHS, Plan
from fluxmpi.launch.resilience import Resilience
from fluxmpi.site import Site
from fluxmpi.spec import MPITaskSpec, SpecError

# What flux-core 0.88.0 prints for `flux version` (seen on this machine).
FLUX_VERSION_OUTPUT = ("commands:    \t\t0.88.0\nlibflux-core:\t\t0.88.0\n"
                       "build-options:\t\t+hwloc.api==2.8.0+zmq==4.3.4\n")
INSTALL = FluxInstall(flux="/opt/flux/bin/flux", version="0.88.0", library_version="0.88.0",
                      bindings_version="0.88.0")


def mock_flux(directory: Path, output: str = FLUX_VERSION_OUTPUT, code: int = 0) -> Path:
    """MOCK flux command: answers `flux version` only (flux-core may not be installed where this runs)."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (directory / "version.txt").write_text(output)
    script = bin_dir / "flux"
    script.write_text(f"#!/bin/sh\n# MOCK flux\ncat {directory / 'version.txt'}\nexit {code}\n")
    script.chmod(0o755)
    return script


def never_started(executor: FluxExecutor) -> FluxExecutor:
    """Parsl's FluxExecutor joins its submission thread at exit even if it never started (a RuntimeError at
    interpreter exit); detach that finalizer for executors a test builds but never loads."""
    for fin in list(weakref.finalize._registry):  # noqa: SLF001 - the only handle on Parsl's finalizer
        info = fin.peek()
        if info and info[0] is executor:
            fin.detach()
    return executor


def site(**kw) -> Site:
    base = dict(name="test", partition="debug", nodes=4, cores_per_node=2, address="10.77.9.1")
    return Site(**{**base, **kw})


# ---- finding flux ------------------------------------------------------------------------------

def test_find_flux_takes_the_command_or_its_prefix(tmp_path):
    flux = mock_flux(tmp_path / "install")
    assert find_flux(flux, env={}) == str(flux.resolve())
    assert find_flux(tmp_path / "install", env={}) == str(flux.resolve())
    assert find_flux(env={"FLUXMPI_FLUX": str(tmp_path / "install"), "PATH": ""}) == str(flux.resolve())


def test_find_flux_searches_path(tmp_path):
    flux = mock_flux(tmp_path / "install")
    assert find_flux(env={"PATH": f"/nonexistent:{flux.parent}"}) == str(flux.resolve())


def test_explicit_flux_that_is_not_one_is_an_error_not_a_fallback(tmp_path):
    mock_flux(tmp_path / "install")
    with pytest.raises(FluxSetupError, match=r"flux_path=.*nope.*neither the flux command nor a prefix"):
        find_flux(tmp_path / "nope", env={"PATH": str(tmp_path / "install" / "bin")})
    with pytest.raises(FluxSetupError, match=r"\$FLUXMPI_FLUX is '/no/such/flux'"):
        find_flux(env={"FLUXMPI_FLUX": "/no/such/flux", "PATH": str(tmp_path / "install" / "bin")})


def test_missing_flux_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(flux_install, "COMMON_PREFIXES", (str(tmp_path / "a"), str(tmp_path / "b")))
    with pytest.raises(FluxSetupError) as err:
        find_flux(env={"PATH": str(tmp_path)})
    message = str(err.value)
    assert "flux-core not found" in message and "FLUXMPI_FLUX" in message
    assert str(tmp_path / "a" / "bin" / "flux") in message and str(tmp_path / "b" / "bin" / "flux") in message


def test_common_prefixes_are_searched_last(tmp_path, monkeypatch):
    flux = mock_flux(tmp_path / "b")
    monkeypatch.setattr(flux_install, "COMMON_PREFIXES", (str(tmp_path / "a"), str(tmp_path / "b")))
    assert find_flux(env={"PATH": ""}) == str(flux.resolve())


# ---- versions -----------------------------------------------------------------------------------

def test_version_parsing():
    assert parse_flux_version(FLUX_VERSION_OUTPUT) == "0.88.0"
    assert release("v0.88.0-12-gabc") == "0.88.0" and release("0.88.0.post1") == "0.88.0"
    assert release("unknown") is None
    with pytest.raises(FluxSetupError, match="no 'commands: X.Y.Z' line"):
        parse_flux_version("flux-core something\n")


def test_flux_command_version_runs_the_command(tmp_path):
    assert flux_command_version(str(mock_flux(tmp_path / "ok"))) == "0.88.0"
    broken = mock_flux(tmp_path / "broken", output="libflux-core.so.2: cannot open shared object file\n", code=127)
    with pytest.raises(FluxSetupError, match=r"version` failed \(exit 127\).*libflux-core.so.2"):
        flux_command_version(str(broken))


def test_versions_must_agree_and_the_error_says_which_and_how():
    check_versions(INSTALL)
    check_versions(FluxInstall(flux="/f", version="0.88.0", library_version="0.88.0", bindings_version=None))
    with pytest.raises(FluxSetupError) as err:
        check_versions(FluxInstall(flux="/f", version="0.88.0", library_version="0.88.0",
                                   bindings_version="0.86.1"))
    assert "/f is 0.88.0" in str(err.value) and "flux-python package is 0.86.1" in str(err.value)
    assert "pip install flux-python==0.88.0" in str(err.value)
    with pytest.raises(FluxSetupError, match="libflux-core loaded by the bindings is 0.87.0"):
        check_versions(FluxInstall(flux="/f", version="0.88.0", library_version="0.87.0"))


def test_missing_bindings_are_reported_with_the_matching_pip_line(monkeypatch):
    # sys.modules[name] = None makes `import name` fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "flux", None)
    with pytest.raises(FluxSetupError) as err:
        flux_install.bindings_versions("0.88.0")
    assert "do not import" in str(err.value) and "pip install flux-python==0.88.0" in str(err.value)


@pytest.mark.flux_bindings
def test_check_flux_refuses_bindings_of_another_release(tmp_path):
    """The real bindings (when installed) against a MOCK flux claiming another release."""
    other = mock_flux(tmp_path, output="commands:    \t\t0.12.3\n")
    with pytest.raises(FluxSetupError, match=r"is 0.12.3 but .*pip install flux-python==0.12.3"):
        flux_install.check_flux(other)


# ---- resources and jobspec ----------------------------------------------------------------------

@pytest.mark.parametrize("spec, cores_per_node, expected", [
    (MPITaskSpec(2, 2), 2, dict(num_tasks=4, num_nodes=2, cores_per_task=1, gpus_per_task=0)),
    (MPITaskSpec(2, 1), 2, dict(num_tasks=2, num_nodes=2, cores_per_task=2, gpus_per_task=0)),   # whole nodes
    (MPITaskSpec(3, 2), 8, dict(num_tasks=6, num_nodes=3, cores_per_task=4, gpus_per_task=0)),
    (MPITaskSpec(2, 1, exclusive=False), 2, dict(num_tasks=2, num_nodes=2, cores_per_task=1, gpus_per_task=0)),
    # Never fewer cores than asked for (a task too big for its nodes is refused by check_fits, not shrunk).
    (MPITaskSpec(1, 1, cores_per_rank=4), 2, dict(num_tasks=1, num_nodes=1, cores_per_task=4, gpus_per_task=0)),
    (MPITaskSpec(1, 2, cores_per_rank=2, gpus_per_rank=1, exclusive=False), 8,
     dict(num_tasks=2, num_nodes=1, cores_per_task=2, gpus_per_task=1)),
])
def test_resource_spec(spec, cores_per_node, expected):
    rs = flux_resource_spec(spec, cores_per_node)
    assert rs == expected
    assert set(rs) <= set(FLUX_EXECUTOR_KEYS)


def test_exclusive_task_whose_ranks_cannot_split_a_node_is_refused():
    with pytest.raises(SpecError) as err:
        check_exclusive_fits(MPITaskSpec(2, 3), 4)
    assert "ranks_per_node=3" in str(err.value) and "[1, 2, 4]" in str(err.value)
    assert "exclusive=False" in str(err.value)
    check_exclusive_fits(MPITaskSpec(2, 3, exclusive=False), 4)  # not exclusive: nothing to widen
    with pytest.raises(SpecError):
        flux_resource_spec(MPITaskSpec(1, 3), 4)


@pytest.mark.parametrize("spec", [MPITaskSpec(2, 2), MPITaskSpec(3, 1), MPITaskSpec(2, 2, cores_per_rank=2, exclusive=False)])
@pytest.mark.flux_bindings
def test_jobspec_flux_executor_builds_from_our_resources(spec):
    """The jobspec Parsl's FluxExecutor makes (flux.job.JobspecV1.from_command with our four keys) asks for
    `nodes` nodes, each with ranks_per_node slots of the cores we chose: spec.flux_jobspec's shape."""
    from flux.job import JobspecV1
    rs = flux_resource_spec(spec, 4)
    theirs = JobspecV1.from_command(["app"], num_tasks=rs["num_tasks"], num_nodes=rs["num_nodes"],
                                    cores_per_task=rs["cores_per_task"], gpus_per_task=rs["gpus_per_task"]).jobspec
    ours = MPITaskSpec(spec.nodes, spec.ranks_per_node, cores_per_rank=rs["cores_per_task"],
                       exclusive=False).flux_jobspec(["app"])
    assert theirs["resources"] == ours["resources"]
    assert theirs["tasks"] == ours["tasks"]
    node = theirs["resources"][0]
    assert node["count"] == spec.nodes and node["with"][0]["count"] == spec.ranks_per_node


# ---- address, launch command, client environment ------------------------------------------------

def test_callback_address_prefers_the_site_address():
    assert callback_address(site(address="10.77.9.1"), hostname="localhost") == "10.77.9.1"


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_callback_address_refuses_a_loopback_host_name(name):
    with pytest.raises(FluxSetupError) as err:
        callback_address(site(address=None), hostname=name)
    assert "loopback" in str(err.value) and "Site(address=...)" in str(err.value)


def test_callback_address_uses_a_routable_host_name():
    assert callback_address(site(address=None), hostname="10.1.2.3") == "10.1.2.3"


def test_broker_launch_command_one_broker_per_node_then_parsls_fields():
    cmd = broker_launch_cmd(INSTALL, nodes=3, cores_per_node=2, address="10.77.9.1")
    filled = cmd.format(flux="/opt/flux/bin/flux", python="/py", manager="/m.py", protocol="tcp", port=5555)
    assert filled == ("srun --mpi=pmi2 --nodes=3 --ntasks=3 --ntasks-per-node=1 --cpus-per-task=2 "
                      "--cpu-bind=none --no-kill /opt/flux/bin/flux start /py /m.py tcp 10.77.9.1 5555")
    # With a link timeout, each broker drops a peer that leaves data unacknowledged that long.
    timed = broker_launch_cmd(INSTALL, 3, 2, "10.77.9.1", link_timeout=12)
    assert " start -Stbon.tcp_user_timeout=12s {python} " in timed
    with pytest.raises(SpecError, match="link_timeout=0"):
        broker_launch_cmd(INSTALL, 3, 2, "10.77.9.1", link_timeout=0)
    # The hostname field is replaced by the address, so the node never resolves this host's name itself.
    assert "{hostname}" not in cmd
    with pytest.raises(FluxSetupError, match="not a host name or IP address"):
        broker_launch_cmd(INSTALL, 3, 2, "10.0.0.1 {port}")


def test_broker_launch_command_publishes_the_instance_before_parsls_manager():
    cmd = broker_launch_cmd(INSTALL, 3, 2, "10.77.9.1", publish_to="/runs/a/flux/instance.json")
    filled = cmd.format(flux="/f/flux", python="/py", manager="/m.py", protocol="tcp", port=5555)
    assert filled.endswith(" /f/flux start /py -m fluxmpi.launch.flux.block /runs/a/flux/instance.json /f/flux "
                           "--then /py /m.py tcp 10.77.9.1 5555")
    with pytest.raises(FluxSetupError, match=r"'/runs/my run/i.json' must not hold spaces"):
        broker_launch_cmd(INSTALL, 3, 2, "10.77.9.1", publish_to="/runs/my run/i.json")


def test_broker_launch_command_tells_the_instance_its_gpus(tmp_path):
    """With GPUs the block first writes Flux's resource configuration for the nodes Slurm gave it; run here by sh
    with a node list, it is the TOML Flux reads (cores and GPUs per node)."""
    cmd = broker_launch_cmd(INSTALL, 2, 4, "10.77.9.1", publish_to=f"{tmp_path}/instance.json", gpus_per_node=4)
    write, brokers = cmd.split(" && ", 1)
    assert f" start -c {tmp_path}/resource.toml " in brokers
    subprocess.run(["sh", "-c", write], env={"SLURM_JOB_NODELIST": "fxg[1-2]", "PATH": "/usr/bin:/bin"}, check=True,
                   timeout=10)
    assert (tmp_path / "resource.toml").read_text() == ('[resource]\nnoverify = true\n[[resource.config]]\n'
                                                        'hosts = "fxg[1-2]"\ncores = "0-3"\ngpus = "0-3"\n')
    with pytest.raises(FluxSetupError, match="needs publish_to"):
        broker_launch_cmd(INSTALL, 2, 4, "10.77.9.1", gpus_per_node=4)


def test_client_env_needs_an_executable_ssh(tmp_path):
    wrapper = tmp_path / "ssh-wrapper"
    wrapper.write_text("#!/bin/sh\nexec ssh \"$@\"\n")
    wrapper.chmod(0o755)
    assert flux_client_env(site(ssh=str(wrapper)), INSTALL) == {"FLUX_SSH": str(wrapper),
                                                               "FLUX_SSH_RCMD": "/opt/flux/bin/flux"}
    with pytest.raises(FluxSetupError, match="must name an executable ssh"):
        flux_client_env(site(ssh="ssh -F /etc/cluster/ssh_config"), INSTALL)


# ---- the config ---------------------------------------------------------------------------------

def test_config_builds_a_flux_executor_on_one_exclusive_slurm_block(tmp_path, monkeypatch):
    monkeypatch.delenv("FLUX_SSH_RCMD", raising=False)
    s = site(worker_init="source /site/env.sh")
    config = flux_config(s, nodes_per_block=3, walltime="00:10:00", worker_init="export A=1",
                         run_dir=str(tmp_path / "runinfo"), install=INSTALL, apply_env=False)
    ex = never_started(config.executors[0])
    assert isinstance(ex, FluxExecutor) and ex.label == "flux"
    assert ex.flux_path == "/opt/flux/bin/flux"
    assert ex.working_dir == str(tmp_path / "runinfo" / "flux")
    assert "--nodes=3 --ntasks=3" in ex.launch_cmd and "10.77.9.1 {port}" in ex.launch_cmd
    provider = ex.provider
    assert isinstance(provider, SlurmProvider)
    assert (provider.partition, provider.nodes_per_block, provider.walltime) == ("debug", 3, "00:10:00")
    assert provider.exclusive and provider.init_blocks == provider.max_blocks == 1
    assert "source /site/env.sh" in provider.worker_init and "export A=1" in provider.worker_init
    assert "FLUX_SSH_RCMD" not in os.environ  # apply_env=False leaves this process alone
    # A node that fails takes neither the block nor the broker step with it; the brokers' link timeout is the
    # run's heartbeat threshold (Resilience's default 120 s).
    assert {"#SBATCH --no-requeue", "#SBATCH --no-kill"} <= set(provider.scheduler_options.splitlines())
    assert "--no-kill" in ex.launch_cmd and "-Stbon.tcp_user_timeout=120s" in ex.launch_cmd
    short = flux_config(s, run_dir=str(tmp_path / "r2"), install=INSTALL, apply_env=False,
                        resilience=Resilience(heartbeat_period=2, heartbeat_threshold=9))
    assert "-Stbon.tcp_user_timeout=9s" in never_started(short.executors[0]).launch_cmd


def test_config_exports_what_the_ssh_connector_reads(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUX_SSH_RCMD", "before")
    never_started(flux_config(site(), run_dir=str(tmp_path), install=INSTALL).executors[0])
    assert os.environ["FLUX_SSH_RCMD"] == "/opt/flux/bin/flux"


def test_config_refuses_a_block_larger_than_the_partition(tmp_path):
    with pytest.raises(SpecError, match="need 5 nodes but partition 'debug'"):
        flux_config(site(), nodes_per_block=5, run_dir=str(tmp_path), install=INSTALL, apply_env=False)


def test_task_init_joins_site_and_run_lines():
    assert task_init(site(worker_init="source /a.sh"), "export B=2") == "source /a.sh\nexport B=2"
    assert task_init(site(), "") == ""


def test_local_variant_command_and_config(tmp_path):
    assert local_launch_cmd(3).format(flux="F", python="P", manager="M", protocol="tcp", hostname="h",
                                      port=1) == "F start --test-size=3 P M tcp h 1"
    for bad in (0, 17, "2", True):
        with pytest.raises(SpecError, match="brokers"):
            local_launch_cmd(bad)
    ex = never_started(flux_local_config(2, run_dir=str(tmp_path), install=INSTALL).executors[0])
    assert ex.launch_cmd == local_launch_cmd(2) and ex.flux_path == INSTALL.flux


# ---- the path entry -----------------------------------------------------------------------------

def test_flux_path_entry_resources_and_task_options():
    lp = PATHS["flux"]
    assert lp.launcher == "flux" and lp.label == "flux"
    s = site(worker_init="source /a.sh")
    assert lp.resources(MPITaskSpec(2, 1), s)["cores_per_task"] == 2          # widened to whole nodes
    assert lp.resources(MPITaskSpec(2, 1, exclusive=False), s)["cores_per_task"] == 1
    assert lp.task_options(s, Plan(nodes_per_block=4, blocks=1, gate_capacity=0, worker_init="export X=1")) \
        == {"init": "source /a.sh\nexport X=1"}
    # The HTEX paths are untouched by the new fields.
    assert PATHS["htex"].resources(MPITaskSpec(2, 2), s) == MPITaskSpec(2, 2).parsl_resource_spec()
    assert PATHS["htex"].task_options(s, Plan(4, 1, 4)) == {}


def test_flux_path_refuses_when_flux_is_missing_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("FLUXMPI_FLUX", raising=False)
    monkeypatch.setattr(flux_install, "COMMON_PREFIXES", ())
    with pytest.raises(FluxSetupError, match="flux-core not found"):
        PATHS["flux"].check(site(), [MPITaskSpec(2, 2)])


@pytest.mark.flux     # the path's own check needs a working flux install first
def test_flux_path_refuses_bad_tasks(tmp_path):
    lp = PATHS["flux"]
    with pytest.raises(SpecError, match="task 1 .*needs 5 nodes but the block has 4"):
        lp.check(site(), [MPITaskSpec(2, 2), MPITaskSpec(5, 1)])
    with pytest.raises(SpecError, match="task 0: .*ranks_per_node=3"):
        lp.check(site(cores_per_node=4), [MPITaskSpec(1, 3)])
    plan = lp.check(site(), [MPITaskSpec(2, 2)] * 4, nodes_per_block=3)
    assert (plan.nodes_per_block, plan.blocks, plan.gate_capacity) == (3, 1, 0)


# ---- the per-rank body, with the variables a Flux job shell would set ------------------------------

def flux_shell_env(monkeypatch, rank: int, size: int) -> None:
    """Stand-in for what the Flux job shell exports to each task (no broker here)."""
    monkeypatch.setenv("FLUX_TASK_RANK", str(rank))
    monkeypatch.setenv("FLUX_JOB_SIZE", str(size))
    monkeypatch.setenv("FLUX_JOB_ID", "f-test")
    monkeypatch.delenv("PMI_FD", raising=False)


def test_rank_body_outside_flux_says_so(monkeypatch):
    monkeypatch.delenv("FLUX_TASK_RANK", raising=False)
    with pytest.raises(MPITaskFailed, match="FLUX_TASK_RANK is unset"):
        run_mpi_task(MPITaskSpec(1, 1).to_dict(), "flux", ["true"], "t0")


def test_rank_zero_returns_the_result_with_the_set_up_environment(monkeypatch, tmp_path):
    flux_shell_env(monkeypatch, rank=0, size=2)
    env_file = tmp_path / "env.sh"
    env_file.write_text(f"echo chatter\nexport FLUXMPI_ENV_FILE={env_file}\nexport PROBE=ok\n")
    out = tmp_path / "probe"
    argv = [sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(os.environ['PROBE'])"]
    result = run_mpi_task(MPITaskSpec(2, 1).to_dict(), "flux", argv, "t0", 30, init=f"source {env_file}")
    assert out.read_text() == "ok"                      # the app got the set-up's variables
    assert result["env_file"] == str(env_file) and result["flux_job_id"] == "f-test"
    assert result["ranks"] == 2 and result["t_launch"] <= result["t_done"]


def test_other_ranks_return_nothing(monkeypatch):
    flux_shell_env(monkeypatch, rank=1, size=2)
    assert run_flux_rank(MPITaskSpec(2, 1), ["true"], "t0") is None


def test_rank_zero_failure_raises_with_the_rank_and_host(monkeypatch):
    flux_shell_env(monkeypatch, rank=0, size=2)
    with pytest.raises(MPITaskFailed) as err:
        run_flux_rank(MPITaskSpec(2, 1), ["sh", "-c", "echo boom >&2; exit 3"], "t7")
    text = str(err.value)
    assert "task t7: rank 0 of 2 (sh) exited with code 3" in text and "boom" in text


def test_other_rank_failure_exits_non_zero_so_the_job_fails(monkeypatch, capsys):
    flux_shell_env(monkeypatch, rank=1, size=2)
    with pytest.raises(SystemExit) as exc:
        run_flux_rank(MPITaskSpec(2, 1), ["sh", "-c", "echo boom >&2; exit 3"], "t7")
    assert exc.value.code == 3
    assert "task t7: rank 1 of 2 (sh) exited with code 3" in capsys.readouterr().err


def test_rank_is_killed_at_the_timeout_or_the_walltime(monkeypatch):
    flux_shell_env(monkeypatch, rank=0, size=1)
    with pytest.raises(MPITaskFailed, match="did not finish within 1s; killed"):
        run_flux_rank(MPITaskSpec(1, 1), ["sleep", "30"], "t0", timeout=1)
    with pytest.raises(MPITaskFailed, match="did not finish within 1s; killed"):
        run_flux_rank(MPITaskSpec(1, 1, walltime=1), ["sleep", "30"], "t0", timeout=600)


def test_rank_count_other_than_the_spec_is_an_error(monkeypatch):
    flux_shell_env(monkeypatch, rank=0, size=3)
    with pytest.raises(MPITaskFailed, match="Flux started 3 ranks but the task is 2x2"):
        run_flux_rank(MPITaskSpec(2, 2), ["true"], "t0")


def test_pmi_fd_reaches_the_app(monkeypatch, tmp_path):
    """Flux's PMI lives on an inherited descriptor; Popen closes others, so the body must pass it on."""
    flux_shell_env(monkeypatch, rank=0, size=1)
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, False)  # as Python would leave it: the body must pass it explicitly
    monkeypatch.setenv("PMI_FD", str(write_end))
    try:
        writer = "import os; os.write(int(os.environ['PMI_FD']), b'pmi-ok')"
        run_flux_rank(MPITaskSpec(1, 1), [sys.executable, "-c", writer], "t0", timeout=20)
        os.close(write_end)
        assert os.read(read_end, 100) == b"pmi-ok"
    finally:
        os.close(read_end)


def test_task_environment_reports_failing_set_up():
    assert task_environment("export X_FROM_INIT=1; echo noise")["X_FROM_INIT"] == "1"
    with pytest.raises(TaskInitFailed, match=r"failed \(exit 4\)"):
        task_environment("echo bad >&2; exit 4")


def test_compile_app_sources_the_set_up_first(tmp_path):
    """mpicc must come from the same environment as the app: a set-up that hides it makes compiling fail."""
    from fluxmpi.apps import compile_app
    from fluxmpi.mpi_apps import MpiCompilerNotFound
    with pytest.raises(MpiCompilerNotFound):
        compile_app(str(tmp_path), init="export PATH=/nonexistent")


def test_static_blocks_refuse_an_mpi_app_task_of_another_size_at_submit():
    """The static executor reads the size of both task bodies' calls: run_mpi_task's and @mpi_app's."""
    from fluxmpi.launch.executors import _mpi_app_spec
    spec = MPITaskSpec(2, 2).to_dict()
    assert _mpi_app_spec((spec, "srun", ["app"], "t0"), {}).nodes == 2
    assert _mpi_app_spec(({"fn": print, "spec": spec, "task": "h0"},), {}).nodes == 2
    assert _mpi_app_spec(("not a call",), {}) is None
