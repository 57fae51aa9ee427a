"""The local cluster's names, addresses and config files, checked without booting anything."""

import pytest

from fluxmpi.cluster import ClusterLayout, LayoutError, configs


def test_default_layout_names_nodes_and_addresses():
    lay = ClusterLayout(nodes=3, cpus_per_node=4)
    assert lay.node_names == ["fxm1", "fxm2", "fxm3"]
    assert lay.nodelist == "fxm[1-3]"
    net = lay.network
    assert lay.login_address == str(net.network_address + 1)
    addrs = [lay.node_address(n) for n in lay.node_names]
    assert len(set(addrs)) == 3 and all(a.startswith(str(net.network_address)[:-1]) for a in addrs)
    assert len(lay.bridge) <= 15 and all(len(lay.veth_host(n)) <= 15 for n in lay.node_names)


def test_two_cluster_names_do_not_collide():
    a, b = ClusterLayout(name="fluxmpi"), ClusterLayout(name="fxtest")
    assert a.subnet != b.subnet
    assert a.slurmctld_port != b.slurmctld_port
    assert set(a.node_names).isdisjoint(b.node_names)
    assert a.bridge != b.bridge and a.state_dir != b.state_dir


@pytest.mark.parametrize("kw, fragment", [
    ({"nodes": 0}, "--nodes 0"),
    ({"nodes": 65}, "--nodes 65"),
    ({"nodes": 2.5}, "--nodes 2.5"),
    ({"cpus_per_node": 0}, "--cpus-per-node 0"),
    ({"subnet": "8.8.8.0/24"}, "8.8.8.0/24"),
    ({"subnet": "10.1.2.3/24"}, "10.1.2.3/24"),
    ({"subnet": "10.1.2.0/28"}, "10.1.2.0/28"),
    ({"name": "Bad Name"}, "'Bad Name'"),
    ({"gpus_per_node": -1}, "--gpus-per-node -1"),
    ({"gpus_per_node": 17}, "--gpus-per-node 17"),
])
def test_bad_parameters_name_the_value(kw, fragment):
    with pytest.raises(LayoutError) as err:
        ClusterLayout(**kw)
    assert fragment in str(err.value)


def test_slurm_conf_has_the_facts_that_make_namespaced_nodes_work():
    lay = ClusterLayout(name="fxconf", nodes=2, cpus_per_node=3)
    text = configs.slurm_conf(lay)
    for line in ["ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
                 "MpiDefault=pmix", "SlurmdParameters=config_overrides", "ReturnToService=2",
                 f"TmpFS={lay.state_dir}/tmp/%n", f"SlurmdSpoolDir={lay.state_dir}/spool/%n",
                 f"AuthInfo=socket={lay.munge_socket}",
                 f"SlurmctldHost={lay.control_host}({lay.login_address})"]:
        assert line in text.splitlines()
    node_lines = [line for line in text.splitlines() if line.startswith("NodeName=")]
    assert len(node_lines) == 2
    assert all("CPUs=3" in line and "CoresPerSocket=3" in line for line in node_lines)
    assert f"Nodes={lay.nodelist}" in text
    assert "Gres=" not in text and "GresTypes" not in text        # no GPUs unless asked


def test_gpus_are_slurm_gres_over_one_stand_in_device_file_each():
    lay = ClusterLayout(name="fxconf", nodes=2, cpus_per_node=2, gpus_per_node=4)
    text = configs.slurm_conf(lay).splitlines()
    assert "GresTypes=gpu" in text
    assert all(" Gres=gpu:4 " in line for line in text if line.startswith("NodeName="))
    gres = configs.gres_conf(lay).splitlines()
    assert "AutoDetect=off" in gres       # no driver to ask: Slurm takes the files as listed
    for node in lay.node_names:
        files = lay.gpu_files(node)
        assert [f.name for f in files] == ["gpu0", "gpu1", "gpu2", "gpu3"]
        assert f"NodeName={node} Name=gpu File={files[0].parent}/gpu[0-3]" in gres
    assert lay.gres_conf.parent == lay.slurm_conf.parent       # where slurmd looks for it


def test_ssh_settings_pin_the_cluster_key_and_known_hosts():
    lay = ClusterLayout(name="fxconf", nodes=2)
    cfg = configs.ssh_config(lay)
    assert "StrictHostKeyChecking yes" in cfg and "BatchMode yes" in cfg
    known = configs.known_hosts(lay, "ssh-ed25519 AAAAkey comment")
    assert known.startswith("fxconfn1,fxconfn2,") and known.rstrip().endswith("ssh-ed25519 AAAAkey")
    assert configs.ssh_wrapper(lay).startswith("#!/bin/sh") and str(lay.ssh_config) in configs.ssh_wrapper(lay)
