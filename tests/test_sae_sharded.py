"""SAE math under jax.shard_map on 8 CPU devices: sharded == unsharded; latent sharding moves no [B, n] arrays."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from test_sae import N, D, assert_trees_close, loss_and_grad, make_cfg, make_hp, make_member, sparse_dictionary_data

from jaxsae.sae import builtin_names
from jaxsae.sae.base import Axes

ARCHITECTURES = builtin_names()

MESHES = {"data8": ((8,), ("data",)), "data2_latent4": ((2, 4), ("data", "latent")), "latent8": ((8,), ("latent",))}
E, B = 2, 64


def make_mesh(name):
    shape, names = MESHES[name]
    return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Explicit,) * len(names))


def latent_specs(tree, latent):
    """Shard every axis of length n_latents over `latent`; everything else replicated."""
    return jax.tree.map(lambda a: P(*(latent if dim == N else None for dim in a.shape)), tree)


def put(mesh, tree, specs):
    return jax.tree.map(lambda a, s: jax.device_put(a, NamedSharding(mesh, s)), tree, specs)


def stacked_members(arch, cfg, x):
    members = [make_member(arch, cfg, jax.random.key(20 + e), x, dead_every=2 + e) for e in range(E)]
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)  # noqa: E731
    hp = stack([make_hp(arch, k=k, l1_coeff=0.05 * (e + 1), l0_coeff=0.01 * (e + 1))
                for e, k in enumerate((8, 5))])
    return stack([m[0] for m in members]), stack([m[1] for m in members]), stack([m[2] for m in members]), hp


def sharded_loss_and_grad(arch, cfg, mesh, params, buffers, dead, x, hp):
    data = "data" if "data" in mesh.axis_names else None
    latent = "latent" if "latent" in mesh.axis_names else None
    axes = Axes(data=data, latent=latent)
    member = lambda p, b, d, h, x: loss_and_grad(arch, cfg, p, b, d, x, h, axes)  # noqa: E731
    unsharded = lambda p, b, d, h, x: loss_and_grad(arch, cfg, p, b, d, x, h)  # noqa: E731
    reference = jax.eval_shape(jax.vmap(unsharded, in_axes=(0, 0, 0, 0, None)), params, buffers, dead, hp, x)
    out_specs = latent_specs(reference, latent)
    out_specs = (out_specs[0], out_specs[1]._replace(x_hat=P(None, data, None)), out_specs[2])
    in_specs = (latent_specs(params, latent), latent_specs(buffers, latent), latent_specs(dead, latent),
                latent_specs(hp, latent), P(data, None))
    fn = jax.jit(jax.shard_map(jax.vmap(member, in_axes=(0, 0, 0, 0, None)), mesh=mesh, in_specs=in_specs,
                               out_specs=out_specs))
    return fn, fn(*(put(mesh, a, s) for a, s in zip((params, buffers, dead, hp, x), in_specs)))


def mesh_cases():
    """Every architecture on every mesh; the fast run keeps the mesh that splits both axes, plus TopK on all."""
    return [pytest.param(arch, mesh_name, id=f"{arch}-{mesh_name}",
                         marks=() if mesh_name == "data2_latent4" or arch == "topk" else pytest.mark.slow)
            for arch in ARCHITECTURES for mesh_name in MESHES]


@pytest.mark.parametrize("arch,mesh_name", mesh_cases())
def test_sharded_equals_unsharded(arch, mesh_name):
    cfg = make_cfg(arch, jumprelu_ste_to_input=True)
    x = sparse_dictionary_data(jax.random.key(9), n_rows=B)
    params, buffers, dead, hp = stacked_members(arch, cfg, x)
    expected = jax.jit(jax.vmap(lambda p, b, d, h: loss_and_grad(arch, cfg, p, b, d, x, h)))(params, buffers, dead, hp)
    _, got = sharded_loss_and_grad(arch, cfg, make_mesh(mesh_name), params, buffers, dead, x, hp)
    if "auxk" in expected[1].terms:
        assert np.all(np.asarray(expected[1].terms["auxk"]) > 0)
    assert_trees_close(got, expected, rtol=5e-5, atol=5e-5, what=f"{arch} on {mesh_name}: ")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["topk", "matryoshka"])
def test_sharded_dense_reference_path(arch):
    cfg = make_cfg(arch, sparse_decode=False)
    x = sparse_dictionary_data(jax.random.key(9), n_rows=B)
    params, buffers, dead, hp = stacked_members(arch, cfg, x)
    expected = jax.jit(jax.vmap(lambda p, b, d, h: loss_and_grad(arch, cfg, p, b, d, x, h)))(params, buffers, dead, hp)
    _, got = sharded_loss_and_grad(arch, cfg, make_mesh("data2_latent4"), params, buffers, dead, x, hp)
    assert_trees_close(got, expected, rtol=5e-5, atol=5e-5, what=f"{arch} dense, data2_latent4: ")


def all_gather_shapes(hlo: str) -> list[tuple[int, ...]]:
    """Result shapes of every all-gather in compiled HLO text (tuple results give several)."""
    shapes = []
    for line in hlo.splitlines():
        match = re.search(r"=\s*(.*?)\s+all-gather(?:-start)?\(", line)
        if match:
            shapes += [tuple(int(v) for v in dims.split(",") if v) for dims in re.findall(r"\[([\d,]*)\]", match[1])]
    return shapes


@pytest.mark.parametrize("mesh_name", ["latent8", pytest.param("data2_latent4", marks=pytest.mark.slow)])
def test_latent_sharded_topk_gathers_only_candidates(mesh_name):
    cfg = make_cfg("topk")
    x = sparse_dictionary_data(jax.random.key(9), n_rows=B)
    params, buffers, dead, hp = stacked_members("topk", cfg, x)
    mesh = make_mesh(mesh_name)
    fn, _ = sharded_loss_and_grad("topk", cfg, mesh, params, buffers, dead, x, hp)
    in_specs = (latent_specs(params, "latent"), latent_specs(buffers, "latent"), latent_specs(dead, "latent"),
                latent_specs(hp, "latent"), P("data" if "data" in mesh.axis_names else None, None))
    hlo = fn.lower(*(put(mesh, a, s) for a, s in zip((params, buffers, dead, hp, x), in_specs))).compile().as_text()
    shapes = all_gather_shapes(hlo)
    shards = mesh.shape["latent"]
    b_local = B // mesh.shape.get("data", 1)
    assert (E, b_local, cfg.k * shards) in shapes, shapes  # the top-k candidates are what crosses devices
    forbidden = {(b, N) for b in (B, b_local)} | {(D, N), (N, D)}
    assert not [s for s in shapes if s[-2:] in forbidden], shapes
