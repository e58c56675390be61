"""Initialisation helpers: random decoder directions, tied encoder, geometric median for b_dec."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.sae.base import Params, SAEConfig


def random_rows(key: jax.Array, n_rows: int, d: int, norm: float) -> jax.Array:
    """[n_rows, d] float32 rows in uniformly random directions, each of L2 norm `norm`."""
    rows = jax.random.normal(key, (n_rows, d), jnp.float32)
    return norm * rows / jnp.linalg.norm(rows, axis=-1, keepdims=True)


def decoder_row_norm(cfg: SAEConfig, default: float) -> float:
    """cfg.decoder_init_norm, or this architecture's default when it is None."""
    return default if cfg.decoder_init_norm is None else float(cfg.decoder_init_norm)


# The norm of a row of PyTorch's default nn.Linear(d, n) weights (uniform in +-1/sqrt(d): E ||w||^2 = 1/3), the
# encoder OpenAI's TopK code and EleutherAI's sparsify start from, their decoder its rows normalised.
TORCH_LINEAR_ROW_NORM = 3 ** -0.5


# Latent axis of each parameter `tied` makes (per member): W_enc [d, n] columns, b_enc [n], W_dec [n, d] rows.
TIED_LAYOUT = {"W_enc": 1, "b_enc": 0, "W_dec": 0, "b_dec": None}


def tied(key: jax.Array, cfg: SAEConfig, b_dec: jax.Array, row_norm: float, encoder_norm: float | None = None) -> Params:
    """The common start: W_dec rows random directions of norm `row_norm`, W_enc = W_dec^T rescaled to columns of
    norm cfg.encoder_init_norm, else the architecture's `encoder_norm`, else `row_norm`; b_enc = 0.

    Returns global shapes: W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d] (a float32 copy of `b_dec`).
    """
    b_dec = jnp.asarray(b_dec, jnp.float32)
    if b_dec.shape != (cfg.d_model,):
        raise ValueError(f"init: b_dec has shape {b_dec.shape}, expected ({cfg.d_model},) = (d_model,)")
    W_dec = random_rows(key, cfg.n_latents, cfg.d_model, row_norm)
    encoder_norm = next(v for v in (cfg.encoder_init_norm, encoder_norm, row_norm) if v is not None)
    return {
        "W_enc": W_dec.T * (float(encoder_norm) / row_norm),
        "b_enc": jnp.zeros((cfg.n_latents,), jnp.float32),
        "W_dec": W_dec,
        "b_dec": b_dec,
    }


def geometric_median(x: np.ndarray, iters: int = 200, tol: float = 1e-7) -> np.ndarray:
    """Geometric median of the rows of x: [N, d] -> [d] float32, by Weiszfeld's iteration (float64 inside).

    The point minimising the sum of Euclidean distances to the rows; unlike the mean it is not dragged far
    by a few outlying rows, which makes it the usual b_dec initialiser (Bricken et al. 2023). Starts from the
    coordinate-wise median and stops when a step moves less than `tol` times the data's spread.
    """
    points = np.asarray(x, np.float64)
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"geometric_median: x must be a non-empty [N, d] array, got shape {points.shape}")
    median = np.median(points, axis=0)
    scale = float(np.sqrt(np.mean(np.sum((points - median) ** 2, axis=1)))) or 1.0
    for _ in range(iters):
        distances = np.linalg.norm(points - median, axis=1)
        weights = 1.0 / np.maximum(distances, 1e-12 * scale)
        new = weights @ points / weights.sum()
        moved = float(np.linalg.norm(new - median))
        median = new
        if moved < tol * scale:
            break
    return median.astype(np.float32)
