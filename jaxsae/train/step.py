"""The pure, jitted, donated training step, built from an architecture bundle, an optimizer and a mesh.

The step runs as one `shard_map` over the mesh (data, ens, latent): each device holds a slice of the batch,
of the members and of the dictionary; the architecture's math issues the collectives it needs (see
`jaxsae.sae.collectives`). Members are `jax.vmap`ped, in groups of equal k (`state.member_groups`): each
group's loss and gradients run with the architecture built at its own k, one group after another, so a k = 8
member in a pack with k = 64 members does not pay for 64 top-k slots. Nothing leaves the device: metrics accumulate in the
state and the loop reads them back every `log_every` steps.

A step whose loss or gradients are not all finite (any member, any device) changes nothing but
`first_nonfinite_step`, which records it; every later step is a no-op too. So the state never holds NaN and
the loop can look at that one scalar whenever it syncs anyway, rather than after every step.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P

from jaxsae.sae import collectives as col
from jaxsae.sae.base import Architecture, LossContext
from jaxsae.train import mesh as mesh_lib
from jaxsae.train.metrics import Accumulators
from jaxsae.train.optim import project_params
from jaxsae.train.state import MemberBuffers, MemberGroup, MemberSettings, TrainState, state_specs


def _batch_metrics(x: jax.Array, x_hat: jax.Array, rows_global: int, axes) -> tuple[jax.Array, jax.Array]:
    """(fvu [E], explained_variance [E]) of reconstructions x_hat [E, B, d] of x [B, d] over the global batch."""
    err = x[None] - x_hat
    sse = col.psum(jnp.sum(err * err, axis=(1, 2)), axes.data)
    mean = col.psum(jnp.sum(x, axis=0), axes.data) / rows_global
    total_var = col.psum(jnp.sum((x - mean[None, :]) ** 2), axes.data)
    row_ev = 1.0 - jnp.var(err, axis=2) / jnp.maximum(jnp.var(x, axis=1), 1e-12)[None]
    ev = col.psum(jnp.sum(row_ev, axis=1), axes.data) / rows_global
    return sse / jnp.maximum(total_var, 1e-12), ev


def make_train_step(arch: Architecture, tx: optax.GradientTransformationExtraArgs, mesh: Mesh, *,
                    dead_after_rows: int, groups: tuple[MemberGroup, ...] | None = None) -> Callable:
    """`step(state, batch [B, d] sharded on data, settings: MemberSettings of [E] arrays) -> (state, metrics)`.

    tx: one member's update chain (`jaxsae.train.optim.make_optimizer`), called with the member's lr.
    groups: how each device's members split into groups of equal k (`state.member_groups`); None: one group,
    every member at `arch`'s k. Groups are contiguous slices of the member axis: the slices of the parameters
    and the joined [E, ...] gradients are the only copies they add.
    metrics: {"loss": [E], "l0": [E], "first_nonfinite_step": [] int32 (a copy of the state's)}. Jitted with
    the state donated; the returned metrics are not donated, so the loop can wait on them and read them.
    """
    axes = mesh_lib.MESH_AXES
    groups = groups or (MemberGroup(arch, 0, None),)

    def local_step(state: TrainState, x: jax.Array, settings: MemberSettings):
        x = x.astype(jnp.float32) * state.scale
        rows_global = x.shape[0] * col.axis_size(axes.data)
        dead = state.buffers.rows_since_fired >= dead_after_rows  # [E, n_local]

        def member_grads(group_arch: Architecture, with_aux: bool, params, buffers, hp, member_dead):
            ctx = LossContext(axes=axes, step=state.step, with_aux=with_aux, dead=member_dead)
            (loss, out), grads = jax.value_and_grad(lambda p: group_arch.loss(p, buffers, x, hp, ctx),
                                                    has_aux=True)(params)
            if tuple(sorted(out.terms)) != tuple(sorted(arch.loss_terms)):
                raise ValueError(f"architecture {arch.name}: loss returned terms {sorted(out.terms)}, its "
                                 f"loss_terms are {sorted(arch.loss_terms)}")
            zero = loss * 0.0  # carries the loss's varying-axes type, as cond's branches must match
            return loss, out._replace(terms={name: value + zero for name, value in out.terms.items()}), grads

        members = (state.params, state.buffers.arch, settings.hp, dead)

        def branch(with_aux):
            if len(groups) == 1:
                return jax.vmap(functools.partial(member_grads, groups[0].arch, with_aux))(*members)
            outs = [jax.vmap(functools.partial(member_grads, g.arch, with_aux))(
                *jax.tree.map(lambda a: a[g.start:g.stop], members)) for g in groups]
            return jax.tree.map(lambda *parts: jnp.concatenate(parts), *outs)

        if arch.uses_auxk:
            any_dead = col.psum(jnp.sum(dead.astype(jnp.int32)), ("ens", "latent")) > 0
            loss, out, grads = jax.lax.cond(any_dead, lambda: branch(True), lambda: branch(False))
        else:
            loss, out, grads = branch(False)

        def update_member(params, grads, opt_state, lr):
            updates, opt_state = tx.update(grads, opt_state, params, lr=lr)
            return project_params(optax.apply_updates(params, updates), arch), opt_state

        params, opt_state = jax.vmap(update_member)(state.params, grads, state.opt_state, settings.lr)

        fire_count = out.fire_count  # already summed over the global batch by the architecture
        rows_since = jnp.where(fire_count > 0, 0,
                               jnp.minimum(state.buffers.rows_since_fired + rows_global, dead_after_rows))
        buffers = MemberBuffers(rows_since_fired=rows_since.astype(jnp.int32), arch=out.buffers)
        fvu, ev = _batch_metrics(x, out.x_hat, rows_global, axes)
        acc = state.acc
        acc = Accumulators(loss=acc.loss + loss, fvu=acc.fvu + fvu, explained_variance=acc.explained_variance + ev,
                           l0=acc.l0 + out.l0, terms={k: v + out.terms[k] for k, v in acc.terms.items()},
                           fire_count=acc.fire_count + fire_count, rows=acc.rows + rows_global, steps=acc.steps + 1)
        updated = TrainState(step=state.step + 1, params=params, opt_state=opt_state, buffers=buffers,
                             scale=state.scale, acc=acc, first_nonfinite_step=state.first_nonfinite_step)
        # Global over members and devices: summed over the mesh axes along which the count may differ.
        n_nonfinite = sum(jnp.sum(~jnp.isfinite(g)).astype(jnp.int32) for g in jax.tree.leaves((loss, grads)))
        varying = tuple(sorted(col.varying_axes(n_nonfinite)))
        finite = (jax.lax.psum(n_nonfinite, varying) if varying else n_nonfinite) == 0
        first_bad = jnp.where((state.first_nonfinite_step < 0) & ~finite, state.step,
                              state.first_nonfinite_step)
        keep = finite & (state.first_nonfinite_step < 0)
        new_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), updated, state)
        new_state = new_state.replace(first_nonfinite_step=first_bad)
        return new_state, {"loss": loss, "l0": out.l0, "first_nonfinite_step": first_bad}

    def step(state: TrainState, x: jax.Array, settings: MemberSettings):
        specs = state_specs(state, arch, tx)
        settings_specs = jax.tree.map(lambda _: P("ens"), settings)
        sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(specs, P("data", None), settings_specs),
                                out_specs=(specs, {"loss": P("ens"), "l0": P("ens"), "first_nonfinite_step": P()}))
        return sharded(state, x, settings)

    return jax.jit(step, donate_argnums=(0,))
