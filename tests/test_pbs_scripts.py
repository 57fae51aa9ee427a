"""PBS Pro without a PBS server: the job scripts fluxmpi's configs write, the mpiexec lines, and how qstat's and
pbsnodes' JSON is read. These run everywhere; tests/test_pbs_cluster.py runs the same configs on a real OpenPBS."""

import os
import subprocess
from pathlib import Path

import pytest

from fluxmpi import configs, pbs
from fluxmpi.launch.pbs_blocks import pbs_options, pool_per_node_launcher
from fluxmpi.launchers import launch_argv
from fluxmpi.site import Site
from fluxmpi.spec import MPITaskSpec, SpecError

POLARIS = Site(name="pbs:debug", partition="debug", nodes=4, cores_per_node=64, gpus_per_node=4, scheduler="pbs",
               mpiexec="pals", batch_options=("-A myproject", "-l filesystems=home:eagle"))


def _job_script(provider, tmp_path: Path, command: str = "process_worker_pool.py --foo") -> str:
    """The script Parsl's PBSProProvider.submit writes, rendered by Parsl's own template code (no qsub)."""
    provider.script_dir = str(tmp_path)
    config = {"submit_script_dir": str(tmp_path), "nodes_per_block": provider.nodes_per_block,
              "ncpus": provider.cpus_per_node, "walltime": provider.walltime,
              "scheduler_options": provider.scheduler_options, "worker_init": provider.worker_init,
              "job_stdout_path": str(tmp_path / "out"), "job_stderr_path": str(tmp_path / "err"),
              "select_options": ":" + provider.select_options if provider.select_options else "",
              "user_script": provider.launcher(command, 1, provider.nodes_per_block, str(tmp_path))}
    path = tmp_path / "block.submit"
    provider._write_submit_script(provider.template_string, str(path), "parsl.block", config)
    return path.read_text()


def test_mpi_mode_block_is_whole_nodes_scattered_not_rerunnable_with_the_site_lines(tmp_path):
    cfg = configs.config("htex-mpiexec", site=POLARIS, nodes_per_block=2, walltime="01:00:00",
                         worker_init="module load x")
    ex = cfg.executors[0]
    assert ex.fluxmpi_launcher == "mpiexec-pals" and ex.mpi_launcher == "mpiexec"
    script = _job_script(ex.provider, tmp_path)
    lines = script.splitlines()
    for expected in ("#PBS -l select=2:ncpus=64:ngpus=4", "#PBS -l place=scatter:excl", "#PBS -r n",
                     "#PBS -A myproject", "#PBS -l filesystems=home:eagle", "#PBS -l walltime=01:00:00",
                     "module load x"):
        assert expected in lines, (expected, script)
    # PBS passes no variable of the submitter's: the block exports this process's PATH (its Python) itself.
    assert f"export PATH={os.environ['PATH']}" in lines or any(ln.startswith("export PATH='") for ln in lines)
    # The MPI-mode pool runs once, on the block's first node (its ranks go out with mpiexec per task).
    assert "mpiexec" not in script.split("module load x")[1].split("process_worker_pool.py")[0]
    assert ex.provider.queue == "debug"


def test_one_pool_per_node_is_polaris_mpiexec_launcher_line(tmp_path):
    # ALCF's Parsl config for Polaris: MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--depth=64 --ppn 1")
    cfg = configs.config("htex-gpus", site=POLARIS, nodes_per_block=2)
    ex = cfg.executors[0]
    assert ex.available_accelerators == ["0", "1", "2", "3"] and ex.max_workers_per_node == 4
    script = _job_script(ex.provider, tmp_path, "process_worker_pool.py")
    line = next(ln for ln in script.splitlines() if ln.startswith("mpiexec "))
    assert line.split()[:6] == ["mpiexec", "--cpu-bind", "none", "--ppn", "1", "--depth=64"], line
    assert "-n $WORKERCOUNT --hostfile $HOSTFILE" in line and "WORKERCOUNT=2" in script
    assert "sort -u $PBS_NODEFILE" in script


@pytest.mark.parametrize("mpiexec, head", [("mpich", ["mpiexec", "-bind-to", "none", "-ppn", "1"]),
                                           ("openmpi", ["mpiexec", "--bind-to", "none", "--map-by", "ppr:1:node"])])
def test_one_pool_per_node_in_each_mpiexec_s_own_words(mpiexec, head):
    site = Site(name="pbs:q", partition="q", nodes=2, cores_per_node=2, scheduler="pbs", mpiexec=mpiexec)
    line = next(ln for ln in pool_per_node_launcher(site)("cmd", 1, 2).splitlines() if ln.startswith("mpiexec "))
    assert line.split()[:len(head)] == head, line


def test_rank_lines_for_a_task_on_each_mpiexec(tmp_path):
    spec = MPITaskSpec(nodes=2, ranks_per_node=2, cores_per_rank=2, gpus_per_rank=1)
    pals = launch_argv(spec, "mpiexec-pals", ["x1", "x2", "x3"], ["./app"], session_base=str(tmp_path))
    assert pals[:10] == ["mpiexec", "-n", "4", "--ppn", "2", "--depth", "2", "--cpu-bind", "depth", "--hostfile"]
    assert Path(pals[10]).read_text() == "x1\nx2\n" and Path(pals[10]).parent == tmp_path
    assert pals[11:13] == ["sh", "-c"] and pals[-1] == "./app"   # each rank its own GPU from PALS_LOCAL_RANKID
    mpich = launch_argv(spec, "mpiexec-mpich", ["n1", "n2"], ["./app"])
    assert mpich == ["mpiexec.mpich", "-n", "4", "-ppn", "2", "-bind-to", "core:2", "-hosts", "n1,n2", "./app"]


def test_paths_that_need_slurm_are_refused_on_a_pbs_site_before_anything_is_submitted():
    for path in ("htex", "flux", "plain"):
        with pytest.raises(SpecError, match=f"path '{path}' runs on Slurm only.*htex-mpiexec"):
            configs.config(path, site=POLARIS)
    odd = Site(name="pbs:q", partition="q", nodes=2, cores_per_node=2, scheduler="pbs", mpiexec="aprun")
    with pytest.raises(SpecError, match="mpiexec='aprun' is not known"):
        configs.config("htex-mpiexec", site=odd)


def test_static_blocks_on_pbs_run_each_task_over_the_block_by_the_site_s_mpiexec(tmp_path):
    from fluxmpi.apps import task_nodes
    ex = configs.config("static", site=POLARIS, nodes_per_block=2).executors[0]
    assert ex.fluxmpi_launcher == "mpiexec-pals" and ex.provider.nodes_per_block == 2
    assert "#PBS -l select=2:ncpus=64:ngpus=4" in _job_script(ex.provider, tmp_path).splitlines()
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x1\nx1\nx2\n")
    assert task_nodes({"PBS_NODEFILE": str(nodefile)}) == ["x1", "x2"]
    assert task_nodes({"PBS_NODEFILE": str(nodefile), "PARSL_MPI_NODELIST": "x2"}) == ["x2"]


def test_the_slurm_blocks_carry_the_site_s_batch_options_too(tmp_path):
    site = Site(name="s", partition="p", nodes=2, cores_per_node=2, batch_options=("--account=proj",))
    ex = configs.config("htex", site=site).executors[0]
    assert "#SBATCH --account=proj" in ex.provider.scheduler_options.splitlines()
    assert pbs_options(POLARIS)[:2] == ["-l place=scatter:excl", "-r n"]


def test_job_script_is_valid_bash(tmp_path):
    cfg = configs.config("htex-gpus", site=POLARIS, nodes_per_block=2)
    script = _job_script(cfg.executors[0].provider, tmp_path)
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr


# --- reading PBS's answers ---------------------------------------------------------------------------------

def test_exec_host_gives_each_host_once_in_order():
    assert pbs.exec_hosts("x3001c0s7b0n0/0*64+x3001c0s13b1n0/0*64") == ["x3001c0s7b0n0", "x3001c0s13b1n0"]
    assert pbs.exec_hosts("n1/0+n1/1+n2/0") == ["n1", "n2"]
    assert pbs.exec_hosts("") == []


@pytest.mark.parametrize("job, state", [
    ({"job_state": "Q"}, "PENDING"), ({"job_state": "H"}, "PENDING"), ({"job_state": "R"}, "RUNNING"),
    ({"job_state": "E"}, "COMPLETING"), ({"job_state": "F", "Exit_status": 0}, "COMPLETED"),
    ({"job_state": "F", "Exit_status": 1}, "FAILED"), ({"job_state": "F", "Exit_status": 271}, "CANCELLED"),
    ({"job_state": "F", "Exit_status": -11}, "CANCELLED"), ({"job_state": "Z"}, "UNKNOWN")])
def test_pbs_job_states_get_the_watch_s_names_and_keep_pbs_s_letter(job, state):
    got, reason = pbs.job_state_of({**job, "comment": "Job run at Fri Dec 04"})
    assert got == state
    assert reason.startswith(f"PBS state {job['job_state']}: Job run at")
    assert (got in pbs.ACTIVE_STATES) == (job["job_state"] in "QHRE")


def test_flux_inside_a_pbs_block_starts_one_broker_per_node_with_the_site_s_mpiexec(tmp_path):
    from fluxmpi.launch.flux.block import block_command
    info = str(tmp_path / "block-0" / "instance.json")
    mpich = block_command(info, "flux", 2, 4, 600, python="python3", gpus_per_node=4, brokers_by="mpiexec-mpich")
    steps = mpich.split(" && ")
    assert steps[0] == f'sort -u "$PBS_NODEFILE" > {tmp_path}/block-0/hosts'
    assert 'hosts = "%s"' in steps[1] and f'"$(paste -sd, {tmp_path}/block-0/hosts)"' in steps[1]
    assert steps[2].startswith(f"mpiexec.mpich -n 2 -ppn 1 -bind-to none -disable-auto-cleanup -f {tmp_path}/block-0/"
                               f"hosts flux start -c {tmp_path}/block-0/resource.toml python3 -m "
                               "fluxmpi.launch.flux.block"), steps[2]
    # Polaris: `mpiexec -n NODES --ppn 1 flux start` (PALS), no resource file without GPUs.
    pals = block_command(info, "flux", 3, 64, 600, python="python3", link_timeout=30, brokers_by="mpiexec-pals")
    assert pals.split(" && ")[1].startswith(f"mpiexec -n 3 --ppn 1 --cpu-bind none --hostfile {tmp_path}/block-0/hosts "
                                            "flux start -Stbon.tcp_user_timeout=30s python3 -m")
    # On Slurm the line is srun's, as before.
    assert block_command(info, "flux", 2, 4, 600, python="python3").startswith("srun --mpi=pmi2 --nodes=2")
