"""SLURM job arrays: the allocation options, the sbatch script, its submission (shared by `jaxsae sweep launch
--backend slurm` and `jaxsae extract --launch slurm`; light: no JAX)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess

from jaxsae.errors import ConfigError, SchedulerError
from jaxsae.validation import checks_deferred


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    """How each array task is allocated."""

    partition: str | None = None
    """Partition (sbatch --partition); default: the cluster's default one."""
    time: str | None = None
    """Time limit of one array task (sbatch --time), e.g. 04:00:00."""
    gpus_per_task: int = 0
    """GPUs per process (sbatch --gpus-per-task); 0: CPU only."""
    cpus_per_task: int | None = None
    """CPU cores per process (sbatch --cpus-per-task)."""
    max_running: int = 0
    """Most array tasks running at once (the array's %N limit); 0: as many as the cluster allows."""
    sbatch: tuple[str, ...] = ()
    """Further sbatch options, one #SBATCH line each, written NAME=VALUE: account=bio mem=64G."""

    def __post_init__(self):
        if checks_deferred():
            return
        for name in ("gpus_per_task", "max_running"):
            if getattr(self, name) < 0:
                raise ConfigError(f"slurm.{name}={getattr(self, name)}: expected an integer >= 0")


def array_script(job_name: str, n_tasks: int, log_dir: str, job: SlurmJob, body: list[str], *, ntasks: int = 1,
                 nodes: int | None = None) -> str:
    """A job-array script of `n_tasks` tasks (0 .. n_tasks - 1): the #SBATCH header (job, array, one log per task
    in log_dir/JOB_TASK.out, ntasks processes per task, then `job`'s allocation), `set -euo pipefail`, a cd to
    the current folder, then the `body` lines (bash, run by every task; $SLURM_ARRAY_TASK_ID says which)."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}",
             f"#SBATCH --array=0-{n_tasks - 1}" + (f"%{job.max_running}" if job.max_running else ""),
             f"#SBATCH --output={os.path.join(log_dir, '%A_%a.out')}",
             f"#SBATCH --ntasks={ntasks}"]
    for flag, value in (("nodes", nodes), ("gpus-per-task", job.gpus_per_task or None),
                        ("cpus-per-task", job.cpus_per_task), ("partition", job.partition), ("time", job.time)):
        if value is not None:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += [f"#SBATCH --{option.lstrip('-')}" for option in job.sbatch]
    lines += ["set -euo pipefail", f"cd {shlex.quote(os.getcwd())}", *body]
    return "\n".join(lines) + "\n"


def write_and_submit(script: str, text: str, dry_run: bool, fix: str) -> tuple[list[str], str | None]:
    """Write the script to the file `script`, then submit it with `sbatch` unless dry_run.

    Returns (lines to show, the job id or None for a dry run). fix: what to change when sbatch refuses
    ("fix the --slurm.* options"). Raises SchedulerError when sbatch is missing or refuses the script."""
    os.makedirs(os.path.dirname(script) or ".", exist_ok=True)
    with open(script, "w") as f:
        f.write(text)
    command = ["sbatch", "--parsable", script]
    if dry_run:
        return [f"submit with: {shlex.join(command)}"], None
    if shutil.which("sbatch") is None:
        raise SchedulerError(f"sbatch: not found on PATH; run this on a SLURM login node, or submit the script "
                             f"yourself: {shlex.join(command)}")
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SchedulerError(f"sbatch refused {script} (exit {proc.returncode}): "
                             f"{' '.join(proc.stderr.split()) or 'no message'}; {fix}")
    job_id = proc.stdout.strip().split(";")[0]
    return [f"submitted: slurm job {job_id} (squeue -j {job_id})"], job_id
