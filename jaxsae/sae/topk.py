"""TopK SAE with AuxK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", arXiv:2406.04093).

    z     = ReLU(TopK((x - b_dec) W_enc + b_enc))        ReLU after TopK, as in the paper's code
    x_hat = z W_dec + b_dec                               decoder rows kept unit norm
    loss  = mean_rows ||x - x_hat||^2 + AuxK              (AuxK: see topk_losses.auxk_loss)

Per-member k: top-k runs at the static cfg.k; a member with hp.k < cfg.k zeroes the trailing slots.
Main term is the plain MSE (summed over d_model, averaged over rows), not sparsify's FVU; inputs arrive at
unit mean squared norm, so the two differ by the per-row variance of x, and AuxK's alpha = 1/32 weighs
slightly more here than in sparsify whenever x has a large mean.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import jax
import jax.numpy as jnp

from jaxsae.sae.base import Architecture, Axes, Buffers, LossContext, LossOut, Params, Range, SAEConfig, check_k
from jaxsae.sae.common import decode, member_k, pre_activations
from jaxsae.sae.fold import linear_fold
from jaxsae.sae.init import TIED_LAYOUT, TORCH_LINEAR_ROW_NORM, decoder_row_norm, tied
from jaxsae.sae.portable import PortableForm, linear
from jaxsae.sae.sparse import scatter_dense, select_top_k, selected_pre, slot_mask
from jaxsae.sae.topk_losses import LOSS_TERMS, Forward, reconstruction_loss, select

__all__ = ["topk"]


class TopKHParams(NamedTuple):
    k: Annotated[int, Range(1, "k")] = 0  # active latents per row; at most sae.k (the pack's slot count)
    aux_coeff: Annotated[float, Range(0.0)] = 1.0 / 32.0  # AuxK alpha


def topk(cfg: SAEConfig) -> Architecture:
    """The TopK (+ AuxK) architecture for `cfg`."""
    check_k(cfg)

    def init(key: jax.Array, b_dec: jax.Array) -> Params:
        """Decoder rows random unit directions, W_enc = W_dec^T (Gao et al. sec. A.1) with columns of norm 1/sqrt(3)
        as their code's and sparsify's encoder starts (`TORCH_LINEAR_ROW_NORM`), b_enc = 0, b_dec as given.
        Unit encoder columns fit worse: bench_vs_sparsify's held-out FVU 0.675 vs 0.634 after 64 steps of 4,096
        rows, 0.637 vs 0.629 after 256 of 1,024 (experiments/RESULTS.md)."""
        return tied(key, cfg, b_dec, decoder_row_norm(cfg, 1.0), TORCH_LINEAR_ROW_NORM)

    def loss(params: Params, buffers: Buffers, x: jax.Array, hp: TopKHParams,
             ctx: LossContext) -> tuple[jax.Array, LossOut]:
        """x: [B, d] normalised rows (local data shard) -> (loss [], LossOut). terms: mse, auxk."""
        pre, sel, aux = select(params, x, cfg.k, ctx, cfg)
        in_k = slot_mask(member_k(hp.k, cfg.k), cfg.k)
        acts = jnp.where(in_k, jax.nn.relu(selected_pre(params, x, pre, sel, cfg.sparse_decode)), 0.0)
        return reconstruction_loss(params, Forward(x, pre, sel, acts, aux), hp, ctx, cfg, buffers)

    def encode(params: Params, buffers: Buffers, x: jax.Array, hp: TopKHParams, axes: Axes) -> jax.Array:
        """Inference latents [B, n_local]: the member's top-k (ReLU'd) of the global pre-activations, 0 elsewhere."""
        pre = pre_activations(x, params["W_enc"], params["b_enc"], params["b_dec"])
        sel = select_top_k(pre, cfg.k, axes)
        values = jnp.where(sel.owned, jnp.take_along_axis(pre, sel.local, axis=1), 0.0)
        acts = jnp.where(slot_mask(member_k(hp.k, cfg.k), cfg.k), jax.nn.relu(values), 0.0)
        return scatter_dense(acts, sel, pre.shape[1])

    return Architecture(
        name="topk", init=init, init_buffers=dict, encode=encode, decode=decode, loss=loss,
        fold_input_scale=linear_fold(), hparams=TopKHParams, default_hparams=TopKHParams(k=cfg.k),
        param_layout=TIED_LAYOUT, buffer_layout={}, uses_auxk=True, decoder_constraint="unit_norm_rows",
        max_active_per_row=cfg.k, loss_terms=LOSS_TERMS,
        portable=lambda params, buffers, hp: PortableForm("topk", linear(params), k=int(member_k(hp.k, cfg.k))),
    )
