"""The local multi-node Slurm cluster, for real: distinct nodes, ssh, idempotent up, clean down."""

import os
import subprocess
import time

import pytest

from fluxmpi.cluster import (
    ClusterError,
    ClusterLayout,
    LocalCluster,
    PreflightError,
    network,
)
from fluxmpi.cluster.processes import pids_in_netns, wait_gone

pytestmark = pytest.mark.cluster


def test_srun_reaches_three_distinct_nodes(cluster):
    proc = cluster.run(["srun", "-N3", "-n3", "hostname"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    hosts = proc.stdout.split()
    assert len(hosts) == 3 and len(set(hosts)) == 3
    assert set(hosts) <= set(cluster.layout.node_names)


def test_sinfo_shows_every_node_idle(cluster):
    # A step of an earlier test may still be "completing" on a loaded machine: allow it a bounded while.
    deadline = time.monotonic() + 30
    while True:
        proc = cluster.run(["sinfo", "-h", "-N", "-o", "%N %T"])
        states = dict(line.split() for line in proc.stdout.splitlines())
        if set(states.values()) == {"idle"} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(states) == set(cluster.layout.node_names)
    assert set(states.values()) == {"idle"}


def test_nodes_have_their_own_address_and_hostname(cluster):
    lay = cluster.layout
    node = lay.node_names[1]
    proc = subprocess.run([str(lay.ssh_wrapper), node, "hostname; ip -4 -o addr show dev eth0"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    hostname, addr_line = proc.stdout.splitlines()[:2]
    assert hostname == node
    assert f"{lay.node_address(node)}/" in addr_line


def test_second_up_is_a_no_op_and_different_settings_are_refused(cluster):
    assert "already up" in LocalCluster(cluster.layout).up()
    bigger = ClusterLayout(name=cluster.layout.name, nodes=cluster.layout.nodes + 1,
                           cpus_per_node=cluster.layout.cpus_per_node)
    with pytest.raises(ClusterError, match=r"already up with different settings nodes=4 \(asked 5\)"):
        LocalCluster(bigger).up()
    assert cluster.status().problems == []


def test_subnet_clash_is_refused_before_anything_changes(cluster):
    clashing = LocalCluster(ClusterLayout(name="fxclash", nodes=2, subnet=cluster.layout.subnet))
    with pytest.raises(PreflightError, match=r"already in use \(fxbr"):
        clashing.up()
    # Nothing of its own was made (its bridge name is the session cluster's, which must stay up).
    assert not clashing.layout.state_dir.exists()
    assert network.leftover_netns(clashing.layout) == []
    assert clashing.layout.hosts_begin not in network.HOSTS_FILE.read_text()
    assert cluster.status().problems == []


def test_env_exports_point_at_this_cluster(cluster):
    env = cluster.env()
    assert env["SLURM_CONF"] == str(cluster.layout.slurm_conf)
    assert env["OMPI_MCA_btl_tcp_if_include"] == cluster.layout.subnet
    text = cluster.render_env()
    assert f"export SLURM_CONF={cluster.layout.slurm_conf}\n" in text


def test_down_leaves_nothing_and_is_safe_twice(cluster):
    # A second, small cluster beside the session's one, so this test can take it all the way down.
    small = LocalCluster(ClusterLayout(name="fxdown", nodes=2))
    small.down()
    small.up()
    # Leave a job step running so `down` must stop processes that the daemons started, too.
    step = subprocess.Popen(["srun", "-N2", "sleep", "300"], env=small.environ(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline_check = small.run(["squeue", "-h", "-o", "%T"], timeout=20)
        assert deadline_check.returncode == 0
        assert small.leftovers(), "a running cluster should be visible to leftovers()"
        lay = small.layout
        started = {pid for node in lay.node_names for pid in pids_in_netns(network.NETNS_DIR / lay.netns(node))}
        assert started
        said = small.down()
        # Issue 11: `down` returned while stopped daemons were still listed (zombies `pgrep` counts).
        listed = [pid for pid in started if os.path.exists(f"/proc/{pid}")]
        assert listed == [] and "still listed" not in said, said
        assert "down" in said
    finally:
        step.kill()
        step.wait(timeout=30)
    assert small.leftovers() == []
    assert not network.netns_exists(small.layout.netns(small.layout.node_names[0]))
    assert small.layout.hosts_begin not in network.HOSTS_FILE.read_text()
    assert "nothing to do" in small.down()
    # The session cluster is untouched by the other one's teardown.
    assert cluster.status().problems == []


def test_wait_gone_waits_for_a_zombie_to_be_reaped_and_is_bounded():
    """A stopped process stays listed (a zombie) until its parent reaps it: wait_gone waits for that, within
    its bound, and names what is still listed when the bound runs out."""
    import threading
    child = subprocess.Popen(["true"])
    time.sleep(0.3)                       # it has exited; unreaped, it is a zombie of ours
    assert os.path.exists(f"/proc/{child.pid}")
    t = time.monotonic()
    assert wait_gone([child.pid], 0.5) == [child.pid] and time.monotonic() - t < 3
    threading.Timer(0.5, child.wait).start()
    assert wait_gone([child.pid], 10) == []


def test_a_running_cluster_big_enough_for_the_tasks_is_used_as_it_is(cluster):
    """Issue 11: a 4-node cluster up, a run asking --cluster-nodes 8 (the size to boot) for 2-node tasks: used."""
    from fluxmpi.site import SiteError, open_site, running_local_nodes
    name = cluster.layout.name
    with open_site("local", nodes=8, need=2, name=name, log=lambda m: None) as site:
        assert site.nodes == cluster.layout.nodes
    assert running_local_nodes(name) == cluster.layout.nodes
    with pytest.raises(SiteError, match=rf"has 4 nodes but the tasks need 5.*cluster down --name {name}"):
        with open_site("local", nodes=4, need=5, name=name, log=lambda m: None):
            pass
    assert running_local_nodes("fxnosuch") is None
    assert cluster.status().problems == []
