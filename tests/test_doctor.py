"""`fluxmpi doctor`: the report reads the real tools; the probe's verdicts agree with what the tests see when
they run the same launchers themselves."""

import os
import shutil
import subprocess

import pytest
from click.testing import CliRunner

from fluxmpi import doctor, placement
from fluxmpi.cli.doctor import doctor_command
from fluxmpi.launch.flux import install as flux_install
from fluxmpi.mpi_apps import app_command, compile_c_app

HAS_OMPI = shutil.which("ompi_info") is not None
HAS_MPICH = shutil.which("mpicc.mpich") is not None


@pytest.mark.skipif(not HAS_OMPI, reason="Open MPI not installed")
def test_open_mpi_pmi_support_is_read_from_ompi_info():
    out = subprocess.run(["ompi_info", "--parsable"], capture_output=True, text=True, timeout=60).stdout
    pmis = doctor.openmpi_pmi(out)
    assert any(p.startswith("ext3x: PMIx") for p in pmis)
    check = doctor.check_openmpi()
    assert check.status == doctor.OK and "4.1" in check.summary
    # Debian's build has no Slurm PMI-1/2 component: the report says so, which is why srun --mpi=pmi2 fails.
    assert not any(p.startswith(("s1", "s2")) for p in pmis)
    assert any("use --mpi=pmix, not --mpi=pmi2" in d for d in check.details)


@pytest.mark.skipif(not HAS_MPICH, reason="MPICH not installed")
def test_mpich_report_names_version_and_hydra():
    check = doctor.check_mpich()
    assert check.status == doctor.OK and check.summary.startswith("MPICH 4.")
    assert any("slurm" in d for d in check.details if d.startswith("hydra launchers"))


def test_flux_and_parsl_checks_use_the_real_installs():
    parsl = doctor.check_parsl()
    assert parsl.status == doctor.OK
    flux = doctor.check_flux()
    try:
        flux_install.find_flux()
    except flux_install.FluxSetupError:   # no flux-core anywhere fluxmpi looks
        assert flux.status == doctor.SKIP
    else:
        assert flux.status == doctor.OK and "bindings match" in flux.summary


def test_probe_timeout_is_checked_first():
    with pytest.raises(doctor.DoctorError, match="--timeout 1"):
        doctor.probe(cluster=None, timeout=1)


def test_a_named_cluster_must_be_up():
    result = CliRunner().invoke(doctor_command, ["--cluster-name", "fxnosuch"])
    assert result.exit_code == 1 and "local cluster 'fxnosuch' is not up" in result.output


@pytest.mark.cluster
def test_report_on_the_cluster(cluster):
    result = CliRunner().invoke(doctor_command, ["--cluster-name", cluster.layout.name])
    lines = result.output.splitlines()
    assert any(line.startswith("OK    ssh") and f"4/4 nodes of {cluster.layout.name}" in line for line in lines)
    plugins = next(line for line in lines if "srun --mpi=list" in line)
    assert "pmix" in plugins and "pmi2" in plugins


@pytest.fixture(scope="module")
def probe_results(cluster):
    results = doctor.probe(cluster, timeout=60)
    return {(r.launcher, r.mpi): r for r in results}


def _run_myself(cluster, tmp_path, mpicc, argv_prefix):
    """Run the probe app the way a user would, outside the doctor, and return (rc, stderr, records)."""
    binary = compile_c_app(tmp_path, mpicc=mpicc, env=cluster.environ(), name=f"mine_{mpicc.replace('.', '_')}")
    proc = cluster.run([*argv_prefix, *app_command("c", task="mine", out_dir=None, c_binary=binary)], timeout=90)
    return proc.returncode, proc.stderr, placement.parse_lines(proc.stdout.splitlines(), ignore_non_json=True).records


@pytest.mark.cluster
@pytest.mark.skipif(not HAS_OMPI, reason="Open MPI not installed")
def test_open_mpi_verdicts_match_what_srun_and_mpirun_do(cluster, probe_results, tmp_path):
    pmix = probe_results[("srun --mpi=pmix", "Open MPI")]
    pmi2 = probe_results[("srun --mpi=pmi2", "Open MPI")]
    mpirun = probe_results[("mpirun (Open MPI) in salloc", "Open MPI")]
    assert pmix.works and mpirun.works
    assert pmi2.works is False and "OMPI was not built with SLURM's PMI support" in pmi2.reason
    rc, err, records = _run_myself(cluster, tmp_path, "mpicc", ["srun", "--mpi=pmi2", "-N2", "-n2"])
    assert rc != 0 and "OMPI was not built with SLURM's PMI support" in err
    rc, err, records = _run_myself(cluster, tmp_path, "mpicc", ["srun", "--mpi=pmix", "-N2", "-n2"])
    assert rc == 0 and sorted(r.size for r in records) == [2, 2]
    rc, err, records = _run_myself(cluster, tmp_path, "mpicc", ["salloc", "-N2", "-n2", "mpirun", "-n", "2"])
    assert rc == 0 and sorted(r.size for r in records) == [2, 2] and len({r.host for r in records}) == 2


@pytest.mark.cluster
@pytest.mark.skipif(not HAS_MPICH, reason="MPICH not installed")
def test_mpich_singletons_are_caught(cluster, probe_results, tmp_path):
    verdict = probe_results[("srun --mpi=pmix", "MPICH")]
    rc, _, records = _run_myself(cluster, tmp_path, "mpicc.mpich", ["srun", "--mpi=pmix", "-N2", "-n2"])
    # Every rank exits 0 and says it is alone: exit codes alone would call this a success.
    assert rc == 0 and [r.size for r in records] == [1, 1]
    assert verdict.works is False and "singletons" in verdict.reason
    rc, _, records = _run_myself(cluster, tmp_path, "mpicc.mpich", ["srun", "--mpi=pmi2", "-N2", "-n2"])
    assert rc == 0 and sorted(r.size for r in records) == [2, 2]
    assert probe_results[("srun --mpi=pmi2", "MPICH")].works


@pytest.mark.cluster
def test_every_probe_was_bounded_and_left_nothing(cluster, probe_results):
    assert len(probe_results) == len(doctor.PROBES) * len(doctor.MPIS)
    assert all(r.seconds <= 60 + 15 for r in probe_results.values())
    assert not list(cluster.layout.state_dir.glob("doctor-*"))
    left = cluster.run(["squeue", "-h", "-n", doctor.PROBE_JOB_NAME, "-o", "%i %T"]).stdout.split()
    assert left == []


@pytest.mark.cluster
def test_cli_prints_the_matrix(cluster, probe_results):
    result = CliRunner().invoke(doctor_command, ["--probe", "--cluster-name", cluster.layout.name,
                                                 "--timeout", "60"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("launcher"))
    assert header.split()[1:] == ["Open", "MPI", "MPICH"]
    # The printed verdicts are the probe's verdicts (a second run, same facts): first word of each cell.
    for launcher in doctor.PROBES:
        row = next(line for line in lines if line.startswith(launcher.label + " "))
        words = [w for w in row[len(launcher.label):].split() if w in ("works", "FAILS", "not")]
        expected = [probe_results[(launcher.label, m.label)] for m in doctor.MPIS]
        assert words == ["works" if r.works else "FAILS" if r.works is False else "not" for r in expected], row


@pytest.mark.skipif(shutil.which("srun") is None, reason="Slurm's srun not installed")
def test_slurm_check_says_no_slurm_is_configured_instead_of_slurms_fatal_line(tmp_path):
    """Issue 11: with no cluster up, Slurm's raw 'fatal: Could not establish a configuration source' was a FAIL."""
    check = doctor.check_slurm({"PATH": os.environ["PATH"], "SLURM_CONF": str(tmp_path / "slurm.conf")})
    assert check.status == doctor.SKIP, check
    assert "no Slurm is configured here" in check.summary and "fluxmpi cluster up" in check.summary
    assert f"SLURM_CONF={tmp_path / 'slurm.conf'} does not exist" in check.summary
    if not os.path.exists("/etc/slurm/slurm.conf"):     # no config anywhere: what srun itself says
        check = doctor.check_slurm({"PATH": os.environ["PATH"]})
        assert check.status == doctor.SKIP and "no SLURM_CONF, no /etc/slurm/slurm.conf" in check.summary, check
        assert "fatal" not in check.summary
