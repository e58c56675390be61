"""Matryoshka SAE (Bussmann, Nabeshima, Karvonen & Nanda 2025, "Learning Multi-Level Features with Matryoshka
Sparse Autoencoders", arXiv:2503.17547), with BatchTopK activations as in the paper.

Activations are BatchTopK's (see batchtopk.py, including the EMA inference threshold). For each prefix size m
in cfg.prefixes (ascending, last = n_latents) the reconstruction from latents with GLOBAL index < m is
    x_hat_m = sum_{i < m} z_i W_dec,i + b_dec,
and loss = mean over prefixes of mean_rows ||x - x_hat_m||^2 + AuxK (on the full reconstruction's residual).
The paper's code averages the squared error over d_model as well; here it is summed over d_model like every
other architecture (a constant factor d_model on the reconstruction term, relative to AuxK). Prefix weights are
uniform. Decoder rows kept unit norm. With the latent axis split, each shard adds its latents' contributions
to the prefix groups they belong to (by global index, shard_offset) and the [B, P, d] group sums are psum'd.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxsae.sae import batchtopk as batchtopk_lib
from jaxsae.sae.base import Architecture, Axes, Buffers, LossContext, LossOut, Params, SAEConfig, ConfigError
from jaxsae.sae.collectives import psum, shard_offset
from jaxsae.sae.common import batch_mean, einsum, firing, global_rows
from jaxsae.sae.sparse import Selection, fires, scatter_dense, sparse_decode
from jaxsae.sae.topk_losses import auxk_term

__all__ = ["matryoshka"]


def prefix_group(index: jax.Array, cfg: SAEConfig) -> jax.Array:
    """Global latent index -> the first prefix containing it: int32 in [0, P), same shape as index."""
    return jnp.searchsorted(jnp.asarray(cfg.prefixes, jnp.int32), index, side="right").astype(jnp.int32)


def prefix_reconstructions(params: Params, acts: jax.Array, sel: Selection, cfg: SAEConfig,
                           axes: Axes) -> jax.Array:
    """[B, P, d]: x_hat_m for each prefix m (cumulative sums of the per-group decodes, + b_dec)."""
    n_groups = len(cfg.prefixes)
    W_dec = params["W_dec"]
    if cfg.sparse_decode:
        by_group = jax.nn.one_hot(prefix_group(sel.index, cfg), n_groups) * jnp.where(sel.owned, acts, 0.0)[..., None]
        groups = sparse_decode(W_dec, by_group, sel.local, cfg.compute_dtype)
    else:
        n_local = W_dec.shape[0]
        latent_group = prefix_group(shard_offset(n_local, axes.latent) + jnp.arange(n_local), cfg)
        dense = scatter_dense(acts, sel, n_local)
        groups = einsum("bn,np,nd->bpd", dense, jax.nn.one_hot(latent_group, n_groups), W_dec,
                        compute_dtype=cfg.compute_dtype)
    return jnp.cumsum(psum(groups, axes.latent), axis=1) + params["b_dec"][None, None, :]


def matryoshka(cfg: SAEConfig) -> Architecture:
    """The Matryoshka (BatchTopK activations, + AuxK) architecture for `cfg`."""
    base = batchtopk_lib.batchtopk(cfg)
    prefixes = cfg.prefixes
    if list(prefixes) != sorted(set(prefixes)) or prefixes[-1] != cfg.n_latents or prefixes[0] < 1:
        raise ConfigError(
            f"sae.matryoshka_prefixes: must be strictly ascending, >= 1, and end at n_latents="
            f"{cfg.n_latents}; got {list(prefixes)}"
        )

    def loss(params: Params, buffers: Buffers, x: jax.Array, hp: batchtopk_lib.BatchTopKHParams,
             ctx: LossContext) -> tuple[jax.Array, LossOut]:
        """x: [B, d] normalised rows (local data shard) -> (loss [], LossOut).
        terms: mse (mean over prefixes of each prefix's MSE), auxk. x_hat: the full dictionary's reconstruction."""
        fwd, new_buffers = batchtopk_lib.select(params, buffers, x, hp, cfg, ctx)
        x_hats = prefix_reconstructions(params, fwd.acts, fwd.sel, cfg, ctx.axes)
        per_prefix = jnp.sum(jnp.square(x[:, None, :] - x_hats), axis=-1)  # [B, P]
        x_hat = x_hats[:, -1, :]
        terms = {"mse": batch_mean(jnp.mean(per_prefix, axis=1), ctx.axes),
                 "auxk": auxk_term(params, fwd, x_hat, hp, ctx, cfg)}
        fire_count, l0 = firing(fires(fwd.acts > 0, fwd.sel, params["W_enc"].shape[1]), global_rows(x, ctx.axes), ctx.axes)
        return terms["mse"] + terms["auxk"], LossOut(terms, x_hat, fire_count, l0, new_buffers)

    return base._replace(name="matryoshka", loss=loss)
