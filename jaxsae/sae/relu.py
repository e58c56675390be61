"""ReLU SAE with decoder-norm-weighted L1 (Anthropic, "Circuits Updates - April 2024", transformer-circuits.pub).

    f     = ReLU((x - b_dec) W_enc + b_enc)
    x_hat = f W_dec + b_dec                                decoder UNconstrained
    loss  = mean_rows ||x - x_hat||^2 + lambda(t) mean_rows sum_i f_i ||W_dec,i||
    lambda(t) = hp.l1_coeff * min(1, step / hp.l1_warmup_steps)   (Anthropic: warm up over 5% of steps)

Differences from the update, by choice: (1) the encoder subtracts b_dec first like every architecture here
(Anthropic drops it; the two are reparametrisations of b_enc, equal in function, not in optimiser dynamics).
(2) Anthropic scales inputs to E||x||^2 = d_model and uses lambda ~ 5; inputs here have E||x||^2 = 1, which
maps lambda to lambda / sqrt(d_model) (5 -> ~0.2 at d_model = 640). Gradient clipping to norm 1 (also in the
update) is the trainer's job.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import jax

from jaxsae.sae.base import Architecture, Axes, Buffers, LossContext, LossOut, Params, Range, SAEConfig
from jaxsae.sae.common import decode, decoder_norms, dense_firing, latent_row_mean, mse, pre_activations, warmup
from jaxsae.sae.fold import linear_fold
from jaxsae.sae.init import TIED_LAYOUT, decoder_row_norm, tied
from jaxsae.sae.portable import PortableForm, linear

__all__ = ["relu"]


class ReLUHParams(NamedTuple):
    l1_coeff: Annotated[float, Range(0.0)] = 0.2  # lambda, for inputs at unit mean squared norm
    l1_warmup_steps: Annotated[int, Range(0)] = 0  # linear warmup of lambda from 0; 0 = none


def relu(cfg: SAEConfig) -> Architecture:
    """The ReLU + decoder-norm-weighted L1 architecture for `cfg`."""

    def init(key: jax.Array, b_dec: jax.Array) -> Params:
        """Decoder rows random directions of norm cfg.decoder_init_norm (default 0.1), W_enc = W_dec^T, b_enc = 0."""
        return tied(key, cfg, b_dec, decoder_row_norm(cfg, 0.1))

    def encode(params: Params, buffers: Buffers, x: jax.Array, hp: ReLUHParams, axes: Axes) -> jax.Array:
        """Latents [B, n_local] = ReLU((x - b_dec) W_enc + b_enc)."""
        return jax.nn.relu(pre_activations(x, params["W_enc"], params["b_enc"], params["b_dec"]))

    def loss(params: Params, buffers: Buffers, x: jax.Array, hp: ReLUHParams,
             ctx: LossContext) -> tuple[jax.Array, LossOut]:
        """x: [B, d] normalised rows (local data shard) -> (loss [], LossOut). terms: mse, l1 (weighted)."""
        f = jax.nn.relu(pre_activations(x, params["W_enc"], params["b_enc"], params["b_dec"], cfg.compute_dtype))
        x_hat = decode(params, f, ctx.axes, cfg.compute_dtype)
        weighted_l1 = latent_row_mean(f @ decoder_norms(params["W_dec"]), ctx.axes)
        terms = {"mse": mse(x, x_hat, ctx.axes),
                 "l1": hp.l1_coeff * warmup(ctx.step, hp.l1_warmup_steps) * weighted_l1}
        fire_count, l0 = dense_firing(f, ctx.axes)
        return terms["mse"] + terms["l1"], LossOut(terms, x_hat, fire_count, l0, buffers)

    return Architecture(
        name="relu", init=init, init_buffers=dict, encode=encode, decode=decode, loss=loss,
        fold_input_scale=linear_fold(), hparams=ReLUHParams, default_hparams=ReLUHParams(),
        param_layout=TIED_LAYOUT, buffer_layout={},
        uses_auxk=False, decoder_constraint="none", max_active_per_row=None, loss_terms=("l1", "mse"),
        portable=lambda params, buffers, hp: PortableForm("relu", linear(params)),
    )
