"""Collectives that are no-ops when their mesh axis is not split (axis name None)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def psum(x, axis: str | None):
    return x if axis is None else jax.lax.psum(x, axis)


def pmax(x, axis: str | None):
    return x if axis is None else jax.lax.pmax(x, axis)


def all_gather(x, axis: str | None, *, gather_axis: int = 0, tiled: bool = True):
    """Concatenate the shards of `x` along `gather_axis` (tiled) across mesh axis `axis`."""
    return x if axis is None else jax.lax.all_gather(x, axis, axis=gather_axis, tiled=tiled)


def axis_size(axis: str | None) -> int:
    return 1 if axis is None else jax.lax.axis_size(axis)


def shard_offset(n_local: int, axis: str | None) -> jax.Array:
    """Global index of this shard's first element along a dimension of local size n_local."""
    if axis is None:
        return jnp.zeros((), jnp.int32)
    return (jax.lax.axis_index(axis) * n_local).astype(jnp.int32)
