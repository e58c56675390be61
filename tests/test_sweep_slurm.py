"""A real scheduler: a one-node SLURM (Debian's slurm-wlm and munge, `tools/system-deps.sh` installs them) started
on localhost in a temporary folder, a 2-pack sweep launched into it as a job array, each pack a 2-process JAX job
started by srun; both packs complete through the scheduler. The daemons are stopped when the test ends."""

import csv
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from jaxsae.cli import main

pytestmark = pytest.mark.e2e

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
CONF = """ClusterName=jaxsae-test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/socket
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=localhost CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(pid_file: str) -> None:
    """SIGTERM the daemon whose pid the file holds, and wait until it has exited (a zombie counts)."""
    if not os.path.exists(pid_file):
        return
    with open(pid_file) as f:
        pid = int(f.read().split()[0])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """A running one-node SLURM cluster (its own munged, ports and folders); SLURM_CONF points the clients at
    it. Yields the folder holding its logs."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    assert not missing, f"{missing} not found: run tools/system-deps.sh (installs slurm-wlm and munge with apt-get)"
    root = tmp_path / "slurm"
    for folder in ("munge", "state", "spool"):
        (root / folder).mkdir(parents=True)
    conf = root / "slurm.conf"
    conf.write_text(CONF.format(root=root, ctld_port=free_port(), d_port=free_port(), cpus=os.cpu_count()))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    pid_files = [str(root / "slurmd.pid"), str(root / "slurmctld.pid"), str(root / "munge" / "pid")]
    try:
        subprocess.run(["mungekey", "--create", "--keyfile", root / "munge" / "key"], check=True)
        munge = root / "munge"
        subprocess.run(["munged", "--force", f"--socket={munge}/socket", f"--key-file={munge}/key",
                        f"--pid-file={munge}/pid", f"--log-file={munge}/log", f"--seed-file={munge}/seed"], check=True)
        subprocess.run(["slurmctld", "-f", conf], check=True)
        subprocess.run(["slurmd", "-f", conf, "-N", "localhost"], check=True)
        deadline = time.monotonic() + 30
        while subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip() != "idle":
            assert time.monotonic() < deadline, f"the SLURM node never became idle:\n{logs(root)}"
            time.sleep(0.5)
        yield root
    finally:
        for pid_file in pid_files:
            stop(pid_file)


def logs(root) -> str:
    return "\n".join(f"--- {name}\n{(root / name).read_text()[-2000:]}" for name in ("slurmctld.log", "slurmd.log")
                     if (root / name).exists())


def test_a_sweep_launched_on_slurm_trains_both_packs_as_array_tasks(slurm, sweep_spec, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("XLA_FLAGS")  # each task's process sees one CPU device, as a user's would
    spec = sweep_spec(tmp_path, '"hparams.k" = [2, 4]\n"data.streams" = [2]', "max_pack = 1")
    out = tmp_path / "out"
    assert main(["sweep", "launch", spec, "--backend", "slurm", "--out", str(out), "--slurm.tasks_per_pack", "2",
                 "--slurm.cpus_per_task", "1", "--slurm.time", "5"]) == 0
    printed = capsys.readouterr().out
    job = printed.split("submitted: slurm job ", 1)[1].split()[0]
    deadline = time.monotonic() + 150
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still queued or running:\n{logs(slurm)}"
        time.sleep(1)

    for task, pack in enumerate(("pack000", "pack001")):
        log = (out / "slurm" / f"{job}_{task}.out").read_text()
        assert f"jaxsae sweep t: {pack}, slurm job {job}_{task}" in log, log
        for process in (0, 1):  # the pack's two srun tasks, one jax.distributed job
            assert f"packs trained: {pack}; already complete: none (process {process} of 2)" in log, log
        assert (out / "packs" / pack / "run.json").exists(), log
    assert main(["sweep", "summary", str(out)]) == 0
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["member"], r["step"]) for r in rows] == [("k2_streams2", "12"), ("k4_streams2", "12")]
    assert all(0 < float(r["fvu"]) < 1 for r in rows)
