"""`jaxsae sweep launch`: the SLURM job-array script and the TPU-pod command it writes (dry runs), packs sized and
checked for the target, and a launched sweep's packs trained one by one (`run-pack`) then summarised without
training again. The real scheduler runs in test_sweep_slurm.py."""

import csv
import json
import os
import shlex
import subprocess
import sys

import pytest

from jaxsae.cli import main
from jaxsae.errors import ConfigError


def test_slurm_dry_run_writes_one_array_task_per_pack_and_submits_nothing(sweep_spec, tmp_path, capsys):
    spec = sweep_spec(tmp_path, '"hparams.k" = [2, 4]\n"data.streams" = [2]', "max_pack = 1")
    out = tmp_path / "out"
    assert main(["sweep", "launch", spec, "--backend", "slurm", "--out", str(out), "--dry_run",
                 "--slurm.partition", "gpu", "--slurm.time", "01:00:00", "--slurm.tasks_per_pack", "2",
                 "--slurm.gpus_per_task", "1", "--slurm.max_running", "4",
                 "--slurm.sbatch", "account=bio", "mem=8G"]) == 0
    printed = capsys.readouterr().out
    script = out / "slurm" / "sweep.sbatch"
    assert f"submit with: sbatch --parsable {script}" in printed
    assert "2 members in 2 pack(s)" in printed and "2 device(s) per pack" in printed
    text = script.read_text()
    sbatch = [line.removeprefix("#SBATCH ") for line in text.splitlines() if line.startswith("#SBATCH")]
    assert sbatch == ["--job-name=jaxsae-t", "--array=0-1%4", f"--output={out}/slurm/%A_%a.out", "--ntasks=2",
                      "--gpus-per-task=1", "--partition=gpu", "--time=01:00:00", "--account=bio", "--mem=8G"]
    assert "packs=(pack000 pack001)" in text
    assert f'srun --ntasks=2 {shlex.join([sys.executable, "-m", "jaxsae.cli", "sweep", "run-pack", str(out)])} ' \
           f'"$pack" --no_progress' in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid bash
    record = json.loads((out / "sweep.json").read_text())
    assert record["status"] == {"pack000": "pending", "pack001": "pending"}
    assert not (out / "packs").exists()  # nothing trained


def test_slurm_packs_are_checked_against_the_target(sweep_spec, tmp_path):
    spec = sweep_spec(tmp_path, '"hparams.k" = [2, 4]')
    with pytest.raises(ConfigError, match=r"data.streams=1 cannot be split over 2 processes.*multiple of 2"):
        main_raising(["sweep", "launch", spec, "--backend", "slurm", "--dry_run", "--out", str(tmp_path / "a"),
                      "--slurm.tasks_per_pack", "2"])
    with pytest.raises(ConfigError, match=r"data.batch_rows=256 must be divisible by mesh data=3"):
        main_raising(["sweep", "launch", spec, "--backend", "slurm", "--dry_run", "--out", str(tmp_path / "b"),
                      "--slurm.tasks_per_pack", "3"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_tpu_pod_command_runs_every_pack_on_every_worker(sweep_spec, tmp_path, capsys):
    spec = sweep_spec(tmp_path, '"hparams.k" = [1, 2, 3, 4, 5]\n"data.streams" = [2]')
    out = tmp_path / "out"
    assert main(["sweep", "launch", spec, "--backend", "tpu-pod", "--out", str(out), "--tpu.name", "my-pod",
                 "--tpu.zone", "us-east5-a", "--tpu.devices", "8", "--tpu.hosts", "2", "--device_memory_gib", "95",
                 "--max_pack", "4"]) == 0
    printed = capsys.readouterr().out
    command = printed.split("run on every worker: ", 1)[1].splitlines()[0]
    assert shlex.split(command) == [
        "gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod", "--zone", "us-east5-a", "--worker=all", "--command",
        f"cd {os.getcwd()} && jaxsae sweep run-pack {out} --no_progress"]
    assert command in (out / "tpu-pod.sh").read_text()
    assert "5 members in 2 pack(s)" in printed and "8 device(s) per pack" in printed  # --max_pack 4: 4 + 1
    packs = json.loads((out / "sweep.json").read_text())["plan"]["packs"]
    assert [len(p["members"]) for p in packs] == [4, 1]
    assert all(p["settings"]["distributed"]["mode"] == "on" for p in packs)  # each pack spans the pod's workers

    base = ["sweep", "launch", spec, "--backend", "tpu-pod", "--out", str(tmp_path / "x"), "--tpu.zone", "z"]
    with pytest.raises(ConfigError, match=r"--tpu.name: needed for --backend tpu-pod"):
        main_raising(base)
    with pytest.raises(ConfigError, match=r"--device_memory_gib: give one TPU chip's memory"):
        main_raising(base + ["--tpu.name", "p", "--tpu.devices", "8"])
    with pytest.raises(ConfigError, match=r"data.streams=2 cannot be split over 4 processes"):
        main_raising(base + ["--tpu.name", "p", "--tpu.devices", "16", "--device_memory_gib", "95"])


def test_launched_packs_train_one_by_one_and_summarise_without_training_again(sweep_spec, tmp_path, capsys):
    spec = sweep_spec(tmp_path, '"hparams.k" = [2, 4]', "max_pack = 1")
    out = tmp_path / "out"
    assert main(["sweep", "launch", spec, "--out", str(out), "--dry_run"]) == 0  # local: plan, record, no training
    assert f"run here with: jaxsae sweep run {spec} --out {out}" in capsys.readouterr().out
    assert main(["sweep", "summary", str(out)]) == 2
    assert "2 of 2 packs are not complete (pack000, pack001)" in capsys.readouterr().err
    assert main(["sweep", "run-pack", str(out), "pack9"]) == 2
    assert "no pack named 'pack9'; its packs are pack000, pack001" in capsys.readouterr().err

    assert main(["sweep", "run-pack", str(out), "pack001", "--no_progress"]) == 0  # one array task's work
    assert "packs trained: pack001; already complete: none (process 0 of 1)" in capsys.readouterr().out
    assert (out / "packs" / "pack001" / "run.json").exists() and not (out / "packs" / "pack000").exists()
    assert not (out / "summary.csv").exists()  # a task writes nothing shared
    assert main(["sweep", "run-pack", str(out), "--no_progress"]) == 0
    assert "packs trained: pack000; already complete: pack001 (process 0 of 1)" in capsys.readouterr().out

    stamps = [os.path.getmtime(out / "packs" / p / "run.json") for p in ("pack000", "pack001")]
    assert main(["sweep", "summary", str(out)]) == 0
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["member"], r["pack"], r["step"]) for r in rows] == [("k2", "pack000", "12"), ("k4", "pack001", "12")]
    assert json.loads((out / "sweep.json").read_text())["status"] == {"pack000": "complete", "pack001": "complete"}
    assert main(["sweep", "launch", spec, "--out", str(out), "--no_progress"]) == 0  # local = sweep run
    assert "packs trained: 0, already complete: 2" in capsys.readouterr().out
    assert [os.path.getmtime(out / "packs" / p / "run.json") for p in ("pack000", "pack001")] == stamps


def main_raising(argv):
    """Run a verb's runner directly, so its error propagates (main() turns it into exit status 2)."""
    from jaxsae.sweep.verbs import run_sweep_launch

    return run_sweep_launch(argv[2:], "jaxsae sweep launch")
