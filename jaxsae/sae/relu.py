"""ReLU SAE with decoder-norm-weighted L1 (Anthropic, "Circuits Updates - April 2024", transformer-circuits.pub).

    f     = ReLU((x - b_dec) W_enc + b_enc)
    x_hat = f W_dec + b_dec                                decoder UNconstrained
    loss  = mean_rows ||x - x_hat||^2 + lambda(t) mean_rows sum_i f_i ||W_dec,i||
    lambda(t) = hp["l1_coeff"] * min(1, step / hp["l1_warmup_steps"])   (Anthropic: warm up over 5% of steps)

Differences from the update, by choice: (1) the encoder subtracts b_dec first like every architecture here
(Anthropic drops it; the two are reparametrisations of b_enc, equal in function, not in optimiser dynamics).
(2) Anthropic scales inputs to E||x||^2 = d_model and uses lambda ~ 5; inputs here have E||x||^2 = 1, which
maps lambda to lambda / sqrt(d_model) (5 -> ~0.2 at d_model = 640). Gradient clipping to norm 1 (also in the
update) is the trainer's job.
"""

from __future__ import annotations

import jax

from jaxsae.sae.base import Axes, Buffers, HParams, LossOut, Params, SAEConfig
from jaxsae.sae.common import decode, decoder_norms, dense_firing, latent_row_mean, mse, pre_activations, warmup
from jaxsae.sae.init import decoder_row_norm, tied

__all__ = ["constrained_decoder", "hparam_defaults", "init", "init_buffers", "loss", "encode", "decode"]

constrained_decoder = False

hparam_defaults = {
    "l1_coeff": 0.2,  # lambda, for inputs at unit mean squared norm
    "l1_warmup_steps": 0,  # linear warmup of lambda from 0; 0 = none
}


def init(key: jax.Array, cfg: SAEConfig, b_dec: jax.Array) -> Params:
    """Decoder rows random directions of norm cfg.decoder_init_norm (default 0.1), W_enc = W_dec^T, b_enc = 0."""
    return tied(key, cfg, b_dec, decoder_row_norm(cfg, 0.1))


def init_buffers(cfg: SAEConfig) -> Buffers:
    del cfg
    return {}


def encode(params: Params, buffers: Buffers, x: jax.Array, hp: HParams, cfg: SAEConfig, axes: Axes) -> jax.Array:
    """Latents [B, n_local] = ReLU((x - b_dec) W_enc + b_enc)."""
    del buffers, hp, cfg, axes
    return jax.nn.relu(pre_activations(x, params["W_enc"], params["b_enc"], params["b_dec"]))


def loss(params: Params, buffers: Buffers, x: jax.Array, hp: HParams, cfg: SAEConfig, axes: Axes,
         step: jax.Array, with_aux: bool) -> tuple[jax.Array, LossOut]:
    """x: [B, d] normalised rows (local data shard) -> (loss [], LossOut). terms: mse, l1 (weighted)."""
    del with_aux
    f = encode(params, buffers, x, hp, cfg, axes)
    x_hat = decode(params, f, cfg, axes)
    weighted_l1 = latent_row_mean(f @ decoder_norms(params["W_dec"]), axes)
    terms = {"mse": mse(x, x_hat, axes), "l1": hp["l1_coeff"] * warmup(step, hp["l1_warmup_steps"]) * weighted_l1}
    fire_count, l0 = dense_firing(f, axes)
    return terms["mse"] + terms["l1"], LossOut(terms, x_hat, fire_count, l0, buffers)
