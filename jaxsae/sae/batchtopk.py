"""BatchTopK SAE (Bussmann, Leask & Nanda 2024, "BatchTopK Sparse Autoencoders", arXiv:2412.06410).

Training: keep the B*k largest of ReLU((x - b_dec) W_enc + b_enc) over the whole GLOBAL batch (all rows, all
latents), so rows get a variable number of active latents averaging k. Implemented from each row's top
(cfg.batchtopk_row_cap * cfg.k) candidates and a global threshold over the pooled candidates (exact unless one
row holds more than that many of the batch's top B*k). loss = mean_rows ||x - x_hat||^2 + AuxK (as TopK).

Inference: the per-batch selection is replaced by a JumpReLU with one scalar threshold, the EMA (decay
hp["threshold_ema_decay"]) of the smallest kept activation per training batch (buffer "threshold").
Decoder rows kept unit norm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsae.sae import topk_core
from jaxsae.sae.base import Axes, Buffers, HParams, LossOut, Params, SAEConfig
from jaxsae.sae.common import decode, member_k
from jaxsae.sae.init import decoder_row_norm, tied

__all__ = ["constrained_decoder", "hparam_defaults", "init", "init_buffers", "loss", "encode", "decode"]

constrained_decoder = True

hparam_defaults = {
    "k": 0,  # mean active latents per row; 0 means cfg.k; values above cfg.k are capped at cfg.k
    "aux_coeff": 1.0 / 32.0,  # AuxK alpha
    "threshold_ema_decay": 0.99,  # Bussmann et al.'s reference code: threshold <- 0.99 threshold + 0.01 min
}


def init(key: jax.Array, cfg: SAEConfig, b_dec: jax.Array) -> Params:
    """Decoder rows random unit directions, W_enc = W_dec^T, b_enc = 0, b_dec as given."""
    return tied(key, cfg, b_dec, decoder_row_norm(cfg, 1.0))


def init_buffers(cfg: SAEConfig) -> Buffers:
    """threshold: [] inference threshold; 0 until the first training batch measures one."""
    del cfg
    return {"threshold": jnp.zeros((), jnp.float32)}


def select(params: Params, buffers: Buffers, x: jax.Array, hp: HParams, cfg: SAEConfig, axes: Axes):
    """The BatchTopK training forward up to the activations (shared with Matryoshka).

    Returns (pre, scores, candidates, acts [B, C] (0 where not kept or not owned), buffers with the new threshold).
    """
    pre, scores = topk_core.training_pre_activations(params, x, cfg)
    candidates, keep, min_kept = topk_core.batch_top_k(scores, member_k(hp["k"], cfg), cfg, axes)
    acts = jnp.where(keep, jax.nn.relu(topk_core.selected_pre(params, x, pre, candidates)), 0.0)
    threshold = topk_core.update_threshold(buffers["threshold"], min_kept, hp["threshold_ema_decay"])
    return pre, scores, candidates, acts, {**buffers, "threshold": threshold}


def loss(params: Params, buffers: Buffers, x: jax.Array, hp: HParams, cfg: SAEConfig, axes: Axes,
         step: jax.Array, with_aux: bool) -> tuple[jax.Array, LossOut]:
    """x: [B, d] normalised rows (local data shard) -> (loss [], LossOut). terms: mse, auxk."""
    del step
    pre, scores, candidates, acts, new_buffers = select(params, buffers, x, hp, cfg, axes)
    return topk_core.reconstruction_loss(params, buffers, x, pre, scores, candidates, acts, hp, cfg, axes, with_aux,
                                         new_buffers)


def encode(params: Params, buffers: Buffers, x: jax.Array, hp: HParams, cfg: SAEConfig, axes: Axes) -> jax.Array:
    """Inference latents [B, n_local] = ReLU(pre) * [pre > buffers["threshold"]] (no batch dependence)."""
    del hp, cfg, axes
    return topk_core.threshold_encode(params, buffers, x)
