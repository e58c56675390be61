"""The real train step on device meshes: every architecture on (data, ens, latent) meshes gives the parameters
of the one-device run, and the latent-sharded TopK step moves only top-k candidates, never a [B, n] array or a
weight matrix."""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsae.sae import builtin_names
from jaxsae.sae.base import ConfigError, SAEConfig, build
from jaxsae.train import mesh as mesh_lib
from jaxsae.train.config import MeshConfig, OptimConfig
from jaxsae.train.optim import make_optimizer
from jaxsae.train.state import MemberSettings, init_state
from jaxsae.train.step import make_train_step

ARCHITECTURES = builtin_names()

D, N, B, STEPS = 16, 64, 64, 20
MESHES = [(8, 1, 1), (2, 1, 4), (1, 1, 8), (2, 2, 2)]
# Fast subset: every architecture once and every mesh at least once; the whole matrix runs with -m slow.
FAST = {"topk": (2, 2, 2), "batchtopk": (1, 1, 8), "relu": (8, 1, 1), "jumprelu": (2, 1, 4), "gated": (1, 1, 8),
        "matryoshka": (2, 2, 2)}


def _step_parts(sae: SAEConfig, shape: tuple[int, int, int], lrs=(1e-2, 3e-3), seeds=(0, 3), steps=STEPS):
    """(arch, mesh, fresh state, jitted step, member settings on the mesh) for E = len(lrs) members (E = 2:
    the (2, 2, 2) mesh splits members) on the first prod(shape) devices."""
    arch = build(sae)
    tx = make_optimizer(OptimConfig(warmup_steps=2), steps, arch, mesh_lib.MESH_AXES.latent)
    mesh = mesh_lib.make_mesh(MeshConfig(*shape), jax.devices()[: int(np.prod(shape))])
    b_dec = np.random.default_rng(0).standard_normal(sae.d_model).astype(np.float32) * 0.1
    state = init_state(arch, tx, mesh, np.asarray(seeds, np.uint32), b_dec, 1.0)
    step = make_train_step(arch, tx, mesh, dead_after_rows=sae.dead_after_rows)
    hp = arch.default_hparams
    settings = MemberSettings(arch.hparams(*(np.full(len(lrs), v) for v in hp)), np.asarray(lrs, np.float32))
    return arch, mesh, state, step, jax.device_put(settings, NamedSharding(mesh, P("ens")))


def _train_in_memory(arch: str, shape: tuple[int, int, int]) -> dict:
    """STEPS real train steps on the first prod(shape) devices; in-memory batches identical for every mesh."""
    sae = SAEConfig(architecture=arch, d_model=D, n_latents=N, k=4, dead_after_rows=4 * B)
    _, mesh, state, step, settings = _step_parts(sae, shape)
    rng = np.random.default_rng(0)
    batch_sharding = NamedSharding(mesh, P("data", None))
    for _ in range(STEPS):
        x = rng.standard_normal((B, D)).astype(np.float32) + 0.3
        state, _ = step(state, jax.device_put(x, batch_sharding), settings)
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
    batch_selection = "threshold" in build(SAEConfig(architecture=arch, k=4)).buffer_layout  # BatchTopK family
    atol = 2e-3 if batch_selection else 2e-5
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
    sae = SAEConfig(architecture="topk", d_model=d, n_latents=n, k=4, k_aux=8, dead_after_rows=1)
    _, mesh, state, step, settings = _step_parts(sae, shape, lrs=(4e-4,), seeds=(0,), steps=10)
    x = jax.device_put(np.zeros((b, d), np.float32), NamedSharding(mesh, P("data", None)))
    hlo = step.lower(state, x, settings).compile().as_text()
    gathered = _all_gather_shapes(hlo)
    assert gathered, "the latent-sharded step must merge top-k candidates with an all-gather"
    for dims in gathered:
        assert n not in dims, f"all-gather of a full latent axis (shape {dims}) in the latent-sharded TopK step"
    local_rows = b // shape[0]
    candidates = {(1, local_rows, sae.k * shape[2]), (1, local_rows, sae.aux_k * shape[2])}  # [E, B, K]
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
