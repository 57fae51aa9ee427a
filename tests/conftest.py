"""Shared fixtures, and the one place that decides whether a test's outside parts are here.

A test that needs a part this machine may not have says so with a marker (`@pytest.mark.cluster`,
`@pytest.mark.flux`); `pytest_runtest_setup` below checks the part once per session and skips the test with the
reason where it is absent. No test module probes for a part itself, so a new test cannot forget the check.
"""

import fcntl
import functools
import os
import shutil
import sys
from pathlib import Path

import pytest

# Tests run from a checkout without requiring `pip install -e .` first.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fluxmpi.cluster import ClusterLayout, LocalCluster  # noqa: E402
from fluxmpi.cluster.preflight import missing_commands  # noqa: E402
from fluxmpi.site import Site  # noqa: E402
from spack_concretize import PrivateSpack, builtin_repo_dir, spack_executable, spack_unavailable_reason  # noqa: E402

# The suite's own cluster: its own name, subnet and node names, so a user's cluster can stay up beside it.
TEST_CLUSTER_NAME = os.environ.get("FLUXMPI_TEST_CLUSTER", "fxtest")
TEST_CLUSTER_NODES = 4


def cluster_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "the local cluster needs root"
    missing = missing_commands()
    if missing:
        return f"missing {', '.join(sorted(missing))}: run install_scripts/install-cluster-deps.sh"
    return None


def flux_unavailable_reason() -> str | None:
    """Why the Flux paths cannot run here (flux-core, its Python bindings, their versions), or None."""
    from fluxmpi.launch.flux.install import FluxSetupError, check_flux
    try:
        check_flux()
    except FluxSetupError as err:
        return str(err)
    return None


def flux_bindings_unavailable_reason() -> str | None:
    """Why Flux's Python bindings do not import here (the flux-python wheel needs libflux-core), or None."""
    try:
        import flux.job  # noqa: F401
    except (ImportError, OSError) as err:
        return f"the Flux Python bindings do not import ({err})"
    return None


def shellcheck_unavailable_reason() -> str | None:
    if shutil.which("shellcheck") is None:
        return "shellcheck is not installed: run install_scripts/install.sh --test"
    return None


def charliecloud_unavailable_reason() -> str | None:
    missing = [c for c in ("ch-run", "mmdebstrap") if shutil.which(c) is None]
    if missing:
        return f"{' and '.join(missing)} not installed: run install_scripts/install.sh --test"
    return None


def pbs_unavailable_reason() -> str | None:
    """Why the local PBS cluster cannot run here (the local cluster's parts, an OpenPBS build, PostgreSQL)."""
    from fluxmpi.cluster.pbs import pbs_unavailable_reason as missing_pbs
    return cluster_unavailable_reason() or missing_pbs()


# marker -> what it needs -> why that is absent here (None: present)
PARTS = {
    "cluster": ("the local multi-node cluster", cluster_unavailable_reason),
    "flux": ("a working flux-core", flux_unavailable_reason),
    "flux_bindings": ("Flux's Python bindings", flux_bindings_unavailable_reason),
    "shellcheck": ("shellcheck", shellcheck_unavailable_reason),
    "spack": ("a real Spack", spack_unavailable_reason),
    "charliecloud": ("Charliecloud and mmdebstrap", charliecloud_unavailable_reason),
    "pbs": ("the local PBS cluster (OpenPBS)", pbs_unavailable_reason),
}


@functools.cache
def part_missing(marker: str) -> str | None:
    """Why the part behind `marker` is absent (checked once per session), or None."""
    return PARTS[marker][1]()


def pytest_runtest_setup(item):
    for marker, (what, _) in PARTS.items():
        if item.get_closest_marker(marker) is not None:
            reason = part_missing(marker)
            if reason:
                pytest.skip(f"needs {what}: {reason}")


@pytest.fixture(scope="session")
def claimed():
    """Hold this session's test clusters (the one named FLUXMPI_TEST_CLUSTER [fxtest], and the module clusters
    named after it or fixed): a second pytest session on the same machine would take them down under the first
    one's feet (each fixture begins with `down`), so it fails at once instead, naming the way out. Every fixture
    that boots a cluster asks for this; the lock goes with this process."""
    name = TEST_CLUSTER_NAME
    path = Path(os.environ.get("FLUXMPI_CLUSTER_ROOT", "/var/tmp/fluxmpi/clusters")).parent / f"test-{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pytest.fail(f"test cluster {name!r} is in use by another test session (pid {f.read().strip() or '?'}); "
                    f"give this one its own: FLUXMPI_TEST_CLUSTER=<name> python3 -m pytest ...", pytrace=False)
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    yield
    f.close()


@pytest.fixture(scope="session")
def cluster(claimed):
    """A 4-node local Slurm cluster, booted once per session and removed at its end (asserting nothing is left)."""
    reason = part_missing("cluster")
    if reason:
        pytest.skip(reason)
    local = LocalCluster(ClusterLayout(name=TEST_CLUSTER_NAME, nodes=TEST_CLUSTER_NODES))
    local.down()  # a previous run killed mid-way may have left one behind
    local.up()
    yield local
    local.down()
    left = local.leftovers()
    assert not left, f"the test cluster left behind: {left}"


@pytest.fixture(scope="module")
def site(cluster, request):
    """The test cluster as a Site. A module that kills nodes on purpose sets SLURMD_TIMEOUT (seconds) so Slurm
    marks a dead node DOWN within seconds; the cluster's own value is restored after the module."""
    timeout = getattr(request.module, "SLURMD_TIMEOUT", None)
    if timeout is None:
        yield Site.from_local_cluster(cluster)
        return
    import faults
    previous = faults.set_slurmd_timeout(cluster, timeout)
    try:
        yield Site.from_local_cluster(cluster)
    finally:
        faults.set_slurmd_timeout(cluster, previous)


_UNHEALED: list[str] = []     # why the session's cluster could not be healed (then every later `healthy` fails)


@pytest.fixture
def healthy(cluster, site):
    """Before and after each test: every link up, every killed node powered on again, every node idle and
    answering Slurm (a node whose link just came back can read `idle*` and be marked DOWN moments later).
    A node that cannot be healed fails the test with what holds it, once: later tests that need a healthy
    cluster fail at once, naming that first failure, instead of each waiting for the same node again."""
    import faults

    if _UNHEALED:
        pytest.fail(f"the test cluster could not be healed earlier in this session: {_UNHEALED[0]}", pytrace=False)

    def heal():
        try:
            heal_nodes()
        except faults.FaultError as err:
            _UNHEALED.append(str(err).splitlines()[0])
            raise

    def heal_nodes():
        # A job a test left behind (a block not cancelled, a holder job) would keep its node busy for every
        # later test: cancel what is left, and say what it was.
        left = cluster.run(["squeue", "-h", "-o", "%i %j %T %N"], timeout=30).stdout.split("\n")
        left = [line for line in left if line.strip()]
        if left:
            print(f"\nhealthy: cancelling jobs left on the test cluster: {left}")
            cluster.run(["scancel", *[line.split()[0] for line in left]], timeout=30)
        revived = []
        for node in cluster.layout.node_names:
            faults.set_link(cluster, node, up=True)
            if not faults.slurmd_running(cluster, node):
                faults.revive_node(cluster, node)
                revived.append(node)
        for node in cluster.layout.node_names:
            try:
                # 60 s: a job ending (Slurm's KillWait) or a link just back (SlurmdTimeout) is over by then; what
                # holds a node longer (seen once: 120 s in the suite after the drained-node test, 2.7 s alone) the
                # DOWN+RESUME below lets go of at once.
                faults.wait_node_state(cluster, node, ("idle",), 10 if node in revived else 60, responding=True)
            except faults.FaultError:   # a revived node Slurm still holds a dead job on: up to a minute otherwise
                held = cluster.run(["squeue", "-h", "-w", node, "-o", "%i"], timeout=30).stdout.split()
                if held:             # a job that came after the first look
                    print(f"\nhealthy: cancelling jobs that came to {node} meanwhile: {held}")
                    cluster.run(["scancel", *held], timeout=30)
                faults.force_idle(cluster, node)
                try:
                    faults.wait_node_state(cluster, node, ("idle",), 60, responding=True)
                except faults.FaultError as err:
                    raise faults.FaultError(f"{err}\n{faults.describe_node(cluster, node)}") from None
    heal()
    yield
    heal()


@pytest.fixture(scope="session")
def c_binary(tmp_path_factory):
    """The bundled C app, compiled once per session with Open MPI's mpicc."""
    from fluxmpi.mpi_apps import compile_c_app
    if shutil.which("mpicc") is None:
        pytest.skip("Open MPI's mpicc not installed: run install_scripts/install-cluster-deps.sh")
    return compile_c_app(tmp_path_factory.mktemp("bin"), mpicc="mpicc")


@pytest.fixture(scope="session")
def private_spack(tmp_path_factory):
    """The real Spack ($FLUXMPI_SPACK) with every configuration scope and cache private to this session."""
    reason = part_missing("spack")
    if reason:
        pytest.skip(reason)
    spack = PrivateSpack(spack_executable(), builtin_repo_dir(), tmp_path_factory.mktemp("spack-home"))
    spack.declare_host_gcc()
    return spack
