"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU
Sparse Autoencoders", arXiv:2407.14435), with the options of Anthropic's "Circuits Updates - January/February
2025" (straight-through gradient of the penalty into the pre-activations; tanh penalty).

    z     = (x - b_dec) W_enc + b_enc
    f     = ReLU(z) * H(z - theta)                      theta: raw float32 parameter "threshold" [n]
    x_hat = f W_dec + b_dec                             decoder rows kept unit norm
    loss  = mean_rows ||x - x_hat||^2 + lambda(t) mean_rows P(f)
    P     = sum_i H(z_i - theta_i)                          cfg.jumprelu_penalty == "l0"  (paper)
          = sum_i tanh(c f_i ||W_dec,i||)                   cfg.jumprelu_penalty == "tanh" (Anthropic 2025)
    lambda(t) = hp.l0_coeff * min(1, step / hp.l0_warmup_steps)

Pseudo-derivatives (paper eq. 11-12), rectangle kernel K(u) = 1[|u| < 1/2], bandwidth eps = hp.bandwidth:
    d f / d theta = -(theta / eps) K((z - theta) / eps),   d H(z - theta) / d theta = -(1 / eps) K((z - theta) / eps),
and d H / d z = 0, unless cfg.jumprelu_ste_to_input, where d H / d z = +(1 / eps) K((z - theta) / eps).
ReLU(z) in f (as in Gemma Scope's reference encoder) only matters if theta goes negative.
The threshold starts at cfg.jumprelu_threshold_init (0.001 in the paper) for every member: init gets no hp.
Init otherwise as the paper: decoder rows random unit directions, W_enc = W_dec^T, b_enc = 0.
"""

from __future__ import annotations

import functools
from typing import Annotated, NamedTuple

import jax
import jax.numpy as jnp

from jaxsae.sae.base import Architecture, Axes, Buffers, LossContext, LossOut, Params, Range, SAEConfig
from jaxsae.sae.collectives import pvary
from jaxsae.sae.common import decode, decoder_norms, dense_firing, latent_row_mean, mse, pre_activations, warmup
from jaxsae.sae.fold import linear_fold
from jaxsae.sae.init import TIED_LAYOUT, decoder_row_norm, tied
from jaxsae.sae.portable import PortableForm, linear

__all__ = ["jumprelu"]


class JumpReLUHParams(NamedTuple):
    l0_coeff: Annotated[float, Range(0.0)] = 1e-3  # lambda, for inputs at unit mean squared norm
    l0_warmup_steps: Annotated[int, Range(0)] = 0  # linear warmup of lambda from 0 (Gemma Scope: 10k); 0 = none
    bandwidth: Annotated[float, Range(0.0)] = 1e-3  # eps of the rectangle kernel (paper: 0.001)
    tanh_scale: Annotated[float, Range(0.0)] = 4.0  # c in the tanh penalty (read when sae.jumprelu_penalty = tanh)


def _rectangle(u: jax.Array) -> jax.Array:
    return (jnp.abs(u) < 0.5).astype(u.dtype)


@jax.custom_vjp
def jump_relu(z: jax.Array, theta: jax.Array, bandwidth: jax.Array) -> jax.Array:
    """ReLU(z) * H(z - theta).  z: [B, n], theta: [1, n], bandwidth: [] -> [B, n]."""
    return jnp.where(z > theta, jax.nn.relu(z), 0.0)


def _jump_relu_fwd(z, theta, bandwidth):
    return jump_relu(z, theta, bandwidth), (z, theta, bandwidth)


def _jump_relu_bwd(res, g):
    z, theta, bandwidth = res
    dz = jnp.where((z > theta) & (z > 0), g, 0.0)
    dtheta = -jnp.sum(g * (theta / bandwidth) * _rectangle((z - theta) / bandwidth), axis=0, keepdims=True)
    return dz, dtheta, jnp.zeros_like(bandwidth)


jump_relu.defvjp(_jump_relu_fwd, _jump_relu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def heaviside(z: jax.Array, theta: jax.Array, bandwidth: jax.Array, grad_to_input: bool) -> jax.Array:
    """H(z - theta) as float.  z: [B, n], theta: [1, n], bandwidth: [] -> [B, n]."""
    return (z > theta).astype(z.dtype)


def _heaviside_fwd(z, theta, bandwidth, grad_to_input):
    return heaviside(z, theta, bandwidth, grad_to_input), (z, theta, bandwidth)


def _heaviside_bwd(grad_to_input, res, g):
    z, theta, bandwidth = res
    kernel = g * _rectangle((z - theta) / bandwidth) / bandwidth
    dz = kernel if grad_to_input else jnp.zeros_like(z)
    return dz, -jnp.sum(kernel, axis=0, keepdims=True), jnp.zeros_like(bandwidth)


heaviside.defvjp(_heaviside_fwd, _heaviside_bwd)


def encode(params: Params, buffers: Buffers, x: jax.Array, hp: JumpReLUHParams, axes: Axes) -> jax.Array:
    """Latents [B, n_local] = ReLU(z) * H(z - threshold)."""
    z = pre_activations(x, params["W_enc"], params["b_enc"], params["b_dec"])
    return jnp.where(z > params["threshold"][None, :], jax.nn.relu(z), 0.0)


def jumprelu(cfg: SAEConfig) -> Architecture:
    """The JumpReLU architecture for `cfg` (penalty cfg.jumprelu_penalty)."""

    def init(key: jax.Array, b_dec: jax.Array) -> Params:
        """Tied unit-norm init plus threshold [n] = cfg.jumprelu_threshold_init."""
        params = tied(key, cfg, b_dec, decoder_row_norm(cfg, 1.0))
        params["threshold"] = jnp.full((cfg.n_latents,), cfg.jumprelu_threshold_init, jnp.float32)
        return params

    def loss(params: Params, buffers: Buffers, x: jax.Array, hp: JumpReLUHParams,
             ctx: LossContext) -> tuple[jax.Array, LossOut]:
        """x: [B, d] normalised rows (local data shard) -> (loss [], LossOut). terms: mse, l0 (or tanh; weighted)."""
        axes = ctx.axes
        z = pre_activations(x, params["W_enc"], params["b_enc"], params["b_dec"], cfg.compute_dtype)
        theta = pvary(params["threshold"], axes.data)[None, :]  # typed per data shard for the custom_vjp rules
        bandwidth = jnp.asarray(hp.bandwidth, jnp.float32)
        f = jump_relu(z, theta, bandwidth)
        x_hat = decode(params, f, axes, cfg.compute_dtype)
        if cfg.jumprelu_penalty == "tanh":
            penalty = jnp.sum(jnp.tanh(hp.tanh_scale * f * decoder_norms(params["W_dec"])[None, :]), axis=-1)
        else:
            penalty = jnp.sum(heaviside(z, theta, bandwidth, cfg.jumprelu_ste_to_input), axis=-1)
        sparsity = hp.l0_coeff * warmup(ctx.step, hp.l0_warmup_steps) * latent_row_mean(penalty, axes)
        terms = {"mse": mse(x, x_hat, axes), cfg.jumprelu_penalty: sparsity}
        fire_count, l0 = dense_firing(f, axes)
        return terms["mse"] + sparsity, LossOut(terms, x_hat, fire_count, l0, buffers)

    return Architecture(
        name="jumprelu", init=init, init_buffers=dict, encode=encode, decode=decode, loss=loss,
        fold_input_scale=linear_fold(), hparams=JumpReLUHParams, default_hparams=JumpReLUHParams(),
        param_layout={**TIED_LAYOUT, "threshold": 0}, buffer_layout={}, uses_auxk=False,
        decoder_constraint="unit_norm_rows", max_active_per_row=None,
        loss_terms=tuple(sorted(("mse", cfg.jumprelu_penalty))),
        portable=lambda params, buffers, hp: PortableForm("jumprelu", {**linear(params),
                                                                       "threshold": params["threshold"]}),
    )
