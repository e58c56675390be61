"""A sweep killed (SIGKILL) while training its second pack, then rerun: the finished pack is not trained again and
the interrupted one ends bitwise equal to an uninterrupted sweep."""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxsae.cli import main
from jaxsae.train import checkpoint as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
                    "PYTHONPATH": os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])])}


def _command(spec, out) -> list[str]:
    return [sys.executable, "-m", "jaxsae.cli", "sweep", "run", spec, "--out", str(out), "--no_progress"]


def _dictionaries(pack_dir) -> list[dict]:
    folders = sorted(os.listdir(pack_dir / "dictionaries"))
    return [load_file(pack_dir / "dictionaries" / f / "dictionary.safetensors") for f in folders]


def _files(folder) -> dict[str, tuple[int, bytes]]:
    """{path: (mtime in ns, bytes)} of every file under `folder`."""
    paths = [Path(root, name) for root, _, names in os.walk(folder) for name in names]
    return {str(path): (path.stat().st_mtime_ns, path.read_bytes()) for path in paths}


def _committed(run_dir) -> list[str]:
    directory = run_dir / ckpt.CHECKPOINT_DIR
    return [name for name in os.listdir(directory) if name.isdigit()] if directory.is_dir() else []


@pytest.fixture(scope="module")
def spec(sweep_spec, tmp_path_factory):
    """4 members (k x lr) in 2 packs of 2, 12 steps with a checkpoint every 2 (a result-neutral setting)."""
    return sweep_spec(tmp_path_factory.mktemp("sweep-faults"), '"hparams.k" = [2, 4]\n"optim.lr" = [1e-3, 3e-3]',
                      "max_pack = 2", "checkpoint_every = 2")


@pytest.fixture(scope="module")
def uninterrupted(spec, tmp_path_factory):
    """The same sweep run to the end in a subprocess: its sweep folder."""
    out = tmp_path_factory.mktemp("sweep-faults") / "uninterrupted"
    done = subprocess.run(_command(spec, out), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.e2e  # a reference sweep and 2 killed ones, each rerun: ~25 s
@pytest.mark.parametrize("seed", [0, 1])
def test_a_sigkilled_sweep_keeps_its_finished_pack_and_resumes_the_other_bitwise(spec, uninterrupted, tmp_path,
                                                                                 capsys, seed):
    out = tmp_path / "out"
    first, second = out / "packs" / "pack000", out / "packs" / "pack001"
    with subprocess.Popen(_command(spec, out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True) as proc:
        deadline = time.monotonic() + 180
        while not ((first / "run.json").exists() and _committed(second)):  # then kill at a seeded point
            assert proc.poll() is None, f"the sweep exited early: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "pack001 never committed a checkpoint"
            time.sleep(0.01)
        time.sleep(random.Random(seed).uniform(0.0, 0.4))  # pack001 trains for ~1 s after its first checkpoint
        proc.send_signal(signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before the kill"
    assert not (second / "run.json").exists() and not (out / "summary.csv").exists()
    finished = _files(first)
    assert any(path.endswith("dictionary.safetensors") for path in finished)

    printed = io.StringIO()
    capsys.readouterr()
    with contextlib.redirect_stdout(printed):
        assert main(["sweep", "run", spec, "--out", str(out), "--no_progress"]) == 0  # the rerun, in-process
    assert "packs trained: 1, already complete: 1" in printed.getvalue()
    err = capsys.readouterr().err
    assert any(line.startswith("jaxsae: resuming from step ") for line in err.splitlines()), err

    assert _files(first) == finished  # pack000 untouched: run.json and dictionaries, bytes and mtimes
    for pack in ("pack000", "pack001"):
        got, want = _dictionaries(out / "packs" / pack), _dictionaries(uninterrupted / "packs" / pack)
        assert len(got) == len(want) == 2
        for a, b in zip(got, want):
            assert a.keys() == b.keys()
            for name in a:
                assert np.array_equal(a[name], b[name]), f"{pack} {name}: not bitwise equal"
    assert (out / "summary.csv").read_text().replace(str(out), "") == \
        (uninterrupted / "summary.csv").read_text().replace(str(uninterrupted), "")
