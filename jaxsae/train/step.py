"""The train state pytree, its sharded initialisation, and the pure, jitted, donated training step.

The step runs as one `shard_map` over the mesh (data, ens, latent): each device holds a slice of the batch,
of the members and of the dictionary; the architecture's math issues the collectives it needs (see
`jaxsae.sae.collectives`). Members are `jax.vmap`ped. Nothing leaves the device: metrics accumulate in the
state and the loop reads them back every `log_every` steps.

A step whose loss or gradients are not all finite (any member, any device) changes nothing but
`first_nonfinite_step`, which records it; every later step is a no-op too. So the state never holds NaN and
the loop can look at that one scalar whenever it syncs anyway, rather than after every step.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from jaxsae.sae import base as sae_base
from jaxsae.sae import collectives as col
from jaxsae.sae.base import SAEConfig
from jaxsae.sae.constraints import normalise_rows, remove_parallel_grad
from jaxsae.train import mesh as mesh_lib
from jaxsae.train.config import TrainConfig

ROWS_SINCE_FIRED = "rows_since_fired"


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training; every leaf but `step`/`scale` has a leading member axis E.

    step:      [] int32 optimizer steps taken.
    params:    architecture parameters, [E, ...].
    opt_state: Adam moments and counts, [E, ...].
    buffers:   non-trained per-member state: rows_since_fired [E, n] int32, architecture buffers.
    scale:     [] float32 input normalisation (x_normalised = scale * x).
    acc:       metric sums since the last read-back: per-member scalars [E], fire_count [E, n], rows, steps.
    first_nonfinite_step: [] int32 the step whose loss or gradients were not finite (-1: none); from then on
               the state is frozen.
    """

    step: jax.Array
    params: dict
    opt_state: Any
    buffers: dict
    scale: jax.Array
    acc: dict
    first_nonfinite_step: jax.Array


def hparam_arrays(cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Per-member hyperparameters as [E] arrays (k as int32, the rest float32)."""
    rows = [cfg.member_hparams(i) for i in range(cfg.n_members)]
    columns = {key: [r[key] for r in rows] for key in rows[0] if key != "seed"}
    return sae_base.hparams_as_arrays(sae_base.get(cfg.sae.architecture), columns, np)


def lr_schedule(step: jax.Array, cfg: TrainConfig) -> jax.Array:
    """Multiplier in [0, 1]: linear warmup, constant, linear decay to 0 over the last decay_fraction."""
    o, total = cfg.optim, cfg.num_steps
    t = step.astype(jnp.float32)
    warm = jnp.minimum(1.0, (t + 1.0) / max(o.warmup_steps, 1))
    decay_steps = max(int(round(o.decay_fraction * total)), 1)
    decay = jnp.clip((total - t) / decay_steps, 0.0, 1.0) if o.decay_fraction > 0 else 1.0
    return warm * decay


def _adam(cfg: TrainConfig) -> optax.GradientTransformation:
    return optax.scale_by_adam(b1=cfg.optim.beta1, b2=cfg.optim.beta2, eps=cfg.optim.eps)


def loss_term_names(sae: SAEConfig) -> tuple[str, ...]:
    """Names of the architecture's loss terms (with AuxK on, the superset)."""
    arch = sae_base.get(sae.architecture)
    b = 8
    params = jax.eval_shape(lambda: arch.init(jax.random.key(0), sae, jnp.zeros(sae.d_model)))
    buffers = jax.eval_shape(lambda: _init_member_buffers(arch, sae))
    hp = sae_base.hparams_as_arrays(arch, arch.hparam_defaults, jnp)
    hp = {**hp, "k": jnp.int32(sae.k)} if "k" in hp else hp
    x = jax.ShapeDtypeStruct((b, sae.d_model), jnp.float32)
    out = jax.eval_shape(
        lambda p, bu, xx: arch.loss(p, bu, xx, hp, sae, sae_base.Axes(), jnp.int32(0), True), params, buffers, x
    )
    return tuple(sorted(out[1].terms))


def _init_member_buffers(arch, sae: SAEConfig) -> dict:
    return {**arch.init_buffers(sae), ROWS_SINCE_FIRED: jnp.zeros((sae.n_latents,), jnp.int32)}


METRIC_SCALARS = ("loss", "fvu", "explained_variance", "l0")


def init_state(cfg: TrainConfig, mesh: Mesh, b_dec: np.ndarray, scale: float) -> TrainState:
    """A fresh, sharded train state. b_dec: [d] initial decoder bias (normalised units); scale: input scale.

    Parameters are created inside `jit` with sharded outputs, so a dictionary too large for one device (or
    host) is only ever materialised in slices.
    """
    arch = sae_base.get(cfg.sae.architecture)
    seeds = np.asarray([cfg.seed + cfg.member_hparams(i)["seed"] for i in range(cfg.n_members)], np.uint32)
    terms = loss_term_names(cfg.sae)
    e = cfg.n_members

    def build(seeds, b_dec, scale):
        keys = jax.vmap(lambda s: jax.random.key(s))(seeds)
        params = jax.vmap(lambda k: arch.init(k, cfg.sae, b_dec))(keys)
        member_buffers = _init_member_buffers(arch, cfg.sae)
        buffers = jax.tree.map(lambda x: jnp.broadcast_to(x, (e,) + x.shape), member_buffers)
        acc = {name: jnp.zeros((e,), jnp.float32) for name in METRIC_SCALARS + terms}
        acc |= {"fire_count": jnp.zeros((e, cfg.sae.n_latents), jnp.float32),
                "rows": jnp.zeros((), jnp.float32), "steps": jnp.zeros((), jnp.float32)}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=jax.vmap(_adam(cfg).init)(params), buffers=buffers,
                          scale=jnp.asarray(scale, jnp.float32), acc=acc,
                          first_nonfinite_step=jnp.full((), -1, jnp.int32))

    abstract = jax.eval_shape(build, seeds, jnp.asarray(b_dec, jnp.float32), np.float32(scale))
    out_shardings = mesh_lib.shardings(mesh, state_specs(abstract, cfg.sae.n_latents))
    return jax.jit(build, out_shardings=out_shardings)(seeds, jnp.asarray(b_dec, jnp.float32), np.float32(scale))


def state_specs(state: TrainState, n_latents: int) -> TrainState:
    """PartitionSpecs of every leaf of a (possibly abstract) state."""
    return TrainState(
        step=P(), params=mesh_lib.member_specs(state.params, n_latents),
        opt_state=mesh_lib.member_specs(state.opt_state, n_latents),
        buffers=mesh_lib.member_specs(state.buffers, n_latents), scale=P(),
        acc={k: (P() if np.ndim(v) == 0 else mesh_lib.member_spec((jax.tree_util.DictKey(k),), v, n_latents))
             for k, v in state.acc.items()},
        first_nonfinite_step=P(),
    )


def _clip_by_global_norm(grads: dict, latent_sharded: dict, max_norm: float, axes) -> dict:
    """Clip one member's gradients to a global norm computed over all its (latent-sharded) leaves."""
    sq = [col.psum(jnp.sum(g * g), axes.latent) if sharded else jnp.sum(g * g)
          for g, sharded in zip(jax.tree.leaves(grads), jax.tree.leaves(latent_sharded))]
    norm = jnp.sqrt(sum(sq))
    factor = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
    return jax.tree.map(lambda g: g * factor, grads)


def make_train_step(cfg: TrainConfig, mesh: Mesh, abstract_state: TrainState) -> Callable:
    """`step(state, batch [B, d] sharded on data, hp {k: [E]}) -> (state, metrics)`.

    metrics: {"loss": [E], "l0": [E], "first_nonfinite_step": [] int32 (a copy of the state's)}. Jitted with
    the state donated; the returned metrics are not donated, so the loop can wait on them and read them.
    """
    arch = sae_base.get(cfg.sae.architecture)
    sae, axes = cfg.sae, mesh_lib.MESH_AXES
    terms = loss_term_names(sae)
    tx = _adam(cfg)
    specs = state_specs(abstract_state, sae.n_latents)
    member_latent_sharded = jax.tree.map(lambda s: "latent" in tuple(s), specs.params,
                                         is_leaf=lambda s: isinstance(s, P))

    def local_step(state: TrainState, x: jax.Array, hp: dict) -> TrainState:
        x = x.astype(jnp.float32) * state.scale
        rows_global = x.shape[0] * col.axis_size(axes.data)
        dead = state.buffers[ROWS_SINCE_FIRED] >= sae.dead_after_rows
        any_dead = col.psum(jnp.sum(dead.astype(jnp.int32)), ("ens", "latent")) > 0

        def member_grads(with_aux: bool, params, buffers, member_hp):
            def f(p):
                return arch.loss(p, buffers, x, member_hp, sae, axes, state.step, with_aux)

            (loss, out), grads = jax.value_and_grad(f, has_aux=True)(params)
            zero = loss * 0.0  # carries the loss's varying-axes type, as cond's branches must match
            out = out._replace(terms={name: out.terms.get(name, 0.0) + zero for name in terms})
            return loss, out, grads

        def branch(with_aux):
            return jax.vmap(functools.partial(member_grads, with_aux))(state.params, state.buffers, hp)

        if sae.architecture in ("topk", "batchtopk", "matryoshka"):
            loss, out, grads = jax.lax.cond(any_dead, lambda: branch(True), lambda: branch(False))
        else:
            loss, out, grads = branch(False)

        def update_member(params, grads, opt_state, lr):
            if arch.constrained_decoder:
                grads = {**grads, "W_dec": remove_parallel_grad(params["W_dec"], grads["W_dec"])}
            if cfg.optim.grad_clip is not None:
                grads = _clip_by_global_norm(grads, member_latent_sharded, cfg.optim.grad_clip, axes)
            updates, opt_state = tx.update(grads, opt_state, params)
            step_size = lr * lr_schedule(state.step, cfg)
            params = jax.tree.map(lambda p, u: p - step_size * u, params, updates)
            if arch.constrained_decoder:
                params = {**params, "W_dec": normalise_rows(params["W_dec"])}
            return params, opt_state

        params, opt_state = jax.vmap(update_member)(state.params, grads, state.opt_state, hp["lr"])

        fire_count = out.fire_count  # already summed over the global batch by the architecture
        fired = fire_count > 0
        rows_since = jnp.where(fired, 0, jnp.minimum(state.buffers[ROWS_SINCE_FIRED] + rows_global,
                                                     sae.dead_after_rows))
        buffers = {**out.buffers, ROWS_SINCE_FIRED: rows_since.astype(jnp.int32)}

        err = x[None] - out.x_hat  # [E, B, d]
        sse = col.psum(jnp.sum(err * err, axis=(1, 2)), axes.data)
        mean = col.psum(jnp.sum(x, axis=0), axes.data) / rows_global
        total_var = col.psum(jnp.sum((x - mean[None, :]) ** 2), axes.data)
        row_ev = 1.0 - jnp.var(err, axis=2) / jnp.maximum(jnp.var(x, axis=1), 1e-12)[None]
        ev = col.psum(jnp.sum(row_ev, axis=1), axes.data) / rows_global
        step_metrics = {"loss": loss, "fvu": sse / jnp.maximum(total_var, 1e-12), "explained_variance": ev,
                        "l0": out.l0, **out.terms}
        acc = {k: state.acc[k] + step_metrics[k] for k in METRIC_SCALARS + terms}
        acc |= {"fire_count": state.acc["fire_count"] + fire_count,
                "rows": state.acc["rows"] + rows_global, "steps": state.acc["steps"] + 1}
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

    hp_spec = {k: P("ens") for k in hparam_arrays(cfg)}
    sharded = jax.shard_map(local_step, mesh=mesh, in_specs=(specs, P("data", None), hp_spec),
                            out_specs=(specs, {"loss": P("ens"), "l0": P("ens"), "first_nonfinite_step": P()}))
    return jax.jit(sharded, donate_argnums=(0,))

