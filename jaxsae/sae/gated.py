"""Gated SAE (Rajamanoharan et al. 2024, "Improving Dictionary Learning with Gated Sparse Autoencoders",
arXiv:2404.16014).

    s      = (x - b_dec) W_enc                         W_enc is W_gate
    pi_gate = s + b_gate,   pi_mag = s * exp(r_mag) + b_mag    (= (x - b_dec) W_mag + b_mag, W_mag = W_gate exp(r_mag))
    f      = H(pi_gate) * ReLU(pi_mag)
    x_hat  = f W_dec + b_dec                           decoder rows kept unit norm
    loss   = mean_rows ||x - x_hat||^2
           + lambda(t) mean_rows ||ReLU(pi_gate)||_1
           + hp.gated_aux_coeff mean_rows ||x - (ReLU(pi_gate) sg(W_dec) + sg(b_dec))||^2   (frozen decoder)
    lambda(t) = hp.l1_coeff * min(1, step / hp.l1_warmup_steps)

Parameters: W_enc [d, n], b_gate [n], r_mag [n], b_mag [n], W_dec [n, d], b_dec [d] (no b_enc; SAELens layout).
PERFORMANCE: pi_mag reuses the gate matmul (per-column scaling commutes with it): one encoder matmul, not two.
Init: decoder rows random unit directions, W_enc = W_dec^T, b_gate = r_mag = b_mag = 0.
"""

from __future__ import annotations

import functools
from typing import Annotated, NamedTuple

import jax
import jax.numpy as jnp

from jaxsae.sae.base import Architecture, Axes, Buffers, LossContext, LossOut, Params, Range, SAEConfig
from jaxsae.sae.collectives import psum
from jaxsae.sae.common import centre, decode, dense_firing, latent_row_mean, matmul, mse, warmup
from jaxsae.sae.fold import linear_fold
from jaxsae.sae.init import decoder_row_norm, tied
from jaxsae.sae.portable import PortableForm

__all__ = ["gated"]


class GatedHParams(NamedTuple):
    l1_coeff: Annotated[float, Range(0.0)] = 0.1  # lambda on ||ReLU(pi_gate)||_1, for unit mean squared norm
    l1_warmup_steps: Annotated[int, Range(0)] = 0  # linear warmup of lambda from 0; 0 = none
    gated_aux_coeff: Annotated[float, Range(0.0)] = 1.0  # weight of the frozen-decoder auxiliary reconstruction


def _gate_and_magnitude(params: Params, x: jax.Array,
                        compute_dtype: str = "float32") -> tuple[jax.Array, jax.Array]:
    """(pi_gate, pi_mag): [B, n_local] each; the matmul's inputs in compute_dtype (`common.matmul`)."""
    s = matmul(centre(x, params["b_dec"]), params["W_enc"], compute_dtype)
    return s + params["b_gate"][None, :], s * jnp.exp(params["r_mag"])[None, :] + params["b_mag"][None, :]


def encode(params: Params, buffers: Buffers, x: jax.Array, hp: GatedHParams, axes: Axes) -> jax.Array:
    """Latents [B, n_local] = H(pi_gate) * ReLU(pi_mag)."""
    pi_gate, pi_mag = _gate_and_magnitude(params, x)
    return jnp.where(pi_gate > 0, jax.nn.relu(pi_mag), 0.0)


def loss(params: Params, buffers: Buffers, x: jax.Array, hp: GatedHParams, ctx: LossContext,
         compute_dtype: str) -> tuple[jax.Array, LossOut]:
    """x: [B, d] normalised rows (local data shard) -> (loss [], LossOut). terms: mse, l1, gated_aux (weighted)."""
    axes = ctx.axes
    pi_gate, pi_mag = _gate_and_magnitude(params, x, compute_dtype)
    f = jnp.where(pi_gate > 0, jax.nn.relu(pi_mag), 0.0)
    x_hat = decode(params, f, axes, compute_dtype)
    gate_acts = jax.nn.relu(pi_gate)
    frozen_W_dec, frozen_b_dec = jax.lax.stop_gradient((params["W_dec"], params["b_dec"]))
    x_hat_gate = psum(matmul(gate_acts, frozen_W_dec, compute_dtype), axes.latent) + frozen_b_dec[None, :]
    l1 = latent_row_mean(jnp.sum(gate_acts, axis=-1), axes)
    terms = {
        "mse": mse(x, x_hat, axes),
        "l1": hp.l1_coeff * warmup(ctx.step, hp.l1_warmup_steps) * l1,
        "gated_aux": hp.gated_aux_coeff * mse(x, x_hat_gate, axes),
    }
    fire_count, l0 = dense_firing(f, axes)
    return terms["mse"] + terms["l1"] + terms["gated_aux"], LossOut(terms, x_hat, fire_count, l0, buffers)


def gated(cfg: SAEConfig) -> Architecture:
    """The Gated architecture for `cfg`."""

    def init(key: jax.Array, b_dec: jax.Array) -> Params:
        params = tied(key, cfg, b_dec, decoder_row_norm(cfg, 1.0))
        zeros = params.pop("b_enc")
        return {**params, "b_gate": zeros, "r_mag": zeros, "b_mag": zeros}

    return Architecture(
        name="gated", init=init, init_buffers=dict, encode=encode, decode=decode,
        loss=functools.partial(loss, compute_dtype=cfg.compute_dtype),
        fold_input_scale=linear_fold(), hparams=GatedHParams, default_hparams=GatedHParams(),
        param_layout={"W_enc": 1, "b_gate": 0, "r_mag": 0, "b_mag": 0, "W_dec": 0, "b_dec": None},
        buffer_layout={}, uses_auxk=False, decoder_constraint="unit_norm_rows", max_active_per_row=None,
        loss_terms=("gated_aux", "l1", "mse"),
        portable=lambda params, buffers, hp: PortableForm("gated", {
            name: params[name] for name in ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")}),
    )
