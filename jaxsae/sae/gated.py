"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders",
arXiv:2404.16014).

    s      = (x - b_dec) W_enc                         W_enc is W_gate
    pi_gate = s + b_gate,   pi_mag = s * exp(r_mag) + b_mag    (= (x - b_dec) W_mag + b_mag, W_mag = W_gate exp(r_mag))
    f      = H(pi_gate) * ReLU(pi_mag)
    x_hat  = f W_dec + b_dec                           decoder rows kept unit norm
    loss   = mean_rows ||x - x_hat||^2
           + lambda(t) mean_rows ||ReLU(pi_gate)||_1
           + hp["gated_aux_coeff"] mean_rows ||x - (ReLU(pi_gate) sg(W_dec) + sg(b_dec))||^2   (frozen decoder)
    lambda(t) = hp["l1_coeff"] * min(1, step / hp["l1_warmup_steps"])

Parameters: W_enc [d, n], b_gate [n], r_mag [n], b_mag [n], W_dec [n, d], b_dec [d] (no b_enc; SAELens layout).
PERFORMANCE: pi_mag reuses the gate matmul (per-column scaling commutes with it): one encoder matmul, not two.
Init: decoder rows random unit directions, W_enc = W_dec^T, b_gate = r_mag = b_mag = 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsae.sae.base import Axes, Buffers, HParams, LossOut, Params, SAEConfig
from jaxsae.sae.collectives import psum
from jaxsae.sae.common import centre, decode, dense_firing, latent_row_mean, mse, warmup
from jaxsae.sae.init import decoder_row_norm, tied

__all__ = ["constrained_decoder", "hparam_defaults", "init", "init_buffers", "loss", "encode", "decode"]

constrained_decoder = True

hparam_defaults = {
    "l1_coeff": 0.1,  # lambda on ||ReLU(pi_gate)||_1, for inputs at unit mean squared norm
    "l1_warmup_steps": 0,  # linear warmup of lambda from 0; 0 = none
    "gated_aux_coeff": 1.0,  # weight of the frozen-decoder auxiliary reconstruction (paper: 1)
}


def init(key: jax.Array, cfg: SAEConfig, b_dec: jax.Array) -> Params:
    params = tied(key, cfg, b_dec, decoder_row_norm(cfg, 1.0))
    zeros = params.pop("b_enc")
    return {**params, "b_gate": zeros, "r_mag": zeros, "b_mag": zeros}


def init_buffers(cfg: SAEConfig) -> Buffers:
    del cfg
    return {}


def _gate_and_magnitude(params: Params, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(pi_gate, pi_mag): [B, n_local] each."""
    s = centre(x, params["b_dec"]) @ params["W_enc"]
    return s + params["b_gate"][None, :], s * jnp.exp(params["r_mag"])[None, :] + params["b_mag"][None, :]


def encode(params: Params, buffers: Buffers, x: jax.Array, hp: HParams, cfg: SAEConfig, axes: Axes) -> jax.Array:
    """Latents [B, n_local] = H(pi_gate) * ReLU(pi_mag)."""
    del buffers, hp, cfg, axes
    pi_gate, pi_mag = _gate_and_magnitude(params, x)
    return jnp.where(pi_gate > 0, jax.nn.relu(pi_mag), 0.0)


def loss(params: Params, buffers: Buffers, x: jax.Array, hp: HParams, cfg: SAEConfig, axes: Axes,
         step: jax.Array, with_aux: bool) -> tuple[jax.Array, LossOut]:
    """x: [B, d] normalised rows (local data shard) -> (loss [], LossOut). terms: mse, l1, gated_aux (weighted)."""
    del with_aux
    pi_gate, pi_mag = _gate_and_magnitude(params, x)
    f = jnp.where(pi_gate > 0, jax.nn.relu(pi_mag), 0.0)
    x_hat = decode(params, f, cfg, axes)
    gate_acts = jax.nn.relu(pi_gate)
    frozen_W_dec, frozen_b_dec = jax.lax.stop_gradient((params["W_dec"], params["b_dec"]))
    x_hat_gate = psum(gate_acts @ frozen_W_dec, axes.latent) + frozen_b_dec[None, :]
    l1 = latent_row_mean(jnp.sum(gate_acts, axis=-1), axes)
    terms = {
        "mse": mse(x, x_hat, axes),
        "l1": hp["l1_coeff"] * warmup(step, hp["l1_warmup_steps"]) * l1,
        "gated_aux": hp["gated_aux_coeff"] * mse(x, x_hat_gate, axes),
    }
    fire_count, l0 = dense_firing(f, axes)
    return terms["mse"] + terms["l1"] + terms["gated_aux"], LossOut(terms, x_hat, fire_count, l0, buffers)
