"""Checkpoints (round trip onto another mesh, incomplete and corrupt ones skipped), the run-folder lock,
metrics truncation on resume, and where the multi-process settings come from."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxsae.data.stream import StreamState
from jaxsae.errors import JaxsaeError
from jaxsae.sae.base import ConfigError
from jaxsae.train import checkpoint as ckpt
from jaxsae.train import distributed
from jaxsae.train import mesh as mesh_lib
from jaxsae.train.config import DistributedConfig
from jaxsae.train.config_files import make_config
from jaxsae.train.lock import RunLock, RunLockedError
from jaxsae.sae.base import build
from jaxsae.train import optim
from jaxsae.train.state import init_state, member_seeds


def _config(shape):
    return make_config({"sae": {"architecture": "batchtopk", "d_model": 16, "n_latents": 64, "k": 4},
                        "data": {"store": "in-memory", "batch_rows": 64}, "steps": 10,
                        "members": [{}, {"seed": 1}], "mesh": dict(zip(("data", "ens", "latent"), shape))})


def _state(shape, seed=0):
    cfg = _config(shape)
    mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[: int(np.prod(shape))])
    b_dec = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
    arch = build(cfg.sae)
    state = init_state(arch, optim.for_config(cfg, arch), mesh, member_seeds(cfg), b_dec, 0.5)
    # Non-trivial values in every kind of leaf: params, counters, thresholds, accumulators, step.
    buffers = state.buffers.replace(arch={"threshold": state.buffers.arch["threshold"] + 0.25},
                                    rows_since_fired=state.buffers.rows_since_fired + 3)
    state = state.replace(step=state.step + 7, buffers=buffers, acc=state.acc.replace(loss=state.acc.loss + 1.5))
    return cfg, mesh, state


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def _assert_trees_equal(a, b):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(_host(a)), jax.tree.leaves(_host(b))):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_a_checkpoint_restores_bitwise_onto_another_mesh(tmp_path):
    cfg8, _, state = _state((2, 2, 2))
    store = ckpt.RunCheckpoints(str(tmp_path), keep=2)
    store.save(7, state, StreamState(1, 3), cfg8.to_dict())
    store.close()

    cfg2, mesh2, _ = _state((1, 1, 2), seed=1)
    again = ckpt.RunCheckpoints(str(tmp_path), keep=2)
    restored = again.restore_latest(ckpt.abstract_state(cfg2, mesh2))
    again.close()
    assert restored.step == 7 and restored.stream == StreamState(1, 3)
    _assert_trees_equal(restored.state, state)
    w_enc = restored.state.params["W_enc"]
    assert w_enc.sharding.mesh.devices.size == 2 and w_enc.sharding.spec == P("ens", None, "latent")


def test_incomplete_and_corrupt_checkpoints_are_skipped_with_one_line_each(tmp_path, capsys):
    cfg, mesh, state = _state((1, 1, 2))
    store = ckpt.RunCheckpoints(str(tmp_path), keep=3)
    for step in (5, 10):
        store.save(step, state.replace(step=state.step * 0 + step), StreamState(0, step), cfg.to_dict())
    store.close()
    directory = tmp_path / ckpt.CHECKPOINT_DIR
    (directory / "15.orbax-checkpoint-tmp").mkdir()  # killed between a save's start and its commit
    for path in (directory / "10" / "state").rglob("*"):  # the newest committed one is damaged
        if path.is_file() and "ocdbt" in str(path.relative_to(directory)):
            path.write_bytes(b"garbage")

    capsys.readouterr()
    store = ckpt.RunCheckpoints(str(tmp_path), keep=3)
    restored = store.restore_latest(ckpt.abstract_state(cfg, mesh))
    messages = capsys.readouterr().err.splitlines()
    assert len(messages) == 2, messages
    assert "15.orbax-checkpoint-tmp" in messages[0] and "never committed" in messages[0]
    assert str(directory / "10") in messages[1] and "could not be restored" in messages[1]
    assert "falling back to step 5" in messages[1]
    assert restored.step == 5 and restored.stream == StreamState(0, 5)
    assert store.steps() == [5] and not (directory / "15.orbax-checkpoint-tmp").exists()
    assert os.listdir(tmp_path / ckpt.SKIPPED_DIR)[0].startswith("10-")
    store.save(10, restored.state, StreamState(0, 10), cfg.to_dict())  # the step can be written again
    store.close()


def test_metrics_after_the_restored_step_are_dropped(tmp_path):
    lines = [json.dumps({"step": s, "member": m}) for s in (4, 8, 12) for m in (0, 1)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 16, "mem')  # torn last line
    kept = ckpt.truncate_metrics(str(tmp_path), 9)
    assert [(r["step"], r["member"]) for r in kept] == [(4, 0), (4, 1), (8, 0), (8, 1)]
    on_disk = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert on_disk == kept


def test_a_second_trainer_is_refused_and_a_dead_ones_lock_taken_over(tmp_path, capsys):
    with RunLock(str(tmp_path)):
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}") as refused:
            RunLock(str(tmp_path)).acquire()
        assert isinstance(refused.value, JaxsaeError)  # a user error: the CLI prints it as one line, exit 2
    assert not (tmp_path / "train.lock").exists()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "train.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    lock = RunLock(str(tmp_path)).acquire()
    assert f"pid {dead.pid}) is gone" in capsys.readouterr().err
    assert json.loads((tmp_path / "train.lock").read_text())["pid"] == os.getpid()
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no lock, no guard file left behind

    (tmp_path / "train.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match="host elsewhere"):
        RunLock(str(tmp_path)).acquire()


def test_distributed_settings_come_from_config_then_environment():
    env = {"JAXSAE_COORDINATOR": "10.0.0.1:1234", "JAXSAE_NUM_PROCESSES": "4", "JAXSAE_PROCESS_ID": "2"}
    assert distributed.resolve(DistributedConfig(), env) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 4, "process_id": 2}
    assert distributed.resolve(DistributedConfig(process_id=3), env)["process_id"] == 3
    assert distributed.resolve(DistributedConfig(mode="off"), env) is None
    assert distributed.resolve(DistributedConfig(), {}) is None  # a plain single process
    assert distributed.resolve(DistributedConfig(), {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "8"}) == {}
    assert distributed.resolve(DistributedConfig(), {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}) is None
    assert distributed.resolve(DistributedConfig(mode="on"), {}) == {}
    with pytest.raises(ConfigError, match="num_processes"):
        distributed.resolve(DistributedConfig(coordinator="localhost:1"), {})
    with pytest.raises(ConfigError, match="distributed.mode"):
        make_config({"data": {"store": "x"}, "steps": 1, "distributed": {"mode": "sometimes"}})


def test_a_checkpoint_of_the_older_state_layout_is_refused_with_the_fix(tmp_path):
    """A run folder checkpointed by a jaxsae whose TrainState held plain dicts (buffers with rows_since_fired,
    accumulators by key) does not restore into the typed state: one error that names --restart."""
    cfg, mesh, state = _state((1, 1, 2))
    old_layout = state.replace(
        buffers={"threshold": state.buffers.arch["threshold"], "rows_since_fired": state.buffers.rows_since_fired},
        acc={"loss": state.acc.loss, "fire_count": state.acc.fire_count, "rows": state.acc.rows})
    store = ckpt.RunCheckpoints(str(tmp_path), keep=2)
    store.save(7, old_layout, StreamState(0, 7), cfg.to_dict())
    store.close()
    again = ckpt.RunCheckpoints(str(tmp_path), keep=2)
    with pytest.raises(ckpt.CheckpointError, match="older jaxsae.*rerun with --restart"):
        again.restore_latest(ckpt.abstract_state(cfg, mesh))
    again.close()
