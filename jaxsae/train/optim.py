"""The update as an optax chain: decoder-gradient projection, mesh-aware clipping, Adam, the schedule, the
member's learning rate; and the unit-norm projection of decoder rows after `optax.apply_updates`.

One member's chain (the trainer vmaps it over members, inside the step's shard_map):

    project_decoder_grad()            ours: remove each decoder row's gradient component along the row
    clip_by_global_norm_over(...)     ours: optax.clip_by_global_norm sums only the local shard; this psums the
                                      squared norms of latent-sharded leaves over the mesh's latent axis
    optax.scale_by_adam(b1, b2, eps)
    optax.scale_by_schedule(schedule) linear warmup x linear decay over the last decay_fraction (optax schedules)
    scale_by_member_lr()              ours: times -lr, the member's [E]-vmapped learning rate (an extra arg)

Decoder rows are put back on the unit sphere AFTER `optax.apply_updates` (`project_params`), not by a
transform: an update u = normalise(p + a) - p lands p + u on the sphere only up to rounding (p + u is not
normalise(p + a) in floating point), so rows would drift off it by an ulp per step; projecting the new
parameters is exact and is what optax's own `optax.projections` are for.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxsae.sae.base import Architecture
from jaxsae.sae.collectives import psum
from jaxsae.sae.constraints import normalise_rows, remove_parallel_grad
from jaxsae.train.config import OptimConfig, TrainConfig
from jaxsae.train.mesh import MESH_AXES


def project_decoder_grad() -> optax.GradientTransformation:
    """updates["W_dec"] [n, d] minus its component along each row of params["W_dec"] (tangent to the sphere)."""

    def update(updates, state, params=None):
        W_dec = remove_parallel_grad(params["W_dec"], updates["W_dec"])
        return {**updates, "W_dec": W_dec}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def clip_by_global_norm_over(max_norm: float, latent_sharded: dict[str, bool],
                             latent_axis: str | None) -> optax.GradientTransformation:
    """Scale all updates by min(1, max_norm / ||updates||), the norm over every leaf of the member: leaves in
    `latent_sharded` (name -> split over `latent_axis`) contribute their psum over that axis."""

    def update(updates, state, params=None):
        local = sum(jnp.sum(jnp.square(u)) for name, u in updates.items() if latent_sharded[name])
        replicated = sum(jnp.sum(jnp.square(u)) for name, u in updates.items() if not latent_sharded[name])
        norm = jnp.sqrt(psum(local, latent_axis) + replicated)
        factor = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
        return jax.tree.map(lambda u: u * factor, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_member_lr() -> optax.GradientTransformationExtraArgs:
    """updates * -lr, lr the member's learning rate passed as `update(..., lr=[])` (under vmap: one per member)."""

    def update(updates, state, params=None, *, lr: jax.Array, **extra_args):
        del extra_args
        return jax.tree.map(lambda u: -lr * u, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


def schedule(optim: OptimConfig, num_steps: int) -> optax.Schedule:
    """Multiplier in [0, 1] at step t: linear warmup (t + 1) / warmup_steps, constant, then a linear decay to 0
    over the last decay_fraction of num_steps (their product where they overlap in a short run)."""
    warmup_steps = max(optim.warmup_steps, 1)
    warmup = optax.linear_schedule(1.0 / warmup_steps, 1.0, warmup_steps - 1)
    if optim.decay_fraction <= 0:
        return warmup
    decay_steps = max(int(round(optim.decay_fraction * num_steps)), 1)
    decay = optax.join_schedules([optax.constant_schedule(1.0), optax.linear_schedule(1.0, 0.0, decay_steps)],
                                 [num_steps - decay_steps])
    return lambda step: warmup(step) * decay(step)


def make_optimizer(optim: OptimConfig, num_steps: int, arch: Architecture,
                   latent_axis: str | None) -> optax.GradientTransformationExtraArgs:
    """One member's update chain (see the module docstring); `update(grads, state, params, lr=lr)`."""
    unit_rows = arch.decoder_constraint == "unit_norm_rows"
    latent_sharded = {name: axis is not None for name, axis in arch.param_layout.items()}
    return optax.chain(
        *([project_decoder_grad()] if unit_rows else []),
        *([clip_by_global_norm_over(optim.grad_clip, latent_sharded, latent_axis)] if optim.grad_clip else []),
        optax.scale_by_adam(b1=optim.beta1, b2=optim.beta2, eps=optim.eps),
        optax.scale_by_schedule(schedule(optim, num_steps)),
        scale_by_member_lr(),
    )


def for_config(cfg: TrainConfig, arch: Architecture) -> optax.GradientTransformationExtraArgs:
    """The trainer's chain for a run: cfg.optim over cfg.num_steps, clipping across the mesh's latent axis."""
    return make_optimizer(cfg.optim, cfg.num_steps, arch, MESH_AXES.latent)


def project_params(params: dict[str, Any], arch: Architecture) -> dict[str, Any]:
    """The architecture's decoder constraint applied to updated params: unit-norm W_dec rows, or unchanged."""
    if arch.decoder_constraint == "unit_norm_rows":
        return {**params, "W_dec": normalise_rows(params["W_dec"])}
    return params
