"""The training row order: a pure function of (seed, epoch, batch index) over a store's aligned blocks.

An epoch permutes the store's blocks (block = `block_rows` consecutive rows, the store's read unit), groups
them into windows of `window_blocks` blocks, and permutes rows inside each window (one window sits in RAM at
a time). For multi-host reading a window is split into `streams` sub-windows (block j of a window goes to
stream j % streams); every global batch is the concatenation of `batch_rows / streams` rows of each stream,
so a process that owns some streams reads only the blocks of its streams. The order depends on `streams`,
never on the number of processes or devices, so a run resumes bitwise on a different device count.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class Window:
    """Rows of one stream's sub-window: `blocks` in the order read, `row_perm` the in-window row order."""

    blocks: np.ndarray  # [G_s] block ids
    block_starts: np.ndarray  # [G_s] first row of each block
    block_sizes: np.ndarray  # [G_s] rows in each block
    row_perm: np.ndarray  # [rows] index into the concatenation of the blocks' rows

    @property
    def n_rows(self) -> int:
        return int(self.row_perm.shape[0])

    def row_ids(self) -> np.ndarray:
        """[rows] global store row ids in training order."""
        offsets = np.repeat(self.block_starts - np.cumsum(np.r_[0, self.block_sizes[:-1]]), self.block_sizes)
        return (np.arange(offsets.shape[0]) + offsets)[self.row_perm]


@dataclasses.dataclass(frozen=True)
class BlockShuffleOrder:
    """Deterministic block-shuffled order over `n_rows` rows.

    n_rows:        rows in the store (rows_committed).
    block_rows:    rows per block (the store's inner chunk; reads are block-aligned).
    window_blocks: blocks shuffled together in RAM (per window, across all streams).
    batch_rows:    global batch size; divisible by `streams`.
    streams:       independent sub-streams (see module docstring); the process count must divide it.
    seed:          the data seed.
    """

    n_rows: int
    block_rows: int
    window_blocks: int
    batch_rows: int
    streams: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.batch_rows % self.streams:
            raise ValueError(f"data.batch_rows={self.batch_rows} must be divisible by data.streams={self.streams}")
        if self.window_blocks < self.streams:
            raise ValueError(f"data.window_blocks={self.window_blocks} must be >= data.streams={self.streams}")
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"the store has {self.n_rows} rows, fewer than one batch of data.batch_rows={self.batch_rows} "
                f"per stream layout; lower data.batch_rows or add rows"
            )

    @property
    def n_blocks(self) -> int:
        return -(-self.n_rows // self.block_rows)

    @property
    def stream_rows(self) -> int:
        """Rows each stream contributes to one batch."""
        return self.batch_rows // self.streams

    def _block_size(self, blocks: np.ndarray) -> np.ndarray:
        return np.minimum(self.block_rows, self.n_rows - blocks * self.block_rows)

    @functools.cached_property
    def batches_per_epoch(self) -> int:
        # Block sizes are all block_rows except possibly the last, so the shortest stream holds at least
        # (its blocks - 1) full blocks; compute it exactly for epoch 0's layout and take a safe lower bound.
        positions = np.arange(self.n_blocks)
        stream_of = (positions % self.window_blocks) % self.streams
        per_stream = np.bincount(stream_of, minlength=self.streams) * self.block_rows
        last_short = self.block_rows - int(self._block_size(np.array([self.n_blocks - 1]))[0])
        worst = int(per_stream.min()) - last_short
        return worst // self.stream_rows

    @functools.lru_cache(maxsize=4)
    def _epoch_blocks(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch, 0x5AE])
        return rng.permutation(self.n_blocks)

    @functools.lru_cache(maxsize=8)
    def _stream_window_sizes(self, epoch: int, stream: int) -> np.ndarray:
        """[n_windows] rows in each of `stream`'s sub-windows for `epoch`."""
        blocks = self._epoch_blocks(epoch)
        n_windows = -(-self.n_blocks // self.window_blocks)
        sizes = np.zeros(n_windows, np.int64)
        for w in range(n_windows):
            sizes[w] = self._block_size(self._stream_blocks(blocks, w, stream)).sum()
        return sizes

    def _stream_blocks(self, epoch_blocks: np.ndarray, window: int, stream: int) -> np.ndarray:
        in_window = epoch_blocks[window * self.window_blocks : (window + 1) * self.window_blocks]
        return in_window[stream :: self.streams]

    def window(self, epoch: int, window: int, stream: int) -> Window:
        """The `window`-th sub-window of `stream` in `epoch` (pure function of its arguments and the seed)."""
        blocks = self._stream_blocks(self._epoch_blocks(epoch), window, stream)
        sizes = self._block_size(blocks)
        rng = np.random.default_rng([self.seed, epoch, window, stream, 0xB10C])
        return Window(blocks, blocks * self.block_rows, sizes, rng.permutation(int(sizes.sum())))

    def batch_windows(self, epoch: int, batch: int, stream: int) -> list[tuple[int, int, int]]:
        """Pieces of `stream`'s share of global batch `batch`: [(window, start_in_window, stop_in_window)]."""
        if not 0 <= batch < self.batches_per_epoch:
            raise IndexError(f"batch {batch} outside epoch of {self.batches_per_epoch} batches")
        bounds = np.r_[0, np.cumsum(self._stream_window_sizes(epoch, stream))]
        lo, hi = batch * self.stream_rows, (batch + 1) * self.stream_rows
        pieces = []
        w = int(np.searchsorted(bounds, lo, side="right") - 1)
        while lo < hi:
            stop = min(hi, int(bounds[w + 1]))
            pieces.append((w, lo - int(bounds[w]), stop - int(bounds[w])))
            lo, w = stop, w + 1
        return pieces

    def batch_row_ids(self, epoch: int, batch: int, streams: range | None = None) -> np.ndarray:
        """[len(streams) * stream_rows] store row ids of global batch `batch`, for the given streams."""
        out = []
        for s in streams if streams is not None else range(self.streams):
            for w, a, b in self.batch_windows(epoch, batch, s):
                out.append(self.window(epoch, w, s).row_ids()[a:b])
        return np.concatenate(out)
