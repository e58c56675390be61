"""A real one-node SLURM for tests: Debian's slurm-wlm and munge (`tools/system-deps.sh` installs them), the
daemons started directly (no systemd) on localhost with their state in a temporary folder. The `slurm` fixture
in conftest.py runs one per test."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time

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


@contextlib.contextmanager
def running_cluster(root, monkeypatch):
    """A running one-node SLURM cluster in the new folder `root` (its own munged, ports and folders); SLURM_CONF
    points the clients at it. Yields `root`, which holds its logs; stops the daemons on exit."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    assert not missing, f"{missing} not found: run tools/system-deps.sh (installs slurm-wlm and munge with apt-get)"
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
