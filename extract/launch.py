"""`jaxsae extract ... --launch slurm --workers N`: one SLURM job array of N extraction workers, written (and
submitted) through jaxsae.slurm, the scheduler code of `jaxsae sweep launch --backend slurm`.

Array task i runs, under srun, the same `jaxsae extract` command with `--worker i/N` (every setting that differs
from its default is passed on; paths made absolute), so the tasks write one dataset (extract.parts) and share
one cell scan (extract.scan). The script is OUT_DIR/slurm/extract.sbatch; each task logs to
OUT_DIR/slurm/JOB_TASK.out. Inputs, the model folder and the worker count of datasets already in OUT_DIR are
checked here, before anything is submitted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from extract.config import ExtractConfig
from extract.errors import ExtractError
from extract.inputs import resolve_inputs
from jaxsae.slurm import SlurmJob, array_script, write_and_submit
from jaxsae.store.dataset import DATASET_FILE

SCRIPT = os.path.join("slurm", "extract.sbatch")
NOT_PASSED = ("worker", "progress_bar")  # set per task / always off in a batch log


def config_flags(config: ExtractConfig) -> list[str]:
    """The `jaxsae extract` flags that reproduce `config` (its fields that differ from the defaults, except
    the worker and the progress bar)."""
    flags = []
    for field in dataclasses.fields(ExtractConfig):
        value = getattr(config, field.name)
        if field.name in NOT_PASSED or value == field.default:
            continue
        if isinstance(value, bool):
            flags.append(f"--{field.name}" if value else f"--no_{field.name}")
        else:
            flags += [f"--{field.name}", str(value)]
    return flags


def worker_command(adata: str, model: str, out_dir: str, layers: list[int], config: ExtractConfig) -> list[str]:
    """The command every array task runs, before its `--worker i/N`."""
    return [sys.executable, "-m", "jaxsae.cli", "extract", os.path.abspath(adata), os.path.abspath(model),
            os.path.abspath(out_dir), "--layers", ",".join(map(str, layers)), *config_flags(config),
            "--no_progress_bar"]


def launch_slurm(adata: str, model: str, out_dir: str, layers: list[int], config: ExtractConfig, workers: int,
                 job: SlurmJob = SlurmJob(), dry_run: bool = False) -> tuple[list[str], str | None]:
    """Write OUT_DIR/slurm/extract.sbatch, a job array of `workers` extraction workers, and submit it with
    sbatch unless dry_run. Returns (lines to show, the job id or None). Raises ExtractError for a missing input
    or model folder, workers < 1, a --worker given too, or an out_dir whose datasets were started by another
    number of workers; SchedulerError when sbatch is missing or refuses."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ExtractError(f"workers={workers!r}: expected an integer >= 1 (the array tasks of --launch slurm)")
    if config.worker is not None:
        raise ExtractError(f"--worker {config.worker} with --launch slurm: each array task gets its own --worker "
                           "i/N; pass --workers N instead")
    resolve_inputs(adata)  # refuses a missing or unreadable file before anything is submitted
    if not Path(model).is_dir():
        raise ExtractError(f"model folder {model} does not exist (or is not a folder); pass the folder that holds "
                           "the model")
    for record_path in sorted(Path(out_dir).glob(f"layer_*/*/{DATASET_FILE}")):
        n_parts = json.loads(record_path.read_text()).get("n_parts")
        if n_parts != workers:
            raise ExtractError(f"--workers {workers}: dataset {record_path.parent} was started by {n_parts} workers; "
                               f"launch with --workers {n_parts} to finish it, or choose another out_dir")
    command = shlex.join(worker_command(adata, model, out_dir, layers, config))
    body = [f'echo "jaxsae extract: worker $SLURM_ARRAY_TASK_ID/{workers}, slurm job '
            '${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname)"',
            f'srun --ntasks=1 {command} --worker "$SLURM_ARRAY_TASK_ID/{workers}"']
    script = os.path.join(os.path.abspath(out_dir), SCRIPT)
    text = array_script("jaxsae-extract", workers, os.path.dirname(script), job, body)
    shown, job_id = write_and_submit(script, text, dry_run, "fix the --slurm.* options")
    lines = [f"slurm script: {script} ({workers} array tasks, logs {os.path.dirname(script)}/JOB_TASK.out)"]
    if job_id is not None:
        shown = [f"{shown[0]}; when it has finished: jaxsae store info "
                 f"{os.path.join(os.path.abspath(out_dir), 'layer_<L>', 'tokens')}"]
    return lines + shown, job_id
