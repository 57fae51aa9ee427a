"""The elastic local cluster: Slurm power saving with real power-up latency, and what a warm hold saves.

The cluster tests boot their own 2-node elastic cluster ($FLUXMPI_TEST_CLUSTER + "e", e.g. "fxopse"), so the
session cluster keeps its plain behaviour; it is removed at the end, asserting nothing is left.
"""

import subprocess
import time

import pytest
from conftest import TEST_CLUSTER_NAME, cluster_unavailable_reason

from fluxmpi.cluster import (
    ClusterLayout,
    LayoutError,
    LocalCluster,
    configs,
    elastic,
    network,
)
from fluxmpi.cluster.processes import pids_in_netns

RESUME_DELAY = 6.0
SUSPEND_TIME = 10


# --- layout and configuration, without booting ---------------------------------------------------

@pytest.mark.parametrize("kw, fragment", [
    ({"resume_delay": 5}, "--resume-delay 5 only applies to an elastic cluster: add --elastic"),
    ({"elastic": True, "resume_delay": -1}, "--resume-delay -1 is out of range"),
    ({"elastic": True, "resume_delay": 601}, "--resume-delay 601 is out of range"),
    ({"elastic": True, "suspend_time": 2}, "suspend_time 2 is out of range"),
])
def test_bad_elastic_settings_name_the_value(kw, fragment):
    with pytest.raises(LayoutError) as err:
        ClusterLayout(name="fxconf", **kw)
    assert fragment in str(err.value)


def test_power_saving_is_configured_only_when_elastic():
    plain = configs.slurm_conf(ClusterLayout(name="fxconf", nodes=2)).splitlines()
    assert not any(line.startswith(("Suspend", "Resume")) for line in plain)
    lay = ClusterLayout(name="fxconf", nodes=2, elastic=True, resume_delay=20, suspend_time=45)
    text = configs.slurm_conf(lay).splitlines()
    for line in [f"SuspendProgram={lay.power_program('suspend')}", f"ResumeProgram={lay.power_program('resume')}",
                 "SuspendTime=45", f"ResumeTimeout={20 + configs.RESUME_SLACK}",
                 f"SuspendTimeout={configs.SUSPEND_TIMEOUT}"]:
        assert line in text
    # Everything that makes namespaced nodes work is still there.
    assert "MpiDefault=pmix" in text and f"TmpFS={lay.state_dir}/tmp/%n" in text


def test_power_program_runs_without_an_environment(tmp_path, monkeypatch):
    """slurmctld starts it with an almost empty environment: the script must find python and fluxmpi itself."""
    monkeypatch.setenv("FLUXMPI_CLUSTER_ROOT", str(tmp_path))
    lay = ClusterLayout(name="fxgone", nodes=2, elastic=True)
    script = tmp_path / "resume"
    script.write_text(configs.power_program(lay, "resume"))
    lay.log("power").parent.mkdir(parents=True)
    proc = subprocess.run(["env", "-i", "/bin/sh", str(script), "fxgonen[1-2]"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    # No state for this cluster: the program says so and starts nothing.
    assert "is gone; nothing to do" in lay.log("power").read_text()


# --- on a real elastic cluster ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def elastic_cluster(claimed):
    reason = cluster_unavailable_reason()
    if reason:
        pytest.skip(reason)
    name = (TEST_CLUSTER_NAME + "e")[:12]
    local = LocalCluster(ClusterLayout(name=name, nodes=2, elastic=True, resume_delay=RESUME_DELAY,
                                       suspend_time=SUSPEND_TIME))
    local.down()
    local.up()
    yield local
    local.down()
    assert local.leftovers() == []


def _node_processes(cluster, node):
    return pids_in_netns(network.NETNS_DIR / cluster.layout.netns(node))


@pytest.mark.cluster
def test_idle_nodes_power_down_by_themselves(elastic_cluster):
    c = elastic_cluster
    elastic.wait_states(c, c.layout.node_names, lambda s: s.endswith(elastic.POWERED_DOWN),
                        "the idle nodes to power down", SUSPEND_TIME + configs.SUSPEND_TIMEOUT + 30)
    for node in c.layout.node_names:
        assert _node_processes(c, node) == [], f"{node} is powered down but runs processes"
    status = c.status()
    assert status.problems == []          # off, not broken
    assert all(not n.slurmd and not n.sshd and n.slurm_state == "idle~" for n in status.nodes)
    assert "suspend" in c.layout.log("power").read_text()


@pytest.mark.cluster
def test_a_job_powers_nodes_up_after_the_resume_delay(elastic_cluster):
    c = elastic_cluster
    elastic.power_down(c)
    start = time.monotonic()
    proc = c.run(["srun", "-N2", "hostname"], timeout=RESUME_DELAY + 90)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == c.layout.node_names
    assert took >= RESUME_DELAY
    status = c.status()
    assert status.problems == [] and all(n.slurmd and n.sshd for n in status.nodes)
    # ssh reaches a resumed node like any other.
    node = c.layout.node_names[0]
    ssh = subprocess.run([str(c.layout.ssh_wrapper), node, "hostname"], capture_output=True, text=True, timeout=30)
    assert ssh.stdout.strip() == node


@pytest.mark.cluster
def test_warm_hold_gives_the_first_result_sooner(elastic_cluster):
    startup = 3.0
    cold = elastic.time_to_first_result(elastic_cluster, 2, startup, warm=False, batch=False)
    warm = elastic.time_to_first_result(elastic_cluster, 2, startup, warm=True, batch=False)
    print(f"\ntime to first result, srun -N2 hostname, startup {startup:g}s, resume delay {RESUME_DELAY:g}s: "
          f"cold {cold['first_result']}s, warm {warm['first_result']}s")
    assert cold["first_result"] >= startup + RESUME_DELAY
    assert warm["first_result"] < cold["first_result"]


@pytest.mark.cluster
@pytest.mark.flux
def test_flux_jobs_gives_idle_blocks_back_and_the_next_burst_brings_blocks_back(elastic_cluster, tmp_path):
    """Two bursts of 1-node tasks, a quiet gap longer than idle_release + SuspendTime between them: the blocks
    of the first burst are given back, the nodes power down, and the second burst runs in new blocks."""
    from fluxmpi.bench import bursts
    from fluxmpi.site import Site

    site = Site.from_local_cluster(elastic_cluster)
    plan = bursts.BurstPlan(bursts=2, tasks=3, sleep=3, gap=SUSPEND_TIME + configs.SUSPEND_TIMEOUT + 12,
                            idle_release=3)
    run = bursts.run_variant(site, plan, "elastic", bursts.variants(site, plan)["elastic"], tmp_path, print)
    assert run["status"] == "ok", run["failed"]
    assert len(run["tasks"]) == 6
    spans = run["block_spans"]
    released = [s for s in spans if s["released"]]
    assert released, spans
    first_release = min(s["ended"] for s in released)
    second_burst = min(t["t_launch"] for t in run["tasks"] if t["task"].startswith("b1-"))
    assert any(s["connected"] and s["connected"] > first_release for s in spans), spans   # a block came back
    # Between the bursts every node was off for a while (the sampler saw none powered up).
    assert any(n == 0 for t, n in run["powered"] if first_release < t < second_burst), run["powered"]
    u = run["usage"]
    assert u["unaccounted"] == [] and 0 < u["used"] < u["paid"]
    assert u["used"] >= 6 * 3 * 0.9      # six tasks of 3 s on one node each
    print(f"\nelastic flux-jobs, 2 bursts of 3 x 3 s: {len(spans)} blocks, paid {u['paid']:.0f} node-s, used "
          f"{u['used']:.0f}, idle {100 * u['idle_fraction']:.0f}%")


@pytest.mark.cluster
def test_down_during_a_resume_delay_leaves_nothing(elastic_cluster):
    c = elastic_cluster
    elastic.power_down(c)
    log = c.layout.log("power")
    seen = log.read_text().count("powering up")
    job = subprocess.Popen(["srun", "-N2", "hostname"], env=c.environ(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while log.read_text().count("powering up") == seen:
            assert time.monotonic() < deadline, "slurmctld did not run the resume program"
            time.sleep(0.2)
        assert "down" in c.down()          # while the resume program still sleeps
        time.sleep(RESUME_DELAY + 1)       # past the moment it would have started the daemons
        assert c.leftovers() == []
    finally:
        job.kill()
        job.wait(timeout=30)
