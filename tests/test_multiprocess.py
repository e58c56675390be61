"""A real 2-process run on localhost (2 simulated CPU devices each, gloo collectives) trains, checkpoints, and
matches the same config run in one process on 4 devices."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import jaxsae
from jaxsae.data.synthetic import SynthConfig, synthesize
from jaxsae.train import checkpoint as ckpt
from jaxsae.train import mesh as mesh_lib
from jaxsae.train import load_config
from jaxsae.train.loop import train
from jaxsae.train.metrics import read_metrics

WORKER = """
import sys
from jaxsae.train import load_config
from jaxsae.train.loop import train
result = train(load_config(None, sys.argv[1:]))
print("worker done", result.dictionaries)
"""

pytestmark = pytest.mark.e2e  # two trainer processes and a one-process reference: ~20 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _overrides(store, run_dir, mesh=("mesh.data=2", "mesh.latent=2")):
    return [f"data.store={store}", f"run_dir={run_dir}", "progress=false", "sae.architecture=topk",
            "sae.d_model=16", "sae.n_latents=64", "sae.k=4", "sae.dead_after_rows=512", "steps=12", "log_every=4",
            "checkpoint_every=5", "data.batch_rows=64", "data.streams=2", "data.window_blocks=4",
            *mesh, 'members=[{"seed": 0}, {"seed": 1, "k": 2}]']


@pytest.mark.parametrize("mesh", [
    ("mesh.data=2", "mesh.latent=2"),  # data spans the processes: each reads its own stream
    pytest.param(("mesh.data=1", "mesh.latent=4"), marks=pytest.mark.slow),  # latent spans them: both read all
])
def test_two_processes_train_checkpoint_and_match_one_process(tmp_path, mesh):
    store = synthesize(tmp_path / "store", SynthConfig(rows=4096, d_model=16, n_features=48, seed=2), chunk=1024)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXSAE_", "JAX_COORDINATOR"))}
    env |= {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
            "JAXSAE_COORDINATOR": f"localhost:{port}", "JAXSAE_NUM_PROCESSES": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, *_overrides(store, tmp_path / "multi", mesh)],
                              env=env | {"JAXSAE_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"

    one = train(load_config(None, _overrides(store, tmp_path / "single", mesh)))  # 4 of this process's 8 devices
    multi_dir = tmp_path / "multi"
    dictionaries = sorted(os.listdir(multi_dir / "dictionaries"))
    assert dictionaries == ["member_000", "member_001"]  # written once, by process 0
    for m, path in enumerate(one.dictionaries):
        a, b = jaxsae.load(path), jaxsae.load(multi_dir / "dictionaries" / dictionaries[m])
        for name in a.params:
            np.testing.assert_allclose(b.params[name], a.params[name], rtol=1e-5, atol=1e-6, err_msg=name)
    steps = [(r["step"], r["member"]) for r in read_metrics(str(multi_dir))]
    assert steps == [(s, m) for s in (4, 8, 12) for m in (0, 1)]  # process 0 alone writes metrics

    # Both processes wrote their shards of each checkpoint; it restores in this single process on 4 devices.
    cfg = load_config(None, _overrides(store, multi_dir, mesh))
    mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:4])
    checkpoints = ckpt.RunCheckpoints(str(multi_dir), keep=cfg.keep_checkpoints)
    assert checkpoints.steps() == [10, 12]
    restored = checkpoints.restore_latest(ckpt.abstract_state(cfg, mesh))
    checkpoints.close()
    assert restored.step == 12
    w_enc = np.asarray(jax.device_get(restored.state.params["W_enc"]))
    expected = np.stack([jaxsae.load(p).params["W_enc"] for p in one.dictionaries])
    scale = float(jax.device_get(restored.state.scale))  # dictionaries fold the input scale into W_enc
    np.testing.assert_allclose(w_enc * scale, expected, rtol=1e-5, atol=1e-6)
    assert json.loads((multi_dir / "run.json").read_text())["status"] == "complete"
