"""The device mesh (axes data, ens, latent) and where every array of the train state lives on it."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from jaxsae.sae.base import Axes, ConfigError, SAEConfig
from jaxsae.train.config import MeshConfig

AXES = ("data", "ens", "latent")
MESH_AXES = Axes(data="data", latent="latent")


def split_host_cores() -> int | None:
    """Give JAX's CPU platform one device per core this process may use, so that independent work (a pack's
    members on `ens`) runs on every core: on one CPU device many of a small dictionary's ops run on one thread
    (a d 64 / 1,024-latent TopK step keeps ~1.4 of 2 cores busy). Left alone where the user chose a count
    (JAX_NUM_CPU_DEVICES, or --xla_force_host_platform_device_count in XLA_FLAGS). Call it before anything
    asks JAX for devices; it does not touch accelerators. Returns the device count it set, or None."""
    if "JAX_NUM_CPU_DEVICES" in os.environ or "xla_force_host_platform_device_count" in os.environ.get(
            "XLA_FLAGS", ""):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jax.config.update("jax_num_cpu_devices", cores)
    return cores


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


def member_spec(latent_axis: int | None, ndim: int) -> P:
    """PartitionSpec of an ensemble-stacked leaf [E, ...] of `ndim` dims: E on `ens`, and the member leaf's
    `latent_axis` (None: not a latent axis) on `latent`."""
    spec = ["ens"] + [None] * (ndim - 1)
    if latent_axis is not None:
        spec[latent_axis + 1] = "latent"
    return P(*spec)


def layout_specs(tree: dict, layout) -> dict:
    """PartitionSpecs of a dict of ensemble-stacked leaves (arrays or ShapeDtypeStructs), from an
    architecture's layout (name -> latent axis of one member's leaf, see `Architecture.param_layout`)."""
    return {name: member_spec(layout[name], len(leaf.shape)) for name, leaf in tree.items()}


def shardings(mesh: Mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda s: isinstance(s, P))
