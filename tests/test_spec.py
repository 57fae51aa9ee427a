"""MPITaskSpec: inference, rejection of bad input, and every launcher translation (checked exactly and,
where the launcher exists on this host, by letting the real launcher parse the argv)."""

import copy
import inspect
import os
import shutil
import socket
import subprocess

import pytest

from fluxmpi.spec import (
    FLUX_COMMAND_PLACEHOLDER,
    MPITaskSpec,
    SpecError,
    format_clock,
    parse_walltime,
)

# ---- building from loose input -----------------------------------------------------------------

# (build kwargs, expected (nodes, ranks_per_node, ranks, cores_per_rank, gpus_per_rank, exclusive, walltime))
GOOD = [
    (dict(nodes=2, ranks_per_node=4), (2, 4, 8, 1, 0, True, None)),
    (dict(nodes=2, ranks=8), (2, 4, 8, 1, 0, True, None)),
    (dict(ranks_per_node=4, ranks=8), (2, 4, 8, 1, 0, True, None)),
    (dict(nodes=3, ranks_per_node=2, ranks=6), (3, 2, 6, 1, 0, True, None)),
    (dict(nodes=3), (3, 1, 3, 1, 0, True, None)),
    (dict(nodes="2", ranks="4"), (2, 2, 4, 1, 0, True, None)),
    (dict(nodes=" 2 ", ranks_per_node="+3", cores_per_rank="2", gpus_per_rank="1"), (2, 3, 6, 2, 1, True, None)),
    (dict(nodes=1, ranks=1, exclusive=False), (1, 1, 1, 1, 0, False, None)),
    (dict(nodes=1, ranks=2, exclusive="no"), (1, 2, 2, 1, 0, False, None)),
    (dict(nodes=2, ranks=4, walltime=600), (2, 2, 4, 1, 0, True, 600)),
    (dict(nodes=2, ranks=4, walltime="10"), (2, 2, 4, 1, 0, True, 600)),  # Slurm: bare MM is minutes
    (dict(nodes=2, ranks=4, walltime="10:30"), (2, 2, 4, 1, 0, True, 630)),
    (dict(nodes=2, ranks=4, walltime="01:02:03"), (2, 2, 4, 1, 0, True, 3723)),
    (dict(nodes=2, ranks=4, walltime="1-2"), (2, 2, 4, 1, 0, True, 93600)),
    (dict(nodes=2, ranks=4, walltime="1-02:30"), (2, 2, 4, 1, 0, True, 95400)),
    (dict(nodes=2, ranks=4, walltime="2-00:00:05"), (2, 2, 4, 1, 0, True, 172805)),
    (dict(nodes=2, ranks=4, walltime="90s"), (2, 2, 4, 1, 0, True, 90)),
    (dict(nodes=2, ranks=4, walltime="10m"), (2, 2, 4, 1, 0, True, 600)),
    (dict(nodes=2, ranks=4, walltime="2h"), (2, 2, 4, 1, 0, True, 7200)),
    (dict(nodes=2, ranks=4, walltime="1d"), (2, 2, 4, 1, 0, True, 86400)),
]


@pytest.mark.parametrize("kwargs,expected", GOOD, ids=[str(k) for k, _ in GOOD])
def test_build_infers_missing_size(kwargs, expected):
    spec = MPITaskSpec.build(**kwargs)
    got = (spec.nodes, spec.ranks_per_node, spec.ranks, spec.cores_per_rank, spec.gpus_per_rank, spec.exclusive, spec.walltime)
    assert got == expected
    assert all(type(v) is int for v in got[:5])


# (build kwargs, text the message must contain: the bad value as the user wrote it)
BAD = [
    (dict(), "nodes"),
    (dict(ranks=4), "ranks=4"),
    (dict(ranks_per_node=4), "ranks_per_node=4"),
    (dict(nodes=2, ranks=5), "ranks=5"),
    (dict(nodes=2, ranks=1), "ranks=1"),
    (dict(ranks_per_node=3, ranks=7), "ranks=7"),
    (dict(nodes=2, ranks_per_node=2, ranks=5), "ranks=5"),
    (dict(nodes="4.5"), "'4.5'"),
    (dict(nodes="0"), "'0'"),
    (dict(nodes="-1"), "'-1'"),
    (dict(nodes="abc"), "'abc'"),
    (dict(nodes=""), "nodes=''"),
    (dict(nodes=2.0), "2.0"),
    (dict(nodes=True), "True"),
    (dict(nodes=0), "nodes=0"),
    (dict(nodes=1, ranks_per_node=0), "ranks_per_node=0"),
    (dict(nodes=1, cores_per_rank=0), "cores_per_rank=0"),
    (dict(nodes=1, cores_per_rank="1.5"), "'1.5'"),
    (dict(nodes=1, gpus_per_rank=-1), "gpus_per_rank=-1"),
    (dict(nodes=1, exclusive="maybe"), "'maybe'"),
    (dict(nodes=1, exclusive=1), "exclusive=1"),
    (dict(nodes=1, walltime="abc"), "'abc'"),
    (dict(nodes=1, walltime="1:75:00"), "'1:75:00'"),
    (dict(nodes=1, walltime="1-25"), "'1-25'"),
    (dict(nodes=1, walltime="1.5h"), "'1.5h'"),
    (dict(nodes=1, walltime="1:2:3:4"), "'1:2:3:4'"),
    (dict(nodes=1, walltime="0"), "'0'"),
    (dict(nodes=1, walltime=0), "walltime=0"),
    (dict(nodes=1, walltime=-5), "-5"),
    (dict(nodes=1, walltime=1.5), "1.5"),
]


@pytest.mark.parametrize("kwargs,needle", BAD, ids=[str(k) for k, _ in BAD])
def test_build_rejects_bad_input_naming_it(kwargs, needle):
    with pytest.raises(SpecError) as info:
        MPITaskSpec.build(**kwargs)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)
    assert "give" in str(info.value) or "make" in str(info.value) or "drop" in str(info.value)  # says the fix


def test_bad_walltime_lists_accepted_forms():
    with pytest.raises(SpecError) as info:
        parse_walltime("soon")
    for form in ('"MM:SS"', '"HH:MM:SS"', '"D-HH:MM:SS"', '"10m"'):
        assert form in str(info.value)


def test_contradiction_names_all_three_values():
    with pytest.raises(SpecError) as info:
        MPITaskSpec.build(nodes=2, ranks_per_node=3, ranks=5)
    assert "nodes=2" in str(info.value) and "ranks_per_node=3" in str(info.value) and "ranks=5" in str(info.value)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        (dict(nodes=2.0, ranks_per_node=1), "nodes=2.0"),
        (dict(nodes="2", ranks_per_node=1), "nodes='2'"),
        (dict(nodes=True, ranks_per_node=1), "nodes=True"),
        (dict(nodes=1, ranks_per_node=0), "ranks_per_node=0"),
        (dict(nodes=1, ranks_per_node=1, gpus_per_rank=-1), "gpus_per_rank=-1"),
        (dict(nodes=1, ranks_per_node=1, exclusive="yes"), "exclusive='yes'"),
        (dict(nodes=1, ranks_per_node=1, walltime="10:00"), "walltime='10:00'"),
        (dict(nodes=1, ranks_per_node=1, walltime=0), "walltime=0"),
    ],
)
def test_constructor_is_strict(kwargs, needle):
    with pytest.raises(SpecError) as info:
        MPITaskSpec(**kwargs)
    assert needle in str(info.value)


def test_spec_is_frozen_and_hashable():
    spec = MPITaskSpec(2, 2)
    with pytest.raises(AttributeError):
        spec.nodes = 3  # type: ignore[misc]
    assert {spec, MPITaskSpec.build(nodes=2, ranks=4)} == {spec}


@pytest.mark.parametrize(
    "spec,text",
    [
        (MPITaskSpec(2, 2, walltime=600), "2x2 (4 ranks, 1 core/rank, exclusive, 10:00)"),
        (MPITaskSpec(1, 1), "1x1 (1 rank, 1 core/rank, exclusive)"),
        (MPITaskSpec(3, 2, cores_per_rank=4, gpus_per_rank=1, exclusive=False, walltime=5400), "3x2 (6 ranks, 4 cores/rank, 1 gpu/rank, shared, 1:30:00)"),
        (MPITaskSpec(1, 2, gpus_per_rank=2, walltime=90061), "1x2 (2 ranks, 1 core/rank, 2 gpus/rank, exclusive, 1-01:01:01)"),
    ],
)
def test_str(spec, text):
    assert str(spec) == text


def test_dict_round_trip_and_hand_written_dicts():
    spec = MPITaskSpec(3, 2, cores_per_rank=2, gpus_per_rank=1, exclusive=False, walltime=900)
    data = spec.to_dict()
    assert data == {"nodes": 3, "ranks_per_node": 2, "ranks": 6, "cores_per_rank": 2, "gpus_per_rank": 1, "exclusive": False, "walltime": 900}
    assert MPITaskSpec.from_dict(data) == spec
    assert MPITaskSpec.from_dict({"nodes": "2", "ranks": "8", "walltime": "1:00:00"}) == MPITaskSpec(2, 4, walltime=3600)
    with pytest.raises(SpecError) as info:
        MPITaskSpec.from_dict({"nodes": 2, "ppn": 4, "gpus": 1})
    assert "'gpus'" in str(info.value) and "'ppn'" in str(info.value) and "ranks_per_node" in str(info.value)
    with pytest.raises(SpecError) as info:
        MPITaskSpec.from_dict({**data, "ranks": 7})
    assert "ranks=7" in str(info.value)
    with pytest.raises(SpecError) as info:
        MPITaskSpec.from_dict([("nodes", 2)])
    assert "not a mapping" in str(info.value)


def test_format_clock():
    assert [format_clock(s) for s in (59, 600, 3723, 86400, 360000)] == ["00:00:59", "00:10:00", "01:02:03", "1-00:00:00", "4-04:00:00"]
    for seconds in (1, 59, 600, 3723, 86399, 86400, 93784, 360000):
        assert parse_walltime(format_clock(seconds)) == seconds


# ---- fitting a block ---------------------------------------------------------------------------

def test_check_fits_accepts_exact_fit():
    MPITaskSpec(2, 2, cores_per_rank=2, gpus_per_rank=1).check_fits(2, 4, gpus_per_node=2)


def test_check_fits_too_many_nodes_suggests_block_size():
    with pytest.raises(SpecError) as info:
        MPITaskSpec(3, 1).check_fits(nodes_available=2, cores_per_node=4)
    msg = str(info.value)
    assert "3x1" in msg and "needs 3 nodes" in msg and "has 2" in msg and "nodes_per_block=3" in msg


def test_check_fits_too_many_cores_and_gpus_listed_together():
    with pytest.raises(SpecError) as info:
        MPITaskSpec(1, 4, cores_per_rank=2, gpus_per_rank=1).check_fits(1, 6, gpus_per_node=2, where="allocation")
    msg = str(info.value)
    assert "8 cores per node" in msg and "has 6" in msg and "ranks_per_node <= 3" in msg
    assert "4 GPUs per node" in msg and "has 2" in msg and "ranks_per_node <= 2" in msg
    assert "allocation" in msg


def test_check_fits_gpu_task_on_gpu_less_nodes():
    with pytest.raises(SpecError) as info:
        MPITaskSpec(1, 1, gpus_per_rank=1).check_fits(1, 2)
    assert "has 0" in str(info.value) and "gpus_per_rank=0" in str(info.value)


def test_check_fits_rejects_bad_capacity():
    with pytest.raises(SpecError) as info:
        MPITaskSpec(1, 1).check_fits(nodes_available="two", cores_per_node=2)
    assert "'two'" in str(info.value)


# ---- translations, exactly -----------------------------------------------------------------------

BASIC = MPITaskSpec(2, 2, walltime=600)
RICH = MPITaskSpec(3, 2, cores_per_rank=4, gpus_per_rank=1, exclusive=False, walltime=93784)


def test_parsl_resource_spec():
    assert BASIC.parsl_resource_spec() == {"num_nodes": 2, "num_ranks": 4, "ranks_per_node": 2}
    assert RICH.parsl_resource_spec() == {"num_nodes": 3, "num_ranks": 6, "ranks_per_node": 2}
    assert all(type(v) is int for v in RICH.parsl_resource_spec().values())


def test_srun_args():
    assert BASIC.srun_args() == [
        "srun", "--nodes", "2", "--ntasks", "4", "--ntasks-per-node", "2", "--cpus-per-task", "1",
        "--kill-on-bad-exit=1", "--time", "00:10:00", "--mpi=pmix",
    ]
    assert RICH.srun_args(mpi="pmi2", nodelist=["n1", "n2", "n3"]) == [
        "srun", "--nodes", "3", "--ntasks", "6", "--ntasks-per-node", "2", "--cpus-per-task", "4",
        "--kill-on-bad-exit=1", "--gpus-per-task", "1", "--exact", "--time", "1-02:03:04", "--nodelist", "n1,n2,n3", "--mpi=pmi2",
    ]
    assert MPITaskSpec(1, 1).srun_args(mpi=None, nodelist="n7") == [
        "srun", "--nodes", "1", "--ntasks", "1", "--ntasks-per-node", "1", "--cpus-per-task", "1",
        "--kill-on-bad-exit=1", "--nodelist", "n7",
    ]


@pytest.mark.parametrize("nodelist,needle", [(["n1"], "nodes=2"), ("n1,n1", "twice"), (["n1", ""], "malformed"), (["a,b", "c"], "malformed")])
def test_srun_nodelist_must_match_nodes(nodelist, needle):
    with pytest.raises(SpecError) as info:
        BASIC.srun_args(nodelist=nodelist)
    assert needle in str(info.value) and repr(nodelist) in str(info.value)


def test_srun_rejects_bad_mpi_plugin():
    with pytest.raises(SpecError) as info:
        BASIC.srun_args(mpi="pmix --overlap")
    assert "'pmix --overlap'" in str(info.value)


def test_mpiexec_args_openmpi():
    assert BASIC.mpiexec_args("openmpi") == ["mpirun", "-n", "4", "--map-by", "ppr:2:node", "--bind-to", "core", "--timeout", "600"]
    assert RICH.mpiexec_args("openmpi", hosts=["n1", "n2", "n3"]) == [
        "mpirun", "-n", "6", "--map-by", "ppr:2:node:PE=4", "--bind-to", "none", "--timeout", "93784", "--host", "n1:2,n2:2,n3:2",
    ]


def test_each_open_mpi_launch_gets_a_session_base_of_its_own_removed_after():
    from fluxmpi.apps import openmpi_session_base
    from fluxmpi.launchers import launch_argv
    with openmpi_session_base("t0") as a, openmpi_session_base("t0") as b:
        assert a != b and os.path.isdir(a) and os.path.isdir(b)
        argv = launch_argv(BASIC, "mpiexec-openmpi", ["n1", "n2"], ["app"], a)
        assert argv[:4] == ["mpirun", "--mca", "orte_tmpdir_base", a] and argv[-1] == "app"
    assert not os.path.exists(a) and not os.path.exists(b)
    with openmpi_session_base("t0", wanted=False) as none:
        assert none is None


def test_mpiexec_args_mpich():
    assert BASIC.mpiexec_args("mpich", hosts="n1,n2") == ["mpiexec", "-n", "4", "-ppn", "2", "-bind-to", "core:1", "-hosts", "n1,n2"]
    assert RICH.mpiexec_args("mpich", program="mpiexec.mpich") == ["mpiexec.mpich", "-n", "6", "-ppn", "2"]


def test_mpiexec_args_rejects_unknown_flavor_and_wrong_hosts():
    with pytest.raises(SpecError) as info:
        BASIC.mpiexec_args("intel")
    assert "'intel'" in str(info.value) and "openmpi" in str(info.value)
    with pytest.raises(SpecError) as info:
        BASIC.mpiexec_args("openmpi", hosts=["n1", "n2", "n3"])
    assert "3 host(s)" in str(info.value) and "nodes=2" in str(info.value)


def test_flux_executor_spec():
    assert BASIC.flux_executor_spec() == {"num_tasks": 4, "num_nodes": 2, "cores_per_task": 1, "gpus_per_task": 0}
    assert RICH.flux_executor_spec() == {"num_tasks": 6, "num_nodes": 3, "cores_per_task": 4, "gpus_per_task": 1}


def test_flux_run_args():
    assert BASIC.flux_run_args() == ["-N", "2", "-n", "4", "-c", "1", "-x", "-t", "600s"]
    # RICH shares its nodes: its job gets just its GPUs, which per-task affinity divides among the ranks.
    assert RICH.flux_run_args() == ["-N", "3", "-n", "6", "-c", "4", "--gpus-per-task", "1", "-o",
                                    "gpu-affinity=per-task", "-t", "93784s"]
    assert MPITaskSpec(1, 1, exclusive=False).flux_run_args() == ["-N", "1", "-n", "1", "-c", "1"]


def test_flux_jobspec():
    assert BASIC.flux_jobspec(["mpi_hello", "-v"]) == {
        "version": 1,
        "resources": [{
            "type": "node", "count": 2, "exclusive": True,
            "with": [{"type": "slot", "count": 2, "label": "task", "with": [{"type": "core", "count": 1}]}],
        }],
        "tasks": [{"command": ["mpi_hello", "-v"], "slot": "task", "count": {"per_slot": 1}}],
        "attributes": {"system": {"duration": 600}},
    }
    rich = RICH.flux_jobspec()
    assert rich["resources"] == [{
        "type": "node", "count": 3,
        "with": [{"type": "slot", "count": 2, "label": "task", "with": [{"type": "core", "count": 4}, {"type": "gpu", "count": 1}]}],
    }]
    assert rich["tasks"][0]["command"] == [FLUX_COMMAND_PLACEHOLDER]
    assert rich["attributes"]["system"]["shell"] == {"options": {"gpu-affinity": "per-task"}}   # shared nodes
    assert MPITaskSpec(1, 1).flux_jobspec(["x"])["attributes"] == {"system": {"duration": 0}}  # 0 = no limit
    exclusive = MPITaskSpec(1, 2, gpus_per_rank=1).flux_jobspec(["x"])["attributes"]["system"]
    assert exclusive["shell"]["options"]["gpu-affinity"] == "map:0;1"   # the job holds all of the node's GPUs
    with pytest.raises(SpecError) as info:
        BASIC.flux_jobspec("mpi_hello -v")
    assert "'mpi_hello -v'" in str(info.value)


# ---- translations accepted by the real consumers ---------------------------------------------------

def test_parsl_mpi_validator_accepts_resource_spec_unchanged():
    from parsl.executors.high_throughput.mpi_executor import MPIExecutor
    from parsl.executors.high_throughput.mpi_prefix_composer import (
        compose_all,
        validate_resource_spec,
    )

    for spec in (BASIC, RICH, MPITaskSpec(3, 1), MPITaskSpec(1, 5)):
        resource_spec = spec.parsl_resource_spec()
        before = copy.deepcopy(resource_spec)
        validate_resource_spec(resource_spec)  # raises InvalidResourceSpecification on unknown keys
        MPIExecutor.validate_resource_spec(None, resource_spec)  # the executor's hook (does not use self)
        assert resource_spec == before  # all keys present: Parsl derives nothing with `/`
        # Parsl's own prefix composers then see whole numbers only.
        prefixes = compose_all("srun", resource_spec, [f"n{i}" for i in range(spec.nodes)])
        assert f"--ntasks {spec.ranks} --ntasks-per-node {spec.ranks_per_node} " in prefixes["PARSL_MPI_PREFIX"]
        assert f"-n {spec.ranks} -ppn {spec.ranks_per_node} " in prefixes["PARSL_MPIEXEC_PREFIX"]


def test_parsl_flux_executor_reads_every_key_we_give():
    # Parsl's FluxExecutor silently ignores unknown keys, so check by reading the code that consumes them.
    from parsl.executors.flux import executor as flux_executor

    source = inspect.getsource(flux_executor._submit_single_job)
    for key in BASIC.flux_executor_spec():
        assert f'resource_spec.get("{key}"' in source, f"Parsl's FluxExecutor no longer reads {key!r}"


@pytest.mark.flux_bindings
def test_flux_jobspec_matches_flux_python():
    from flux.job import JobspecV1
    for spec in (BASIC, RICH, MPITaskSpec(3, 1, cores_per_rank=2)):
        theirs = JobspecV1.from_command(
            ["mpi_hello"], num_tasks=spec.ranks, num_nodes=spec.nodes, cores_per_task=spec.cores_per_rank,
            gpus_per_task=spec.gpus_per_rank or None, exclusive=spec.exclusive, duration=spec.walltime or 0,
        ).jobspec
        ours = spec.flux_jobspec(["mpi_hello"])
        assert ours["resources"] == theirs["resources"]
        assert ours["tasks"] == theirs["tasks"]
        assert ours["attributes"]["system"]["duration"] == theirs["attributes"]["system"]["duration"]
        JobspecV1(**ours)  # flux's own validation


def _run(argv, env=None, timeout=60):
    """Run a launcher with a bound; returns (returncode, combined output)."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    return proc.returncode, proc.stdout + proc.stderr


def _local_specs():
    """1-node specs that fit this host's cores, so binding to cores is possible."""
    cpus = os.cpu_count() or 1
    rpn = min(2, cpus)
    specs = [MPITaskSpec(1, rpn), MPITaskSpec(1, rpn, exclusive=False, walltime=120), MPITaskSpec(1, 3, exclusive=False)]
    if cpus >= 2:
        specs.append(MPITaskSpec(1, 1, cores_per_rank=2, walltime=60))
    return specs


OMPI_ROOT_ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI mpirun not installed")
@pytest.mark.parametrize("with_host", [False, True])
def test_openmpi_mpirun_accepts_argv(with_host):
    hosts = [socket.gethostname()] if with_host else None
    for spec in _local_specs():
        argv = spec.mpiexec_args("openmpi", hosts=hosts) + ["--oversubscribe", "true"]
        rc, out = _run(argv, env=OMPI_ROOT_ENV)
        assert rc == 0, f"{argv} failed ({rc}):\n{out}"


@pytest.mark.skipif(shutil.which("mpirun") is None, reason="Open MPI mpirun not installed")
def test_openmpi_mpirun_rejects_a_misspelled_flag():
    # Control: proves the acceptance test above could fail.
    argv = [a.replace("core", "cor") for a in MPITaskSpec(1, 1).mpiexec_args("openmpi")] + ["--oversubscribe", "true"]
    rc, out = _run(argv, env=OMPI_ROOT_ENV)
    assert rc != 0 and "cor" in out


@pytest.mark.skipif(shutil.which("mpiexec.mpich") is None, reason="MPICH mpiexec.mpich not installed")
@pytest.mark.parametrize("with_host", [False, True])
def test_mpich_mpiexec_accepts_argv(with_host):
    hosts = [socket.gethostname()] if with_host else None
    for spec in _local_specs():
        argv = spec.mpiexec_args("mpich", hosts=hosts, program="mpiexec.mpich") + ["true"]
        rc, out = _run(argv)
        assert rc == 0, f"{argv} failed ({rc}):\n{out}"


@pytest.mark.skipif(shutil.which("mpiexec.mpich") is None, reason="MPICH mpiexec.mpich not installed")
def test_mpich_mpiexec_rejects_a_misspelled_flag():
    argv = [a.replace("-ppn", "-ppnx") for a in MPITaskSpec(1, 1).mpiexec_args("mpich", program="mpiexec.mpich")] + ["true"]
    rc, out = _run(argv)
    assert rc != 0 and "ppnx" in out


# A config for srun's option parser only: the controller port is closed, so nothing is ever scheduled.
_PARSE_ONLY_SLURM_CONF = """\
ClusterName=specparse
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=1
MessageTimeout=1
SelectType=select/cons_tres
GresTypes=gpu
MpiDefault=none
NodeName=n[1-3] CPUs=8 State=UNKNOWN
PartitionName=p Nodes=n[1-3] Default=YES
"""
_NO_CONTROLLER = "Unable to contact slurm controller"


def _srun_parse(argv, tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text(_PARSE_ONLY_SLURM_CONF)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not inside someone's job
    env["SLURM_CONF"] = str(conf)
    return _run(argv + ["true"], env=env, timeout=30)


@pytest.mark.skipif(shutil.which("srun") is None, reason="Slurm srun not installed")
@pytest.mark.parametrize("spec", [BASIC, RICH, MPITaskSpec(1, 1, walltime=86400 * 2 + 1)], ids=str)
def test_srun_parses_argv(spec, tmp_path):
    # srun checks options (and loads the --mpi plugin) before it contacts the controller; getting as far as
    # "cannot contact the controller" means every flag and value was accepted.
    argv = spec.srun_args(nodelist=[f"n{i + 1}" for i in range(spec.nodes)])
    rc, out = _srun_parse(argv, tmp_path)
    assert rc != 0 and _NO_CONTROLLER in out, f"{argv}:\n{out}"


@pytest.mark.skipif(shutil.which("srun") is None, reason="Slurm srun not installed")
def test_srun_rejects_a_bad_time(tmp_path):
    argv = BASIC.srun_args()
    argv[argv.index("--time") + 1] = "1:2:3:4"
    rc, out = _srun_parse(argv, tmp_path)
    assert rc != 0 and _NO_CONTROLLER not in out and "time" in out.lower()
