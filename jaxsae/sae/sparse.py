"""Sparse top-k kernels: selection across latent shards, chunked gathers and scatter-adds with custom VJPs,
sparse decode, and BatchTopK's global selection. The losses built from them are in `topk_losses`.

PERFORMANCE. Selection runs on stop-gradient pre-activations (one dense [B, d] @ [d, n] matmul, no backward).
With cfg.sparse_decode the selected latents' pre-activations are the top-k's own values with a custom
gradient (a scatter-add into the selected encoder columns), and they are decoded from a gather of their decoder
rows (gradient: a scatter-add), so the weight gradients are scatter-adds of B*K rows of length d instead of
dense [d, B] @ [B, n] and [n, B] @ [B, d] matmuls. The gathers and scatter-adds run over chunks of rows
(`scan_row_chunks`), so no [B, K, d] array is ever written to memory. With the latent axis split,
each shard takes its local top-k, the [B, k] candidates (values + global indices) are all-gathered over the
latent axis and merged by a second top-k; each shard gathers only the selected latents it owns and the decoded
partial sums are psum'd. No [B, n] array or weight matrix ever crosses devices.
Measured on CPU (d=256, n=16384, B=1024, k=32, loss+grad): TopK sparse 2.5x faster than dense; BatchTopK about
even, its cost being the per-row top-(row_cap * k) candidate selection that both paths share.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxsae.sae.base import Axes, Params, SAEConfig
from jaxsae.sae.collectives import all_gather, axis_size, pmin, psum, reduce_to_type_of, shard_offset, zeros_varying_like_all
from jaxsae.sae.common import biased_matmul, einsum, global_rows, matmul
from jaxsae.sae.members import member_by_member


class Selection(NamedTuple):
    """K latents chosen per row (global over latent shards), sorted by descending score.

    index: [B, K] int32 global latent index.
    score: [B, K] the stop-gradient pre-activation each was selected by (-inf: a filler, not a candidate).
    local: [B, K] int32 position in this shard's latent slice (0 where the shard does not own it).
    owned: [B, K] bool, this latent shard holds the latent.
    """

    index: jax.Array
    score: jax.Array
    local: jax.Array
    owned: jax.Array


@functools.cache
def block_size(n: int, k: int) -> int:
    """The block width m (a divisor of n, at least k blocks) for `top_k`'s two stages: the one minimising the
    n / m + k * m scores they select from; 1 (one stage, `lax.top_k` itself) unless that is at most n / 4."""
    m = min((m for m in range(1, n // max(k, 1) + 1) if n % m == 0), key=lambda m: n // m + k * m)
    return m if 4 * (n // m + k * m) <= n else 1


def top_k(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """`lax.top_k(scores, k)` of scores [B, n] -> (values, index) [B, k], the same values and indices (ties to
    the lower index) from two small top-ks: the k largest maxima of the n / m blocks of m consecutive scores,
    then the top-k of the k * m scores of those blocks (every score of the top-k lies in them: a score in
    another block is at most that block's maximum, below k larger scores). m: `block_size`.

    PERFORMANCE: XLA:CPU's top-k is one thread sorting an index array per row (~2 ns a score plus ~4 us a row);
    the blocks' maxima are one multithreaded pass that also absorbs the bias add of the pre-activations.
    CPU, B 2,048, n 8,192, k 32 (ms): `lax.top_k` 42 + the bias pass 21 vs block maxima 25 + top-ks over
    512 and 512 scores 12 + 12 + the gather 4 (experiments/RESULTS.md)."""
    b, n = scores.shape
    m = block_size(n, k)
    if m == 1:
        return jax.lax.top_k(scores, k)
    _, blocks = jax.lax.top_k(jnp.max(scores.reshape(b, n // m, m), axis=2), k)
    # in index order, so the second top-k's ties go to the lower index as lax.top_k's do
    offsets = jnp.arange(m, dtype=blocks.dtype)[None, None, :]
    columns = (jnp.sort(blocks, axis=1)[:, :, None] * m + offsets).reshape(b, k * m)
    values, position = jax.lax.top_k(jnp.take_along_axis(scores, columns, axis=1, mode="promise_in_bounds"), k)
    return values, jnp.take_along_axis(columns, position, axis=1)


def select_top_k(scores: jax.Array, k: int, axes: Axes) -> Selection:
    """Per-row top-k of scores [B, n_local] over ALL latent shards: local top-k, then a merge of the
    all-gathered [B, min(k, n_local) * shards] candidates (the whole row if k >= n_local: keep n_local >> k)."""
    values, index = top_k(scores, min(k, scores.shape[1]))
    return merge_candidates(values, index, k, scores.shape[1], axes)


def merge_candidates(values: jax.Array, index: jax.Array, k: int, n_local: int, axes: Axes) -> Selection:
    """This shard's per-row candidates (values, index [B, k_local] sorted, index local to the shard) -> the
    global top-k Selection: the candidates of all latent shards all-gathered and merged by a second top-k."""
    index = index + shard_offset(n_local, axes.latent)
    if axis_size(axes.latent) > 1:  # one latent shard: its candidates are the selection, sorted already
        values = all_gather(values, axes.latent, gather_axis=1)
        index = all_gather(index, axes.latent, gather_axis=1)
        values, position = jax.lax.top_k(values, k)
        index = jnp.take_along_axis(index, position, axis=1)
    local = index - shard_offset(n_local, axes.latent)
    owned = (local >= 0) & (local < n_local)
    return Selection(index, values, jnp.where(owned, local, 0), owned)


# A member's [B, n_local] pre-activations up to this size are selected member by member in a vmapped pack (they
# stay in cache between the matmul and the top-k); larger ones batched over the members, where the matmul's
# threads matter more than the cache (CPU, d 512, 8,192 latents, B 1,024, E 8: member by member cost 0.60x the
# member-rows/s of one member; d 64, 1,024 latents: 0.99-1.03x, against 0.67-0.87x batched).
MEMBER_BY_MEMBER_MAX_BYTES = 8 << 20


@functools.cache
def _encoder_top_k(k: int, aux_k: int, compute_dtype: str, approx_recall: float | None, sequential: bool):
    """f(x [B, d], W [d, n], c [n], *dead) -> (values, index) [B, k] of the top-k of x @ W + c and, when aux_k > 0
    (dead: [n] bool), also (values, index) [B, aux_k] of the top aux_k among the dead latents.
    The matmul's inputs in compute_dtype (`common.matmul`). approx_recall: the top-k (not AuxK's) by
    `lax.approx_max_k` at that recall target (TPU; on other backends XLA computes it exactly); None: `top_k`.

    PERFORMANCE: sequential: vmapped over ensemble members on CPU, the members run one after another
    (`member_by_member`), so each member's [B, n] pre-activations are read back by its top-k while still in
    cache. Vmapped like any other op, the pack wrote all E members' [E, B, n] first (transposed from the wide
    matmul's [B, E * n]): CPU, d 64, 1,024 latents, B 1,024, E 8: matmul + top-k 87 ms vmapped vs 49 ms member by
    member, where one member alone takes 6.6 ms. See MEMBER_BY_MEMBER_MAX_BYTES for when.
    """

    def select(x, W, c, *dead):
        pre = biased_matmul(x, W, c, compute_dtype)
        if approx_recall is None:
            # with AuxK the biased [B, n] is written for its top-k anyway: one lax.top_k over it is cheaper than
            # a pass for the block maxima on top (bench_train --auxk, experiments/RESULTS.md)
            chosen = jax.lax.top_k(pre, k) if aux_k else top_k(pre, k)
        else:
            chosen = jax.lax.approx_max_k(pre, k, recall_target=approx_recall)
        if not aux_k:
            return chosen
        return *chosen, *jax.lax.top_k(jnp.where(dead[0][None, :], pre, -jnp.inf), aux_k)

    return member_by_member(select) if sequential else select


def encoder_selection(params: Params, x: jax.Array, k: int, axes: Axes, cfg: SAEConfig, *,
                      dead: jax.Array | None = None, aux_k: int = 0) -> tuple[Selection, Selection | None]:
    """(top-k Selection, AuxK Selection or None) of the stop-gradient pre-activations (x - b_dec) W_enc + b_enc
    of x [B, d], over all latent shards, without keeping the [B, n_local] pre-activations (see _encoder_top_k).
    dead: [n_local] bool, with aux_k > 0: also the top aux_k among the dead latents (-inf scores: fillers).
    cfg: its compute_dtype, selection and approx_recall."""
    W = jax.lax.stop_gradient(params["W_enc"])
    c = jax.lax.stop_gradient(params["b_enc"] - params["b_dec"] @ params["W_enc"])
    n_local = W.shape[1]
    with_aux = dead is not None and aux_k > 0
    approx_recall = cfg.approx_recall if cfg.selection == "approx" else None
    sequential = x.shape[0] * n_local * 4 <= MEMBER_BY_MEMBER_MAX_BYTES
    select = _encoder_top_k(min(k, n_local), min(aux_k, n_local) if with_aux else 0, cfg.compute_dtype, approx_recall,
                           sequential)
    out = select(x, W, c, *([dead] if with_aux else []))
    sel = merge_candidates(out[0], out[1], k, n_local, axes)
    return sel, (merge_candidates(out[2], out[3], aux_k, n_local, axes) if with_aux else None)


# Rows of the batch per iteration of the sparse gathers and scatter-adds: an iteration touches a [rows, K, d]
# block; ~2M floats (8 MB) stays in cache, where the whole [B, K, d] would be written to memory and read back
# (CPU, d=512, n=16384, B=4096, K=32: scatter-add 204 ms in one piece, 87 ms in 128-row chunks).
SPARSE_CHUNK_ELEMENTS = 1 << 21


def chunk_rows(batch_rows: int, elements_per_row: int) -> int:
    """The largest divisor of batch_rows whose chunk holds at most SPARSE_CHUNK_ELEMENTS elements (>= 1)."""
    target = max(1, min(batch_rows, SPARSE_CHUNK_ELEMENTS // max(elements_per_row, 1)))
    return next(c for c in range(target, 0, -1) if batch_rows % c == 0)


def scan_row_chunks(body, carry, xs: tuple, elements_per_row: int, consts: tuple = ()):
    """`lax.scan` of body(consts, carry, chunk) -> (carry, y) over consecutive row chunks of the [B, ...] arrays
    xs; returns (carry, ys with the chunks joined back into [B, ...] rows). Member by member in a vmapped pack
    (`jaxsae.sae.members`), so a chunk holds one member's rows whatever the pack size; so the arrays body
    reads besides its chunk come in `consts`, not from its closure."""

    def scan(consts, carry, xs):
        b = xs[0].shape[0]
        rows = chunk_rows(b, elements_per_row)
        chunks = tuple(a.reshape(b // rows, rows, *a.shape[1:]) for a in xs)
        carry, ys = jax.lax.scan(lambda c, chunk: body(consts, c, chunk), carry, chunks)
        return carry, jax.tree.map(lambda y: y.reshape(b, *y.shape[2:]), ys)

    return member_by_member(scan)(consts, carry, xs)


def scatter_add_outer(table: jax.Array, weights: jax.Array, local: jax.Array, vectors: jax.Array) -> jax.Array:
    """out[local[b, k]] += sum_p weights[b, k, p] vectors[b, p] over all (b, k), into zeros shaped like `table`:
    [n, d], [B, K, P], [B, K], [B, P, d] -> [n, d]. Over row chunks: no [B, K, d] update array in memory.
    The sparse weight gradients (encoder and decoder) are all of this form."""
    d = table.shape[1]

    def scatter_chunk(_, out, chunk):
        weights_c, local_c, vectors_c = chunk
        rows = jnp.einsum("bkp,bpd->bkd", weights_c, vectors_c).reshape(-1, d)
        return out.at[local_c.reshape(-1)].add(rows, mode="promise_in_bounds"), None

    out = zeros_varying_like_all(table.shape, table.dtype, table, weights, vectors)
    return scan_row_chunks(scatter_chunk, out, (weights, local, vectors), d * local.shape[1])[0]


def gather_rows(table: jax.Array, index: jax.Array) -> jax.Array:
    """table[index] for in-range indices (Selection.local always is): [n, ...], [B, K] -> [B, K, ...].
    PERFORMANCE: promise_in_bounds drops the bounds handling from the gather and its scatter-add gradient."""
    return table.at[index].get(mode="promise_in_bounds")


@jax.custom_vjp
def _sparse_selected_pre(W_enc: jax.Array, b_enc: jax.Array, b_dec: jax.Array, x: jax.Array, local: jax.Array,
                         values: jax.Array) -> jax.Array:
    """`values` [B, K] — the selected entries of the stop-gradient (x - b_dec) W_enc + b_enc — carrying the
    gradient of (x - b_dec) . W_enc[:, local] + b_enc[local] w.r.t. W_enc, b_enc, b_dec and x, computed sparsely."""
    del W_enc, b_enc, b_dec, x, local
    return values


def _sparse_selected_pre_fwd(W_enc, b_enc, b_dec, x, local, values):
    return values, (W_enc, b_enc, b_dec, x, local)


def _sparse_selected_pre_bwd(residuals, g):
    """g: [B, K]. dW_enc is a scatter-add of B*K rows of length d (in row chunks, see `scan_row_chunks`);
    db_dec = -W_enc @ db_enc (a mat-vec). The cotangent for x (a gather of K encoder columns per row) is dead
    code when x is data, and XLA drops it."""
    W_enc, b_enc, b_dec, x, local = residuals
    n_local = W_enc.shape[1]
    dW_enc_t = scatter_add_outer(W_enc.T, g[:, :, None], local, (x - b_dec[None, :])[:, None, :])
    db_enc = jnp.zeros((n_local,), g.dtype).at[local.reshape(-1)].add(g.reshape(-1), mode="promise_in_bounds")
    dx = jnp.einsum("bk,bkd->bd", g, gather_rows(W_enc.T, local))
    cotangents = (dW_enc_t.T, db_enc, -(W_enc @ db_enc), dx)
    return (*(reduce_to_type_of(ct, p) for ct, p in zip(cotangents, (W_enc, b_enc, b_dec, x))), None, None)


_sparse_selected_pre.defvjp(_sparse_selected_pre_fwd, _sparse_selected_pre_bwd)


def selected_pre(params: Params, x: jax.Array, pre: jax.Array, sel: Selection, sparse: bool) -> jax.Array:
    """Differentiable pre-activations of the selected latents: [B, K], 0 where this shard does not own them.

    pre: [B, n_local] the dense pre-activations (x - b_dec) W_enc + b_enc the selection was made from.
    sparse: the values are the selection's own scores with a custom gradient: a scatter-add into the K
        selected encoder columns per row. PERFORMANCE: no [B, K, d] gather of encoder columns in the forward
        pass and no dense [d, B] @ [B, n] weight-gradient matmul (the unused dense `pre` is dropped by XLA).
    not sparse (dense reference): a lookup in the differentiable dense pre-activations.
    """
    if sparse:
        values = _sparse_selected_pre(params["W_enc"], params["b_enc"], params["b_dec"], x, sel.local, sel.score)
    else:
        values = jnp.take_along_axis(pre, sel.local, axis=1, mode="promise_in_bounds")
    return jnp.where(sel.owned, values, 0.0)


def scatter_dense(acts: jax.Array, sel: Selection, n_local: int) -> jax.Array:
    """acts [B, K] (0 where not owned) -> dense latents [B, n_local] on this shard."""
    rows = jnp.arange(acts.shape[0])[:, None]
    dense = jnp.zeros((acts.shape[0], n_local), acts.dtype)
    return dense.at[rows, sel.local].add(jnp.where(sel.owned, acts, 0.0), mode="promise_in_bounds")


# The chunked row gather (`sparse_decode`) beats a dense [B, n] @ [n, d] decode while K is small next to n.
# CPU, d=512, n=16384, B=4096, decode + its gradient: K=256 gather 1,183 ms vs dense 2,160 ms; K=1024 gather
# 4,492 ms vs dense 2,159 ms; the cost is linear in K, so they cross near n/K = 32. See experiments/RESULTS.md.
GATHER_MAX_K_FRACTION = 1 / 32


def gather_pays(k: int, n_local: int) -> bool:
    """Whether decoding K selected rows by gather is cheaper than a dense decode over n_local latents."""
    return k <= GATHER_MAX_K_FRACTION * n_local


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def sparse_decode(W_dec: jax.Array, weights: jax.Array, local: jax.Array, compute_dtype: str) -> jax.Array:
    """out[b, p] = sum_k weights[b, k, p] W_dec[local[b, k]]: [n_local, d], [B, K, P], [B, K] -> [B, P, d].

    PERFORMANCE: gathers the K decoder rows of a chunk of rows at a time (never a whole [B, K, d] array); the
    gradient is a chunked scatter-add into the selected decoder rows plus a chunked gather for d weights.
    compute_dtype "bfloat16": the table is rounded once, so the gathers move half the bytes, and the sums over
    K (forward) and d (d weights) accumulate in float32; dW_dec is scattered in float32.
    """
    d = W_dec.shape[1]

    def decode_chunk(table, _, chunk):
        weights_c, local_c = chunk
        return None, einsum("bkp,bkd->bpd", weights_c, gather_rows(table, local_c), compute_dtype=compute_dtype)

    table = W_dec.astype(compute_dtype)
    return scan_row_chunks(decode_chunk, None, (weights, local), d * local.shape[1], table)[1]


def _sparse_decode_fwd(W_dec, weights, local, compute_dtype):
    return sparse_decode(W_dec, weights, local, compute_dtype), (W_dec, weights, local)


def _sparse_decode_bwd(compute_dtype, residuals, g):
    """g: [B, P, d] -> (dW_dec [n_local, d], d weights [B, K, P], None)."""
    W_dec, weights, local = residuals

    def d_weights_chunk(table, _, chunk):
        local_c, g_c = chunk
        return None, einsum("bpd,bkd->bkp", g_c, gather_rows(table, local_c), compute_dtype=compute_dtype)

    table = W_dec.astype(compute_dtype)
    d_weights = scan_row_chunks(d_weights_chunk, None, (local, g), W_dec.shape[1] * local.shape[1], table)[1]
    dW = scatter_add_outer(W_dec, weights, local, g)
    return reduce_to_type_of(dW, W_dec), reduce_to_type_of(d_weights, weights), None


sparse_decode.defvjp(_sparse_decode_fwd, _sparse_decode_bwd)


def decode_partial(W_dec: jax.Array, acts: jax.Array, sel: Selection, axes: Axes, sparse: bool,
                   compute_dtype: str) -> jax.Array:
    """sum_k acts[b, k] W_dec[index[b, k]] over all latent shards: [B, d], without b_dec.

    sparse: a gather of the K decoder rows per row (gradient: scatter-add); dense: scatter to [B, n_local], matmul.
    compute_dtype: the inputs' dtype of the products (float32 accumulation; see `common.matmul`).
    """
    if sparse:
        weights = jnp.where(sel.owned, acts, 0.0)[:, :, None]
        partial = sparse_decode(W_dec, weights, sel.local, compute_dtype)[:, 0, :]
    else:
        partial = matmul(scatter_dense(acts, sel, W_dec.shape[0]), W_dec, compute_dtype)
    return psum(partial, axes.latent)


def fires(active: jax.Array, sel: Selection, n_local: int) -> jax.Array:
    """active [B, K] bool -> [n_local] float32 number of local rows each owned latent fired on."""
    hits = (active & sel.owned).astype(jnp.float32)
    return jnp.zeros((n_local,), jnp.float32).at[sel.local].add(hits, mode="promise_in_bounds")


def slot_mask(k_member: jax.Array, k_slots: int) -> jax.Array:
    """[1, k_slots] bool: the first k_member of k sorted slots (a member with k < cfg.k masks the rest)."""
    return (jnp.arange(k_slots) < k_member)[None, :]


def batch_candidates(cfg: SAEConfig) -> int:
    """C = batchtopk_row_cap * cfg.k (at most n_latents): each row's candidates for BatchTopK's global selection."""
    return min(cfg.batchtopk_row_cap * cfg.k, cfg.n_latents)


def batch_top_k(candidates: Selection, k_member: jax.Array, axes: Axes) -> tuple[jax.Array, jax.Array]:
    """BatchTopK selection (Bussmann et al. 2024): the B_global * k_member largest positive pre-activations of
    the whole global batch, found among each row's top C candidates (`batch_candidates`).

    candidates: Selection with K = C of the stop-gradient pre-activations.
    Returns (keep: [B, C] bool, min_kept: [] the smallest kept activation over the global batch, +inf if none
    is kept; identical on every shard).
    PERFORMANCE: only the [B, C] candidates are all-gathered (over latent, then over data) and sorted.
    """
    pool = jnp.sort(all_gather(candidates.score, axes.data, gather_axis=0).reshape(-1))
    n_keep = global_rows(candidates.score, axes) * k_member
    threshold = pool[pool.shape[0] - n_keep]
    keep = (candidates.score >= threshold) & (candidates.score > 0)
    # Identical on every latent shard already; the pmin over latent only tells JAX so (the gathered
    # candidates are typed per-shard), so the threshold buffer can stay replicated.
    min_kept = pmin(pmin(jnp.min(jnp.where(keep, candidates.score, jnp.inf)), axes.data), axes.latent)
    return keep, min_kept
