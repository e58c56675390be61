"""The device mesh (axes data, ens, latent) and where every array of the train state lives on it."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxsae.sae.base import Axes, ConfigError, SAEConfig
from jaxsae.train.config import MeshConfig

AXES = ("data", "ens", "latent")
MESH_AXES = Axes(data="data", latent="latent")

# Which axis of a per-member leaf (no E axis) indexes latents, by leaf name; other leaves are found by shape.
_LATENT_AXIS_BY_NAME = {"W_enc": 1, "W_dec": 0, "b_dec": None}


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """(data, ens, latent) for `n_devices`; data=0 takes the devices the other axes leave.

    An explicit shape may use fewer devices than there are (the first ones) in a single-process run.
    """
    inner = cfg.ens * cfg.latent
    data = cfg.data or n_devices // inner
    used = data * inner
    if used < 1 or used > n_devices or n_devices % inner or (used != n_devices and jax.process_count() > 1):
        raise ConfigError(
            f"mesh: data={cfg.data or 'auto'} x ens={cfg.ens} x latent={cfg.latent} does not fit the "
            f"{n_devices} devices; choose sizes whose product is {n_devices} (or leave mesh.data unset)"
        )
    return data, cfg.ens, cfg.latent


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(cfg, len(devices))
    used = devices[: int(np.prod(shape))]
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Explicit,) * 3, devices=used)


def check_divisibility(mesh: Mesh, sae: SAEConfig, n_members: int, batch_rows: int) -> None:
    """Refuse shapes the mesh cannot split evenly, naming the setting to change."""
    sizes = dict(mesh.shape)
    if batch_rows % sizes["data"]:
        raise ConfigError(f"data.batch_rows={batch_rows} must be divisible by mesh data={sizes['data']}")
    if n_members % sizes["ens"]:
        raise ConfigError(f"members: {n_members} members must be divisible by mesh ens={sizes['ens']}")
    if sae.n_latents % sizes["latent"]:
        raise ConfigError(f"sae.n_latents={sae.n_latents} must be divisible by mesh latent={sizes['latent']}")


def member_latent_axis(name: str, shape: tuple[int, ...], n_latents: int) -> int | None:
    """The latent axis of a per-member leaf called `name` with per-member `shape`, or None."""
    if name in _LATENT_AXIS_BY_NAME:
        return _LATENT_AXIS_BY_NAME[name]
    if len(shape) == 1 and shape[0] == n_latents:
        return 0
    return None


def _leaf_name(path) -> str:
    for entry in reversed(path):
        if isinstance(entry, jax.tree_util.DictKey):
            return str(entry.key)
    return ""


def member_spec(path, leaf, n_latents: int) -> P:
    """PartitionSpec of an ensemble-stacked leaf [E, ...]: E on `ens`, its latent axis on `latent`."""
    shape = tuple(np.shape(leaf))
    if not shape:
        return P()
    axis = member_latent_axis(_leaf_name(path), shape[1:], n_latents)
    spec = ["ens"] + [None] * (len(shape) - 1)
    if axis is not None:
        spec[axis + 1] = "latent"
    return P(*spec)


def member_specs(tree, n_latents: int):
    """PartitionSpecs for a pytree of ensemble-stacked leaves."""
    return jax.tree_util.tree_map_with_path(lambda p, x: member_spec(p, x, n_latents), tree)


def latent_sharded(tree, n_latents: int):
    """Bool pytree: does the leaf's spec split the latent axis."""
    return jax.tree.map(lambda s: "latent" in tuple(s), member_specs(tree, n_latents),
                        is_leaf=lambda s: isinstance(s, P))


def shardings(mesh: Mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))
