"""`jaxsae extract --launch slurm`: the job-array script of N workers (dry run), bad input refused before anything is
submitted, and (e2e) the array run by a real one-node SLURM, whose dataset equals a single-process extraction."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import numpy as np
import pytest
from slurm_cluster import logs

from extract.errors import ExtractError
from extract.run import extract
from extract.testing import write_counts_h5ad, write_geneformer_folder
from jaxsae.cli import main
from jaxsae.store import open_store

GENES = [f"ENSG{n:011d}" for n in range(1, 41)]
FLAGS = ["--layers", "1", "--cells_per_commit", "4", "--batch_size", "3", "--device", "cpu"]


@pytest.fixture
def case(tmp_path):
    adata = write_counts_h5ad(tmp_path / "cells.h5ad", 30, GENES, mean=0.6)
    model = write_geneformer_folder(tmp_path / "model", GENES, special_tokens=True, n_layers=2, max_positions=32)
    return adata, model


def test_the_dry_run_writes_a_job_array_of_workers_and_submits_nothing(case, tmp_path, capsys):
    adata, model = case
    out = tmp_path / "out"
    assert main(["extract", str(adata), str(model), str(out), *FLAGS, "--launch", "slurm", "--workers", "3",
                 "--dry_run", "--slurm.gpus_per_task", "1", "--slurm.time", "02:00:00", "--slurm.max_running", "2",
                 "--slurm.sbatch", "account=bio"]) == 0
    script = out / "slurm" / "extract.sbatch"
    assert capsys.readouterr().out.splitlines() == [
        f"slurm script: {script} (3 array tasks, logs {out}/slurm/JOB_TASK.out)",
        f"submit with: sbatch --parsable {script}"]
    text = script.read_text()
    sbatch = [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH")]
    assert sbatch == ["--job-name=jaxsae-extract", "--array=0-2%2", f"--output={out}/slurm/%A_%a.out", "--ntasks=1",
                      "--gpus-per-task=1", "--time=02:00:00", "--account=bio"]
    command = [sys.executable, "-m", "jaxsae.cli", "extract", str(adata), str(model), str(out), "--layers", "1",
               "--batch_size", "3", "--cells_per_commit", "4", "--device", "cpu", "--no_progress_bar"]
    assert f'srun --ntasks=1 {shlex.join(command)} --worker "$SLURM_ARRAY_TASK_ID/3"' in text.splitlines()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid bash
    assert sorted(p.name for p in out.iterdir()) == ["slurm"]  # nothing extracted


def test_a_launch_with_a_missing_input_or_a_worker_flag_is_refused_before_anything_is_written(case, tmp_path):
    from extract.config import ExtractConfig
    from extract.launch import launch_slurm

    adata, model = case
    out = tmp_path / "out"
    with pytest.raises(ExtractError, match=r"AnnData file .*missing.h5ad does not exist"):
        launch_slurm(str(tmp_path / "missing.h5ad"), str(model), str(out), [1], ExtractConfig(), 2, dry_run=True)
    with pytest.raises(ExtractError, match=r"--worker 0/2 with --launch slurm: each array task gets its own"):
        launch_slurm(str(adata), str(model), str(out), [1], ExtractConfig(worker="0/2"), 2, dry_run=True)
    with pytest.raises(ExtractError, match=r"workers=0: expected an integer >= 1"):
        launch_slurm(str(adata), str(model), str(out), [1], ExtractConfig(), 0, dry_run=True)
    assert main(["extract", str(adata), str(model), str(out), "--workers", "2"]) == 2  # no --launch slurm
    assert not out.exists()
    extract(adata, model, out, layers=[1], worker="0/3", cells_per_commit=4, device="cpu", progress_bar=False)
    with pytest.raises(ExtractError, match=r"--workers 2: dataset .*layer_1/cell_cls was started by 3 workers; launch "
                                           r"with --workers 3 to finish it"):
        launch_slurm(str(adata), str(model), str(out), [1], ExtractConfig(), 2, dry_run=True)
    assert not (out / "slurm").exists()


@pytest.mark.e2e  # a one-node SLURM, two extraction array tasks: ~40 s
def test_an_extraction_launched_on_slurm_as_two_array_tasks_equals_one_process(slurm, case, tmp_path,  # noqa: F811
                                                                                capsys):
    adata, model = case
    out = tmp_path / "out"
    assert main(["extract", str(adata), str(model), str(out), *FLAGS, "--launch", "slurm", "--workers", "2",
                 "--slurm.cpus_per_task", "1", "--slurm.time", "5"]) == 0
    job = capsys.readouterr().out.split("submitted: slurm job ", 1)[1].split()[0]
    deadline = time.monotonic() + 240
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        assert time.monotonic() < deadline, f"job {job} still queued or running:\n{logs(slurm)}"
        time.sleep(1)
    task_logs = [(out / "slurm" / f"{job}_{task}.out").read_text() for task in (0, 1)]
    for task, log in enumerate(task_logs):
        assert f"jaxsae extract: worker {task}/2, slurm job {job}_{task}" in log, log
    assert len(list((out / "cell_scan").iterdir())) == 1, task_logs  # one scan, shared

    single = tmp_path / "single"
    extract(adata, model, single, layers=[1], cells_per_commit=4, batch_size=3, device="cpu", progress_bar=False)
    for kind in ("tokens", "cell_mean", "cell_cls"):
        dataset, reference = open_store(out / "layer_1" / kind), open_store(single / "layer_1" / kind)
        assert dataset.is_complete and dataset.n_rows == reference.n_rows and dataset.norm == reference.norm
        np.testing.assert_array_equal(dataset.read_rows(0, dataset.n_rows), reference.read_rows(0, reference.n_rows))
        for name, values in reference.read_metadata(0, reference.n_rows).items():
            np.testing.assert_array_equal(dataset.read_metadata(0, dataset.n_rows)[name], values)
