"""Exact resume through the real `train()`: stopped (or SIGKILLed) runs resume to bitwise the parameters of the
uninterrupted run, without duplicate metrics; a checkpoint from 8 devices continues on 2."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxsae.data.synthetic import SynthConfig, synthesize
from jaxsae.train import checkpoint as ckpt
from jaxsae.train import mesh as mesh_lib
from jaxsae.train import load_config
from jaxsae.train.lock import RunLockedError
from jaxsae.train.loop import train
from jaxsae.train.metrics import read_metrics

STEPS = 14
WORKER = """
import sys
from jaxsae.train import load_config
from jaxsae.train.loop import train
train(load_config(None, sys.argv[1:]))
"""


def _overrides(store, run_dir, *extra):
    # AuxK on (latents die after 4 batches), two members of different k, data and latent axes both split.
    return [f"data.store={store}", f"run_dir={run_dir}", "progress=false", "sae.architecture=topk",
            "sae.d_model=16", "sae.n_latents=64", "sae.k=4", "sae.dead_after_rows=256", f"steps={STEPS}",
            "log_every=3", "checkpoint_every=5", "keep_checkpoints=2", "data.batch_rows=64", "data.window_blocks=2",
            "mesh.data=2", "mesh.latent=2", 'members=[{"seed": 0}, {"seed": 1, "k": 2, "lr": 2e-3}]', *extra]


def _cfg(store, run_dir, *extra):
    return load_config(None, _overrides(store, run_dir, *extra))


def _final_state(cfg, devices=4) -> dict:
    """The whole train state of the run's step-STEPS checkpoint, on the host."""
    mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:devices])
    checkpoints = ckpt.RunCheckpoints(cfg.run_dir, keep=cfg.keep_checkpoints)
    restored = checkpoints.restore_latest(ckpt.abstract_state(cfg, mesh))
    checkpoints.close()
    assert restored.step == STEPS
    return jax.tree.map(np.asarray, jax.device_get(restored.state))


def _assert_bitwise(a, b):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y, err_msg=f"not bitwise equal: {jax.tree_util.keystr(path)}")


def _metric_rows(run_dir):
    return [(r["step"], r["member"], r["loss"], r["fvu"], r["dead_fraction"]) for r in read_metrics(str(run_dir))]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(synthesize(tmp_path_factory.mktemp("resume") / "store",
                          SynthConfig(rows=2048, d_model=16, n_features=48, seed=3), chunk=1024))


@pytest.fixture(scope="module")
def uninterrupted(store, tmp_path_factory):
    cfg = _cfg(store, tmp_path_factory.mktemp("resume") / "full")
    train(cfg)
    return cfg, _final_state(cfg), _metric_rows(cfg.run_dir)


def test_stopped_runs_resume_bitwise_including_an_uncommitted_checkpoint(store, uninterrupted, tmp_path, capsys):
    _, want, want_metrics = uninterrupted
    cfg = _cfg(store, tmp_path / "run")
    checkpoints_dir = tmp_path / "run" / ckpt.CHECKPOINT_DIR

    assert train(cfg, stop_after=7).dictionaries == []  # stopped after step 7 (checkpoints 5, 7)
    assert sorted(os.listdir(checkpoints_dir)) == ["5", "7"]
    # As if killed between step 7's save starting and its commit: resume must go back to step 5 and drop
    # the metrics of step 6, which the resumed run logs again.
    os.rename(checkpoints_dir / "7", checkpoints_dir / "7.orbax-checkpoint-tmp")
    capsys.readouterr()
    train(cfg, stop_after=11)  # resumes from 5, stops after 11 (checkpoints 10, 11 kept)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"jaxsae: checkpoint {checkpoints_dir / '7.orbax-checkpoint-tmp'} was never committed (the "
                   f"trainer stopped while saving it); skipping and deleting it",
                   f"jaxsae: resuming from step 5 of {STEPS} (checkpoint {checkpoints_dir / '5'})"], err
    assert sorted(os.listdir(checkpoints_dir)) == ["10", "11"]
    result = train(cfg)  # resumes from 11 and finishes
    assert len(result.dictionaries) == 2

    _assert_bitwise(_final_state(cfg), want)
    got_metrics = _metric_rows(cfg.run_dir)
    assert [r[:2] for r in got_metrics] == [r[:2] for r in want_metrics]  # every step once, in order
    assert got_metrics == want_metrics  # and the same values


def test_sigkilled_trainer_resumes_bitwise(store, uninterrupted, tmp_path, capsys):
    _, want, _ = uninterrupted
    run_dir = tmp_path / "run"
    # Checkpoint every step, so the kill lands while saves are in flight; same 8 devices as this process.
    overrides = _overrides(store, run_dir, "checkpoint_every=1")
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    with subprocess.Popen([sys.executable, "-c", WORKER, *overrides], env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as proc:
        delay = random.uniform(0.0, 0.4)
        deadline = time.monotonic() + 180
        while not (run_dir / ckpt.CHECKPOINT_DIR).is_dir() or not os.listdir(run_dir / ckpt.CHECKPOINT_DIR):
            assert proc.poll() is None, f"trainer exited early: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the trainer finished before the kill (delay {delay:.2f}s)"

    result = train(load_config(None, overrides))
    assert "is gone; taking the folder over" in capsys.readouterr().err  # the dead trainer's lock is taken over
    assert len(result.dictionaries) == 2
    _assert_bitwise(_final_state(load_config(None, overrides)), want)
    steps = [r["step"] for r in read_metrics(str(run_dir)) if r["member"] == 0]
    assert steps == [3, 6, 9, 12, 14]


def test_checkpoint_from_8_devices_continues_on_2(store, uninterrupted, tmp_path):
    _, want, _ = uninterrupted
    train(_cfg(store, tmp_path / "run", "mesh.ens=2"), stop_after=7)  # mesh (2, 2, 2): 8 devices
    cfg2 = _cfg(store, tmp_path / "run", "mesh.data=1")  # mesh (1, 1, 2): 2 devices
    train(cfg2)
    got = _final_state(cfg2, devices=2)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(got.params), jax.tree.leaves(want.params)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=2e-5, err_msg=jax.tree_util.keystr(path))
    assert got.step == STEPS


def test_a_second_trainer_on_a_busy_run_folder_is_refused(store, tmp_path):
    from jaxsae.train.lock import RunLock

    with RunLock(str(tmp_path / "run")):
        with pytest.raises(RunLockedError, match="in use by another trainer"):
            train(_cfg(store, tmp_path / "run"))
