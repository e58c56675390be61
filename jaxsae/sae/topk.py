"""TopK SAE with AuxK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", arXiv:2406.04093).

    z     = ReLU(TopK((x - b_dec) W_enc + b_enc))        ReLU after TopK, as in the paper's code
    x_hat = z W_dec + b_dec                               decoder rows kept unit norm
    loss  = mean_rows ||x - x_hat||^2 + AuxK              (AuxK: see topk_core.auxk_loss)

Per-member k: top-k runs at the static cfg.k; a member with hp["k"] < cfg.k zeroes the trailing slots.
Main term is the plain MSE (summed over d_model, averaged over rows), not sparsify's FVU; inputs arrive at
unit mean squared norm, so the two differ by the per-row variance of x, and AuxK's alpha = 1/32 weighs
slightly more here than in sparsify whenever x has a large mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsae.sae import topk_core
from jaxsae.sae.base import Axes, Buffers, HParams, LossOut, Params, SAEConfig
from jaxsae.sae.common import decode, member_k, pre_activations
from jaxsae.sae.init import decoder_row_norm, tied

__all__ = ["constrained_decoder", "hparam_defaults", "init", "init_buffers", "loss", "encode", "decode",
           "max_active_per_row"]

constrained_decoder = True

hparam_defaults = {
    "k": 0,  # active latents per row; 0 means cfg.k; values above cfg.k are capped at cfg.k
    "aux_coeff": 1.0 / 32.0,  # AuxK alpha
}


def max_active_per_row(cfg: SAEConfig) -> int:
    """Inference latents are non-zero in at most cfg.k places per row (sparse encoding sizes its buffers so)."""
    return cfg.k


def init(key: jax.Array, cfg: SAEConfig, b_dec: jax.Array) -> Params:
    """Decoder rows random unit directions, W_enc = W_dec^T, b_enc = 0, b_dec as given (Gao et al. sec. A.1)."""
    return tied(key, cfg, b_dec, decoder_row_norm(cfg, 1.0))


def init_buffers(cfg: SAEConfig) -> Buffers:
    del cfg
    return {}


def loss(params: Params, buffers: Buffers, x: jax.Array, hp: HParams, cfg: SAEConfig, axes: Axes,
         step: jax.Array, with_aux: bool) -> tuple[jax.Array, LossOut]:
    """x: [B, d] normalised rows (local data shard) -> (loss [], LossOut). terms: mse, auxk."""
    del step
    pre, scores = topk_core.training_pre_activations(params, x, cfg)
    sel = topk_core.select_top_k(scores, cfg.k, axes)
    in_k = topk_core.slot_mask(member_k(hp["k"], cfg), cfg.k)
    acts = jnp.where(in_k, jax.nn.relu(topk_core.selected_pre(params, x, pre, sel)), 0.0)
    return topk_core.reconstruction_loss(params, buffers, x, pre, scores, sel, acts, hp, cfg, axes, with_aux, buffers)


def encode(params: Params, buffers: Buffers, x: jax.Array, hp: HParams, cfg: SAEConfig, axes: Axes) -> jax.Array:
    """Inference latents [B, n_local]: the member's top-k (ReLU'd) of the global pre-activations, 0 elsewhere."""
    del buffers
    pre = pre_activations(x, params["W_enc"], params["b_enc"], params["b_dec"])
    sel = topk_core.select_top_k(pre, cfg.k, axes)
    values = jnp.where(sel.owned, jnp.take_along_axis(pre, sel.local, axis=1), 0.0)
    acts = jnp.where(topk_core.slot_mask(member_k(hp["k"], cfg), cfg.k), jax.nn.relu(values), 0.0)
    return topk_core.scatter_dense(acts, sel, pre.shape[1])
