"""The top-k family's losses: the AuxK term and the reconstruction tail TopK, BatchTopK and Matryoshka share."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsae.sae.base import Buffers, HParams, LossContext, LossOut, Params, SAEConfig
from jaxsae.sae.collectives import psum
from jaxsae.sae.common import firing, global_rows, mse, pre_activations, total_variance
from jaxsae.sae.sparse import Selection, decode_partial, encoder_selection, fires, gather_pays, selected_pre

LOSS_TERMS = ("auxk", "mse")


class Forward(NamedTuple):
    """A top-k family forward pass up to the activations (one member, local shards).

    x:    [B, d] normalised rows.
    pre:  [B, n_local] differentiable pre-activations on the dense reference path; None with sae.sparse_decode
          (never materialised in the step: see `jaxsae.sae.sparse.encoder_selection`).
    sel:  the K selected latents of each row.
    acts: [B, K] their activations (0 where not kept or not owned by this shard).
    aux:  AuxK's selection: the top aux_k DEAD latents of each row (-inf scores: fillers); None without AuxK.
    """

    x: jax.Array
    pre: jax.Array | None
    sel: Selection
    acts: jax.Array
    aux: Selection | None


def select(params: Params, x: jax.Array, k: int, ctx: LossContext,
           cfg: SAEConfig) -> tuple[jax.Array | None, Selection, Selection | None]:
    """(pre, sel, aux) of the top-k family's training forward: the top-k of the stop-gradient pre-activations,
    AuxK's top aux_k among dead latents when ctx.with_aux, and the differentiable pre-activations [B, n_local]
    on the dense reference path only (None with cfg.sparse_decode). Both paths select with the same function,
    so the sparse step and its dense reference choose the same latents."""
    sel, aux = encoder_selection(params, x, k, ctx.axes, cfg, dead=ctx.dead if ctx.with_aux else None,
                                 aux_k=cfg.aux_k)
    pre = None if cfg.sparse_decode else pre_activations(x, params["W_enc"], params["b_enc"], params["b_dec"],
                                                         cfg.compute_dtype)
    return pre, sel, aux


def auxk_loss(params: Params, fwd: Forward, x_hat: jax.Array, hp: HParams, ctx: LossContext,
              cfg: SAEConfig) -> jax.Array:
    """AuxK (Gao et al. 2024, sec. A.2): the top cfg.aux_k DEAD latents (ctx.dead) of each row reconstruct the
    main residual e = x - x_hat (stop-gradient): e_hat = sum ReLU(pre_i) W_dec,i over them, WITHOUT b_dec (as in
    the paper; sparsify adds b_dec).

    Normalised as in EleutherAI sparsify: sum_rows ||e_hat - e||^2 / sum_rows ||x - mean(x)||^2, scaled by
    min(num_dead / aux_k, 1), weighted by hp.aux_coeff (alpha). Rows of fewer than aux_k dead latents pad
    with zeros. Returns the weighted scalar term.
    """
    axes, x, sel = ctx.axes, fwd.x, fwd.aux
    is_dead = jnp.isfinite(sel.score)
    acts = jnp.where(is_dead, jax.nn.relu(selected_pre(params, x, fwd.pre, sel, cfg.sparse_decode)), 0.0)
    # k_aux (d/2 by default) is large: a dense decode beats gathering [B, k_aux, d] rows unless n_local is huge.
    sparse = cfg.sparse_decode and gather_pays(cfg.aux_k, params["W_enc"].shape[1])
    e_hat = decode_partial(params["W_dec"], acts, sel, axes, sparse, cfg.compute_dtype)
    residual = jax.lax.stop_gradient(x - x_hat)
    error = psum(jnp.sum(jnp.square(e_hat - residual)), axes.data)
    num_dead = psum(jnp.sum(ctx.dead.astype(jnp.float32)), axes.latent)
    scale = jnp.minimum(num_dead / cfg.aux_k, 1.0)
    return hp.aux_coeff * scale * error / jnp.maximum(total_variance(x, axes), 1e-30)


def auxk_term(params: Params, fwd: Forward, x_hat: jax.Array, hp: HParams, ctx: LossContext,
              cfg: SAEConfig) -> jax.Array:
    """The AuxK term when ctx.with_aux, else a 0 of the same type."""
    if ctx.with_aux:
        return auxk_loss(params, fwd, x_hat, hp, ctx, cfg)
    return jnp.zeros((), jnp.float32)


def reconstruction_loss(params: Params, fwd: Forward, hp: HParams, ctx: LossContext, cfg: SAEConfig,
                        new_buffers: Buffers) -> tuple[jax.Array, LossOut]:
    """The loss tail TopK and BatchTopK share: decode the selected activations, mean squared error, AuxK
    when ctx.with_aux, firing statistics. Returns (mse + auxk, LossOut)."""
    partial = decode_partial(params["W_dec"], fwd.acts, fwd.sel, ctx.axes, cfg.sparse_decode, cfg.compute_dtype)
    x_hat = partial + params["b_dec"][None, :]
    terms = {"mse": mse(fwd.x, x_hat, ctx.axes), "auxk": auxk_term(params, fwd, x_hat, hp, ctx, cfg)}
    fire_count, l0 = firing(fires(fwd.acts > 0, fwd.sel, params["W_enc"].shape[1]), global_rows(fwd.x, ctx.axes), ctx.axes)
    return terms["mse"] + terms["auxk"], LossOut(terms, x_hat, fire_count, l0, new_buffers)
