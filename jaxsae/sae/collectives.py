"""Collectives that are no-ops when their mesh axis is not split (axis name None)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def psum(x, axis: str | None):
    return x if axis is None else jax.lax.psum(x, axis)


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


def pmin(x, axis: str | None):
    return x if axis is None else jax.lax.pmin(x, axis)


def pvary(x, axis: str | None):
    """Mark `x` (invariant over mesh axis `axis`) as varying over it: no communication; its transpose is a psum.

    Needed where a replicated parameter enters a `custom_vjp` next to per-shard data, so that the rule's
    per-shard cotangent has the type JAX expects (the psum over `axis` then happens in the transpose).
    """
    return x if axis is None else jax.lax.pcast(x, axis, to="varying")


def varying_axes(x) -> frozenset:
    """Mesh axes along which `x` varies inside shard_map (empty outside). JAX 0.10 keeps them in
    `typeof(x).manual_axis_type.varying`; older releases in `typeof(x).vma`."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))


def reduce_to_type_of(cotangent, primal):
    """Sum a cotangent over the mesh axes it varies along but its primal does not: what JAX's own transpose of
    an implicit broadcast does (e.g. a data-parallel weight gradient is psum'd over `data`). For custom VJPs."""
    extra = tuple(sorted(varying_axes(cotangent) - varying_axes(primal)))
    return jax.lax.psum(cotangent, extra) if extra else cotangent


def zeros_varying_like_all(shape, dtype, *arrays) -> jax.Array:
    """Zeros typed as varying over every mesh axis any of `arrays` varies over: the initial carry of a loop
    that accumulates values computed from those arrays (a scan's carry must keep one type)."""
    axes = tuple(sorted(frozenset().union(*(varying_axes(a) for a in arrays))))
    zeros = jnp.zeros(shape, dtype)
    return jax.lax.pcast(zeros, axes, to="varying") if axes else zeros
