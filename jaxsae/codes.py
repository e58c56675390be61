"""Sparse latent codes: each row's non-zero latents selected on device, assembled into CSR on the host.

Per device batch, the dense latents [B, n] come from the same jitted encode as `Dictionary.encode`'s dense
path (so the two agree bit for bit); a second jitted function keeps each row's `cap + 1` largest latents with
`lax.top_k` (which keeps the largest values, so this relies on the architecture contract's guarantee that
inference latents are non-negative, `Architecture.nonnegative_latents`; the builder refuses others). Only
[B, cap + 1] values + indices reach the host, which checks that no row overflowed (its (cap + 1)-th value is
zero), puts each row's columns in order and drops zeros. `cap` is the architecture's bound (`max_active_per_row`, TopK: k) or,
without one, the previous batch's largest row count rounded up to a power of two; a batch with a row of more
non-zeros than its cap is selected again from its latents, still on device, with a cap that fits.

PERFORMANCE: one batch stays in flight: batch i + 1 is dispatched before batch i is copied back and turned
into CSR pieces, so the host work overlaps the device's. Each batch's dense latents never leave the device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

LATENT_BATCH_BYTES = 128 << 20  # dense latents of one device batch: B * n_latents * 4 bytes, at most this
MAX_BATCH_ROWS = 8192
MIN_BATCH_ROWS = 256
FIRST_CAP = 64  # selection width of the first batch of an architecture without a bound


def default_batch_rows(n_latents: int) -> int:
    """Rows per device batch: the largest power of two whose [B, n_latents] float32 latents fit in
    LATENT_BATCH_BYTES, within [MIN_BATCH_ROWS, MAX_BATCH_ROWS] (n = 16,384: 2,048 rows).

    PERFORMANCE: on CPU (2 cores, n = 16,384) 1,024-4,096 rows per batch encode at the same speed within
    noise; the smaller batch keeps two batches in flight (latents + pre-activations) near 0.5 GB."""
    rows = LATENT_BATCH_BYTES // (4 * max(n_latents, 1))
    return int(min(MAX_BATCH_ROWS, max(MIN_BATCH_ROWS, 1 << (max(rows, 1).bit_length() - 1))))


def padded_rows(m: int, batch_rows: int) -> int:
    """The row count a batch of m <= batch_rows rows is padded to: batch_rows itself, or for a shorter (last)
    batch the next power of two, so any number of rows compiles at most log2(batch_rows) + 1 shapes."""
    return m if m == batch_rows else min(1 << max(m - 1, 0).bit_length(), batch_rows)


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


@functools.partial(jax.jit, static_argnums=1)
def _top(latents: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """latents: [B, n] non-negative -> (values [B, width] descending, index [B, width] int32): each row's
    `width` largest latents and their columns.

    PERFORMANCE: nothing else runs on device. XLA CPU's fast TopK is matched from a sort + one slice; an |.|
    before it, a second slice of its output, or a sort of its indices after it turned it into a full sort of
    every row (CPU, B = 4,096, n = 16,384, width = 33: 0.2 s alone; 0.6 s with |.|; 15-30 s with the others).
    Overflow checks and column order are done on the [B, width] result on the host."""
    values, index = jax.lax.top_k(latents, width)
    return values, index.astype(jnp.int32)


@jax.jit
def _count(latents: jax.Array) -> jax.Array:
    """[B] int32 non-zeros of each row of latents [B, n]."""
    return jnp.sum(latents != 0, axis=1, dtype=jnp.int32)


class SparseCodesBuilder:
    """Encodes rows batch by batch on device and assembles the CSR matrix of their non-zero latents.

    latents_fn: x [m, d] float32 (m <= batch_rows) -> [padded_rows(m), n_latents] latents on device.
    bound: the architecture's most non-zeros per row (`Architecture.max_active_per_row`), or None.
    nonnegative_latents: the architecture's guarantee that latents are >= 0; False is refused (a negative
    latent would be lost by the top-k selection). Rows may arrive in pieces of any size (`add`):
    they are regrouped into the same device batches as one `add` of all of them, so the result does not
    depend on how the rows were chunked.
    """

    def __init__(self, latents_fn: Callable[[np.ndarray], jax.Array], n_latents: int, batch_rows: int,
                 bound: int | None, *, nonnegative_latents: bool = True):
        if not nonnegative_latents:
            raise ValueError("sparse encoding keeps each row's largest latents, so it needs an architecture whose "
                             "latents are non-negative; encode with sparse=False")
        self._latents_fn = latents_fn
        self.n_latents = n_latents
        self.batch_rows = batch_rows
        self._bound = bound
        self._cap = min(bound if bound is not None else FIRST_CAP, n_latents)
        self._carry: list[np.ndarray] = []
        self._carry_rows = 0
        self._in_flight: tuple | None = None
        self._data: list[np.ndarray] = []
        self._indices: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self.second_passes = 0  # batches selected again because a row had more non-zeros than the cap

    def add(self, x: np.ndarray) -> None:
        """Queue rows x: [m, d] float32 (already checked); full device batches are dispatched at once."""
        start = 0
        if self._carry_rows:
            start = min(self.batch_rows - self._carry_rows, len(x))
            self._keep(x[:start])
            if self._carry_rows == self.batch_rows:
                self._dispatch(np.concatenate(self._carry))
                self._carry, self._carry_rows = [], 0
        while len(x) - start >= self.batch_rows:
            self._dispatch(x[start : start + self.batch_rows])
            start += self.batch_rows
        if start < len(x):
            self._keep(x[start:])

    def result(self):
        """The scipy.sparse.csr_matrix [rows, n_latents] float32 of every row added, in order (sorted indices)."""
        import scipy.sparse as sp

        if self._carry_rows:
            self._dispatch(np.concatenate(self._carry))
            self._carry, self._carry_rows = [], 0
        if self._in_flight is not None:
            self._finish(*self._in_flight)
            self._in_flight = None
        counts = np.concatenate(self._counts) if self._counts else np.zeros(0, np.int64)
        indptr = np.zeros(len(counts) + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        index_dtype = np.int32 if max(int(indptr[-1]), self.n_latents) < 2**31 else np.int64
        # one array at a time, each list dropped once joined: peak host memory is the pieces + one joined array
        data = np.concatenate(self._data) if self._data else np.zeros(0, np.float32)
        self._data = []
        indices = np.concatenate(self._indices) if self._indices else np.zeros(0, np.int32)
        self._indices, self._counts = [], []
        indices = indices.astype(index_dtype, copy=False)
        matrix = sp.csr_matrix((data, indices, indptr.astype(index_dtype)), shape=(len(counts), self.n_latents),
                               copy=False)
        matrix.has_sorted_indices = True
        return matrix

    def _keep(self, rows: np.ndarray) -> None:
        if len(rows):
            self._carry.append(np.array(rows, np.float32))  # a copy: the caller may reuse its buffer
            self._carry_rows += len(rows)

    def _dispatch(self, x: np.ndarray) -> None:
        latents, cap = self._latents_fn(x), self._cap
        selected = _top(latents, min(cap + 1, self.n_latents))
        if self._in_flight is not None:
            self._finish(*self._in_flight)  # may change self._cap for the batches after this one
        self._in_flight = (latents, len(x), cap, selected)

    def _finish(self, latents: jax.Array, n_valid: int, cap: int, selected) -> None:
        values, index = (a[:n_valid] for a in jax.device_get(selected))
        if values.shape[1] > cap and (values[:, cap] != 0).any():
            # a row holds more than cap non-zeros: select again, wide enough, from the latents still on device
            self.second_passes += 1
            most = int(np.asarray(_count(latents))[:n_valid].max())
            cap = min(_power_of_two_at_least(most), self.n_latents)
            values, index = (a[:n_valid] for a in jax.device_get(_top(latents, cap)))
        values, index = values[:, :cap], index[:, :cap]
        if self._bound is None:
            most = int((values != 0).sum(axis=1).max(initial=1))
            self._cap = min(_power_of_two_at_least(max(most, 1)), self.n_latents)
        order = np.argsort(index, axis=1)  # column order within each row (canonical CSR)
        values = np.take_along_axis(values, order, axis=1)
        index = np.take_along_axis(index, order, axis=1)
        keep = values != 0
        self._data.append(values[keep])
        self._indices.append(index[keep])
        self._counts.append(keep.sum(axis=1, dtype=np.int64))
