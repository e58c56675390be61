"""A real scheduler: a one-node SLURM (Debian's slurm-wlm and munge, `tools/system-deps.sh` installs them) started
on localhost in a temporary folder, a 2-pack sweep launched into it as a job array, each pack a 2-process JAX job
started by srun; both packs complete through the scheduler. The daemons are stopped when the test ends."""

import csv
import subprocess
import time

import pytest
from slurm_cluster import logs

from jaxsae.cli import main

pytestmark = pytest.mark.e2e


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
