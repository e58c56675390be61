"""Math every architecture shares: pre-activations, global batch means, dense decode, firing statistics."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsae.sae.base import Axes, Params
from jaxsae.sae.collectives import axis_size, psum


def centre(x: jax.Array, b_dec: jax.Array) -> jax.Array:
    """x: [B, d] -> x - b_dec: [B, d] (every encoder subtracts the decoder bias first)."""
    return x - b_dec[None, :]


def matmul(a: jax.Array, b: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """a @ b in float32: [..., m], [m, n] -> [..., n]. compute_dtype "bfloat16" (sae.compute_dtype) rounds both
    inputs to bfloat16 and accumulates in float32 (`preferred_element_type`), as mixed-precision trainers run
    their matmuls on GPUs and TPUs; the parameters, their gradients' accumulation and the result stay float32."""
    if compute_dtype == "float32":
        return a @ b
    return jnp.matmul(a.astype(compute_dtype), b.astype(compute_dtype), preferred_element_type=jnp.float32)


def biased_matmul(x: jax.Array, W: jax.Array, c: jax.Array, compute_dtype: str) -> jax.Array:
    """x @ W + c: [B, d], [d, n], [n] -> [B, n] float32, the matmul's inputs in compute_dtype.

    PERFORMANCE (memory): in float32 the bias rides in the matmul, as a row of W against a column of ones, so the
    matmul's output is the biased scores: one [B, n] array where a separate add (which XLA:CPU's library fusion
    of the top-k's block maxima cannot absorb) kept two. d 512, 8,192 latents, 4,096 rows: the step's peak RSS
    919-934 -> 834-856 MB, step time unchanged (experiments/RESULTS.md). bfloat16 keeps the add outside, so the
    bias is not rounded to bfloat16."""
    if compute_dtype != "float32":
        return matmul(x, W, compute_dtype) + c[None, :]
    ones = jnp.ones((x.shape[0], 1), x.dtype)
    return matmul(jnp.concatenate([x, ones], axis=1), jnp.concatenate([W, c[None, :]], axis=0))


def einsum(spec: str, *operands: jax.Array, compute_dtype: str = "float32") -> jax.Array:
    """jnp.einsum(spec, *operands) in float32, with inputs rounded to compute_dtype as in `matmul`."""
    if compute_dtype == "float32":
        return jnp.einsum(spec, *operands)
    return jnp.einsum(spec, *(o.astype(compute_dtype) for o in operands), preferred_element_type=jnp.float32)


def pre_activations(x: jax.Array, W: jax.Array, b: jax.Array, b_dec: jax.Array,
                    compute_dtype: str = "float32") -> jax.Array:
    """(x - b_dec) @ W + b.  x: [B, d], W: [d, n_local], b: [n_local] -> [B, n_local] float32; the matmul's
    inputs in compute_dtype (see `matmul`; inference uses the float32 default).

    PERFORMANCE: computed as x @ W + (b - b_dec @ W): x is shared by all ensemble members, so under vmap XLA
    runs one wide [B, d] @ [d, E * n] matmul instead of E batched ones, and the centring costs a mat-vec.
    """
    return matmul(x, W, compute_dtype) + (b - b_dec @ W)[None, :]


def global_rows(x: jax.Array, axes: Axes) -> int:
    """Number of rows in the global batch that `x` ([B_local, ...]) is one data shard of."""
    return x.shape[0] * axis_size(axes.data)


def batch_mean(per_row: jax.Array, axes: Axes) -> jax.Array:
    """Mean over the GLOBAL batch of per_row: [B_local] (complete per-row values, not latent partials)."""
    return psum(jnp.sum(per_row), axes.data) / global_rows(per_row, axes)


def latent_row_mean(per_row_partial: jax.Array, axes: Axes) -> jax.Array:
    """Mean over the global batch of a per-row sum over latents, given this latent shard's partial sums [B]."""
    return batch_mean(psum(per_row_partial, axes.latent), axes)


def squared_error(x: jax.Array, x_hat: jax.Array) -> jax.Array:
    """||x - x_hat||^2 per row: [B, d], [B, d] -> [B]."""
    return jnp.sum(jnp.square(x - x_hat), axis=-1)


def mse(x: jax.Array, x_hat: jax.Array, axes: Axes) -> jax.Array:
    """mean over global rows of ||x - x_hat||^2 (summed over d_model, not averaged)."""
    return batch_mean(squared_error(x, x_hat), axes)


def total_variance(x: jax.Array, axes: Axes) -> jax.Array:
    """sum over global rows of ||x - mean_rows(x)||^2; the AuxK normaliser (EleutherAI sparsify)."""
    n_rows = global_rows(x, axes)
    mean = psum(jnp.sum(x, axis=0), axes.data) / n_rows
    return psum(jnp.sum(jnp.square(x - mean[None, :])), axes.data)


def decode(params: Params, latents: jax.Array, axes: Axes, compute_dtype: str = "float32") -> jax.Array:
    """Dense decode: latents [B, n_local] -> x_hat [B, d] = sum over all latent shards of f @ W_dec, + b_dec;
    the matmul's inputs in compute_dtype (see `matmul`; inference uses the float32 default)."""
    return psum(matmul(latents, params["W_dec"], compute_dtype), axes.latent) + params["b_dec"][None, :]


def decoder_norms(W_dec: jax.Array) -> jax.Array:
    """||W_dec,i|| per latent: [n_local, d] -> [n_local]."""
    return jnp.sqrt(jnp.sum(jnp.square(W_dec), axis=-1))


def firing(fires_local_rows: jax.Array, n_rows: int, axes: Axes) -> tuple[jax.Array, jax.Array]:
    """fires_local_rows: [n_local] how many local rows each latent fired on.

    Returns (fire_count [n_local] over the global batch, l0 [] mean active latents per global row).
    """
    fire_count = psum(fires_local_rows, axes.data)
    l0 = psum(jnp.sum(fire_count), axes.latent) / n_rows
    return fire_count, l0


def dense_firing(latents: jax.Array, axes: Axes) -> tuple[jax.Array, jax.Array]:
    """`firing` for dense latents [B, n_local] (active = strictly positive)."""
    fires = jnp.sum((latents > 0).astype(jnp.float32), axis=0)
    return firing(fires, global_rows(latents, axes), axes)


def warmup(step: jax.Array, warmup_steps: jax.Array) -> jax.Array:
    """Linear warmup factor in [0, 1]: step / warmup_steps, or 1 when warmup_steps <= 0."""
    warmup_steps = jnp.asarray(warmup_steps, jnp.float32)
    ramp = jnp.clip(jnp.asarray(step, jnp.float32) / jnp.maximum(warmup_steps, 1.0), 0.0, 1.0)
    return jnp.where(warmup_steps > 0, ramp, 1.0)


def member_k(hp_k: jax.Array, k_slots: int) -> jax.Array:
    """A member's k as int32: hp.k if >= 1 (capped at k_slots = sae.k, the static slot count), else k_slots."""
    k = jnp.round(jnp.asarray(hp_k)).astype(jnp.int32)
    return jnp.where(k >= 1, jnp.minimum(k, k_slots), k_slots)
