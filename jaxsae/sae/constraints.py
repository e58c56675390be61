"""Unit-norm decoder constraint: project the gradient onto the rows' tangent space, then renormalise.

Both act on the last axis (d_model) of W_dec [..., n, d], so they work on a stacked ensemble [E, n, d] and on a
latent-sharded slice alike, with no collectives. The trainer applies `remove_parallel_grad` to the gradient
before the optimiser and `normalise_rows` to the parameters after it (Bricken et al. 2023; Gao et al. 2024).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def remove_parallel_grad(W_dec: jax.Array, grad: jax.Array) -> jax.Array:
    """grad minus its component along each decoder row: g_i - (<g_i, w_i> / ||w_i||^2) w_i. Shapes [..., n, d]."""
    along = jnp.sum(grad * W_dec, axis=-1, keepdims=True)
    norm_sq = jnp.maximum(jnp.sum(jnp.square(W_dec), axis=-1, keepdims=True), 1e-30)
    return grad - (along / norm_sq) * W_dec


def normalise_rows(W_dec: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Each decoder row rescaled to unit L2 norm: [..., n, d] -> [..., n, d] (rows of norm < eps left tiny)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(W_dec), axis=-1, keepdims=True))
    return W_dec / jnp.maximum(norm, eps)
