import os
import sys
from pathlib import Path

import pytest

# Tests run from a checkout without requiring `pip install -e .` first.
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fluxmpi.cluster import ClusterLayout, LocalCluster  # noqa: E402
from fluxmpi.cluster.preflight import missing_commands  # noqa: E402

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


@pytest.fixture(scope="session")
def cluster():
    """A 4-node local Slurm cluster, booted once per session and removed at its end (asserting nothing is left)."""
    reason = cluster_unavailable_reason()
    if reason:
        pytest.skip(reason)
    local = LocalCluster(ClusterLayout(name=TEST_CLUSTER_NAME, nodes=TEST_CLUSTER_NODES))
    local.down()  # a previous run killed mid-way may have left one behind
    local.up()
    yield local
    local.down()
    left = local.leftovers()
    assert not left, f"the test cluster left behind: {left}"
