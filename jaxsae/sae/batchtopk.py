"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders", arXiv:2412.06410).

Training: keep the B*k largest of ReLU((x - b_dec) W_enc + b_enc) over the whole GLOBAL batch (all rows, all
latents), so rows get a variable number of active latents averaging k. Implemented from each row's top
(cfg.batchtopk_row_cap * cfg.k) candidates and a global threshold over the pooled candidates (exact unless one
row holds more than that many of the batch's top B*k). loss = mean_rows ||x - x_hat||^2 + AuxK (as TopK).

Inference: the per-batch selection is replaced by a JumpReLU with one scalar threshold, the EMA (decay
hp.threshold_ema_decay) of the smallest kept activation per training batch (buffer "threshold").
Decoder rows kept unit norm.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.sae.base import Architecture, Axes, Buffers, LossContext, LossOut, Params, Range, SAEConfig, check_k
from jaxsae.sae.common import decode, member_k, pre_activations
from jaxsae.sae.fold import linear_fold
from jaxsae.sae.init import TIED_LAYOUT, TORCH_LINEAR_ROW_NORM, decoder_row_norm, tied
from jaxsae.sae.portable import PortableForm, linear
from jaxsae.sae.sparse import batch_candidates, batch_top_k, selected_pre
from jaxsae.sae.topk_losses import LOSS_TERMS, Forward, reconstruction_loss, select as topk_select

__all__ = ["batchtopk"]


class BatchTopKHParams(NamedTuple):
    k: Annotated[int, Range(1, "k")] = 0  # mean active latents per row; at most sae.k
    aux_coeff: Annotated[float, Range(0.0)] = 1.0 / 32.0  # AuxK alpha
    # Bussmann et al.'s reference code: threshold <- 0.99 threshold + 0.01 min
    threshold_ema_decay: Annotated[float, Range(0.0, 1.0)] = 0.99


def init_buffers() -> Buffers:
    """threshold: [] inference threshold; 0 until the first training batch measures one."""
    return {"threshold": jnp.zeros((), jnp.float32)}


def update_threshold(threshold: jax.Array, min_kept: jax.Array, decay: jax.Array) -> jax.Array:
    """EMA of the smallest kept activation per batch (BatchTopK inference threshold). A threshold of 0 means
    'never measured' and takes the first measurement as is (the reference code starts the EMA at 0, which
    biases it low for ~1/(1-decay) steps); batches with nothing kept leave it unchanged."""
    min_kept = jax.lax.stop_gradient(min_kept)
    ema = jnp.where(threshold > 0, decay * threshold + (1.0 - decay) * min_kept, min_kept)
    return jnp.where(jnp.isfinite(min_kept), ema, threshold)


def encode(params: Params, buffers: Buffers, x: jax.Array, hp: BatchTopKHParams, axes: Axes) -> jax.Array:
    """Inference latents [B, n_local] = ReLU(pre) * [pre > buffers["threshold"]] (no batch dependence).
    buffers["threshold"]: [] (a one-element array, as a file may store it, is accepted too)."""
    pre = pre_activations(x, params["W_enc"], params["b_enc"], params["b_dec"])
    return jnp.where(pre > jnp.reshape(buffers["threshold"], ()), jax.nn.relu(pre), 0.0)


def select(params: Params, buffers: Buffers, x: jax.Array, hp: BatchTopKHParams, cfg: SAEConfig,
           ctx: LossContext) -> tuple[Forward, Buffers]:
    """The BatchTopK training forward up to the activations (shared with Matryoshka): (Forward with the
    candidates as its selection, buffers with the new threshold)."""
    pre, candidates, aux = topk_select(params, x, batch_candidates(cfg), ctx, cfg)
    keep, min_kept = batch_top_k(candidates, member_k(hp.k, cfg.k), ctx.axes)
    acts = jnp.where(keep, jax.nn.relu(selected_pre(params, x, pre, candidates, cfg.sparse_decode)), 0.0)
    threshold = update_threshold(buffers["threshold"], min_kept, hp.threshold_ema_decay)
    return Forward(x, pre, candidates, acts, aux), {**buffers, "threshold": threshold}


def batchtopk(cfg: SAEConfig) -> Architecture:
    """The BatchTopK (+ AuxK) architecture for `cfg`."""
    check_k(cfg)

    def init(key: jax.Array, b_dec: jax.Array) -> Params:
        """Decoder rows random unit directions, W_enc = W_dec^T with columns of norm 1/sqrt(3) as TopK's (see
        topk.py; demo store, 1,000 steps: training FVU 0.0625 vs 0.0815 with unit columns), b_enc = 0, b_dec as
        given."""
        return tied(key, cfg, b_dec, decoder_row_norm(cfg, 1.0), TORCH_LINEAR_ROW_NORM)

    def loss(params: Params, buffers: Buffers, x: jax.Array, hp: BatchTopKHParams,
             ctx: LossContext) -> tuple[jax.Array, LossOut]:
        """x: [B, d] normalised rows (local data shard) -> (loss [], LossOut). terms: mse, auxk."""
        fwd, new_buffers = select(params, buffers, x, hp, cfg, ctx)
        return reconstruction_loss(params, fwd, hp, ctx, cfg, new_buffers)

    def portable(params, buffers, hp) -> PortableForm:
        """At inference a scalar threshold: a JumpReLU with it in every latent."""
        n = params["W_enc"].shape[1]
        return PortableForm("jumprelu", {**linear(params), "threshold": np.full(
            n, np.reshape(buffers["threshold"], ()), np.float32)})

    return Architecture(
        name="batchtopk", init=init, init_buffers=init_buffers, encode=encode, decode=decode, loss=loss,
        fold_input_scale=linear_fold(), hparams=BatchTopKHParams, default_hparams=BatchTopKHParams(k=cfg.k),
        param_layout=TIED_LAYOUT, buffer_layout={"threshold": None}, uses_auxk=True,
        decoder_constraint="unit_norm_rows", max_active_per_row=None, loss_terms=LOSS_TERMS,
        portable=portable,
    )
