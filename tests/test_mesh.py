"""The real train step on device meshes: every architecture on (data, ens, latent) meshes gives the parameters
of the one-device run, and the latent-sharded TopK step moves only top-k candidates, never a [B, n] array or a
weight matrix."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsae.sae import ARCHITECTURES
from jaxsae.sae.base import ConfigError, SAEConfig
from jaxsae.train import mesh as mesh_lib
from jaxsae.train.config import MeshConfig, make_config
from jaxsae.train.step import hparam_arrays, init_state, make_train_step

D, N, B, STEPS = 16, 64, 64, 20
MESHES = [(8, 1, 1), (2, 1, 4), (1, 1, 8), (2, 2, 2)]
# Fast subset: every architecture once and every mesh at least once; the whole matrix runs with -m slow.
FAST = {"topk": (2, 2, 2), "batchtopk": (1, 1, 8), "relu": (8, 1, 1), "jumprelu": (2, 1, 4), "gated": (1, 1, 8),
        "matryoshka": (2, 2, 2)}


def _config(arch: str, shape: tuple[int, int, int], **sae):
    return make_config({
        "sae": {"architecture": arch, "d_model": D, "n_latents": N, "k": 4, "dead_after_rows": 4 * B, **sae},
        "data": {"store": "in-memory", "batch_rows": B}, "steps": STEPS,
        "members": [{"seed": 0}, {"seed": 3, "lr": 3e-3}],  # E = 2 (so the (2, 2, 2) mesh splits members)
        "mesh": dict(zip(("data", "ens", "latent"), shape)), "optim": {"lr": 1e-2, "warmup_steps": 2},
    })


def _train_in_memory(arch: str, shape: tuple[int, int, int]) -> dict:
    """STEPS real train steps on the first prod(shape) devices; in-memory batches identical for every mesh."""
    cfg = _config(arch, shape)
    mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[: int(np.prod(shape))])
    rng = np.random.default_rng(0)
    b_dec = rng.standard_normal(D).astype(np.float32) * 0.1
    state = init_state(cfg, mesh, b_dec, 1.0)
    step = make_train_step(cfg, mesh, state)
    hp = {k: jax.device_put(v, NamedSharding(mesh, P("ens"))) for k, v in hparam_arrays(cfg).items()}
    batch_sharding = NamedSharding(mesh, P("data", None))
    for _ in range(STEPS):
        x = rng.standard_normal((B, D)).astype(np.float32) + 0.3
        state, _ = step(state, jax.device_put(x, batch_sharding), hp)
    return jax.device_get({"params": state.params, "buffers": state.buffers})


_reference: dict[str, dict] = {}


def _single_device(arch: str) -> dict:
    if arch not in _reference:
        _reference[arch] = _train_in_memory(arch, (1, 1, 1))
    return _reference[arch]


def _assert_same_state(arch: str, got: dict, want: dict, what: str) -> None:
    # BatchTopK-style selection keeps the batch's B*k largest activations: a reduction order that differs in
    # the last bit (e.g. one member per device instead of two) can swap the activation at the boundary, and
    # Adam turns that one-step difference into an update of up to ~lr/10 for the latents involved.
    atol = 2e-3 if arch in ("batchtopk", "matryoshka") else 2e-5
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-4, atol=atol,
                                   err_msg=f"{what}{jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_sharded_train_step_matches_one_device(arch):
    shape = FAST[arch]
    _assert_same_state(arch, _train_in_memory(arch, shape), _single_device(arch), f"{arch} on mesh {shape}: ")


@pytest.mark.slow
@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_mesh_matches_one_device(arch, shape):
    _assert_same_state(arch, _train_in_memory(arch, shape), _single_device(arch), f"{arch} on mesh {shape}: ")


def _all_gather_shapes(hlo: str) -> list[tuple[int, ...]]:
    """Result shapes of every all-gather in compiled HLO text (tuple results give one entry per element)."""
    shapes = []
    for line in hlo.splitlines():
        match = re.search(r"=\s*(.*?)\s+all-gather(?:-start)?\(", line)
        if match:
            for dims in re.findall(r"[a-z]+\d*\[([\d,]*)\]", match.group(1)):
                shapes.append(tuple(int(d) for d in dims.split(",") if d))
    return shapes


@pytest.mark.parametrize("shape", [(1, 1, 8), pytest.param((2, 1, 4), marks=pytest.mark.slow)])
def test_latent_sharded_topk_step_gathers_no_activations_or_weights(shape):
    n, d, b = 512, 24, 48  # sizes that cannot be confused with any candidate array's
    cfg = make_config({
        "sae": {"architecture": "topk", "d_model": d, "n_latents": n, "k": 4, "k_aux": 8, "dead_after_rows": 1},
        "data": {"store": "in-memory", "batch_rows": b}, "steps": 10,
        "mesh": dict(zip(("data", "ens", "latent"), shape)),
    })
    mesh = mesh_lib.make_mesh(cfg.mesh)
    state = init_state(cfg, mesh, np.zeros(d, np.float32), 1.0)
    step = make_train_step(cfg, mesh, state)
    hp = {k: jax.device_put(v, NamedSharding(mesh, P("ens"))) for k, v in hparam_arrays(cfg).items()}
    x = jax.device_put(np.zeros((b, d), np.float32), NamedSharding(mesh, P("data", None)))
    hlo = step.lower(state, x, hp).compile().as_text()
    gathered = _all_gather_shapes(hlo)
    assert gathered, "the latent-sharded step must merge top-k candidates with an all-gather"
    for dims in gathered:
        assert n not in dims, f"all-gather of a full latent axis (shape {dims}) in the latent-sharded TopK step"
    local_rows = b // shape[0]
    candidates = {(1, local_rows, cfg.sae.k * shape[2]), (1, local_rows, cfg.sae.aux_k * shape[2])}  # [E, B, K]
    assert set(gathered) <= candidates, f"all-gathers other than top-k candidates: {set(gathered) - candidates}"


def test_mesh_defaults_fill_the_devices_and_refuse_bad_shapes():
    assert mesh_lib.mesh_shape(MeshConfig(), 8) == (8, 1, 1)
    assert mesh_lib.mesh_shape(MeshConfig(latent=2), 8) == (4, 1, 2)
    assert mesh_lib.mesh_shape(MeshConfig(ens=2, latent=2), 8) == (2, 2, 2)
    assert mesh_lib.mesh_shape(MeshConfig(), 1) == (1, 1, 1)
    with pytest.raises(ConfigError, match="mesh"):
        mesh_lib.mesh_shape(MeshConfig(latent=3), 8)
    mesh = mesh_lib.make_mesh(MeshConfig(latent=2))
    with pytest.raises(ConfigError, match="sae.n_latents"):
        mesh_lib.check_divisibility(mesh, SAEConfig(n_latents=63, k=4), 1, 64)
