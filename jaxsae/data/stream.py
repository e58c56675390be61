"""The training stream: batches from an activation store in `BlockShuffleOrder`, prefetched in the background.

Its whole state is `StreamState(epoch, batch)`, the position of the next batch the trainer will consume, so a
checkpoint holds two integers and a resumed run sees exactly the batches it would have seen.

PERFORMANCE: a window (window_blocks blocks) is read with one concurrent TensorStore request per block, and the
next window of every owned stream is read ahead on a worker thread, so the step never waits on I/O once the
first window is in RAM. Batches are assembled by a producer thread into a bounded queue (`prefetch` deep).
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import ctypes.util
import dataclasses
import functools
import queue
import threading
from typing import Iterator

import numpy as np

from jaxsae.data.order import BlockShuffleOrder


@functools.cache
def _malloc_trim():
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    libc = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None


def release_freed_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc `malloc_trim(0)`; a no-op elsewhere).

    PERFORMANCE (memory): TensorStore returns a window's blocks as separate allocations (1,024 x 512 float32 rows:
    2 MB each), below the size glibc serves by mmap once its threshold has adapted, so they come from the read
    threads' heap arenas, and freeing them there does not shrink the process: the trainer's RSS grew by about a
    window (128 MB) at every window read (d 512, 4,096-row batches, 64 steps: 1.29 GB after the first window,
    2.05 GB at the end). Trimmed after each window load it stays flat (experiments/RESULTS.md).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@dataclasses.dataclass(frozen=True)
class StreamState:
    """Position of the next batch: `batch` within `epoch`."""

    epoch: int = 0
    batch: int = 0

    def advanced(self, order: BlockShuffleOrder) -> StreamState:
        if self.batch + 1 < order.batches_per_epoch:
            return StreamState(self.epoch, self.batch + 1)
        return StreamState(self.epoch + 1, 0)

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    @classmethod
    def from_dict(cls, d: dict) -> StreamState:
        return cls(int(d["epoch"]), int(d["batch"]))


class _WindowCache:
    """Sub-windows of owned streams in RAM (rows already in training order), read ahead one window."""

    def __init__(self, store, order: BlockShuffleOrder, pool: concurrent.futures.Executor):
        self._store, self._order, self._pool = store, order, pool
        self._futures: collections.OrderedDict[tuple, concurrent.futures.Future] = collections.OrderedDict()
        self._n_windows = -(-order.n_blocks // order.window_blocks)

    def _load(self, epoch: int, window: int, stream: int) -> np.ndarray:
        """The window's rows in training order: concatenate(blocks)[row_perm].

        PERFORMANCE: each block is copied once, straight into its rows of one preallocated array (where the
        permuted rows land), instead of a concatenation and then a permuted copy of it: the transient peak is
        the blocks plus one window, not the blocks plus two (128 MB less per load at 64 blocks of 1,024 x 512
        float32 rows; experiments/RESULTS.md, "Where the trainer's peak RSS goes").
        """
        win = self._order.window(epoch, window, stream)
        ranges = [(int(a), int(a + n)) for a, n in zip(win.block_starts, win.block_sizes)]
        blocks = self._store.read_ranges(ranges)
        destination = np.empty_like(win.row_perm)
        destination[win.row_perm] = np.arange(len(win.row_perm))
        rows = np.empty((len(destination), *blocks[0].shape[1:]), blocks[0].dtype)
        start = 0
        for i, block in enumerate(blocks):
            rows[destination[start:start + len(block)]] = block
            start += len(block)
            blocks[i] = None  # this block's memory can go now
        release_freed_memory()
        return rows

    def _submit(self, key: tuple) -> concurrent.futures.Future:
        if key not in self._futures:
            self._futures[key] = self._pool.submit(self._load, *key)
            # Per stream: the window being consumed and the next one (read ahead). A batch that straddles two
            # windows asks for them in order, so an older window is never asked for again.
            while len(self._futures) > 2 * max(1, len({k[2] for k in self._futures})):
                self._futures.popitem(last=False)
        self._futures.move_to_end(key)
        return self._futures[key]

    def get(self, epoch: int, window: int, stream: int) -> np.ndarray:
        rows = self._submit((epoch, window, stream)).result()
        nxt = (epoch, window + 1, stream) if window + 1 < self._n_windows else (epoch + 1, 0, stream)
        self._submit(nxt)
        return rows


class ActivationStream:
    """Iterates float32 batches `[len(streams) * stream_rows, d]` of the owned streams, from `state` on.

    store:    an opened `jaxsae.store.ActivationStore`.
    order:    the row order (shared by all processes).
    streams:  the streams this process reads (all of them on one host).
    state:    where to start; `self.state` is always the position of the next batch `__next__` returns.
    prefetch: batches assembled ahead of the consumer.
    """

    def __init__(self, store, order: BlockShuffleOrder, *, streams: range | None = None,
                 state: StreamState = StreamState(), prefetch: int = 2):
        self.order = order
        self.streams = streams if streams is not None else range(order.streams)
        self.state = state
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="jaxsae-read")
        self._cache = _WindowCache(store, order, self._pool)
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(state,), daemon=True, name="jaxsae-batches")
        self._thread.start()

    def batch_at(self, state: StreamState) -> np.ndarray:
        """The batch at `state` (pure function of the order; used by the producer and by tests)."""
        parts = []
        for s in self.streams:
            for w, a, b in self.order.batch_windows(state.epoch, state.batch, s):
                parts.append(self._cache.get(state.epoch, w, s)[a:b])
        return np.concatenate(parts, axis=0)

    def _produce(self, state: StreamState) -> None:
        try:
            while not self._stop.is_set():
                item = (state, self.batch_at(state))
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                state = state.advanced(self.order)
        except BaseException as e:  # surfaced to the consumer on its next call
            self._queue.put((None, e))

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        state, batch = self._queue.get()
        if state is None:
            raise RuntimeError("the data stream's reader failed") from batch
        assert state == self.state, (state, self.state)
        self.state = state.advanced(self.order)
        return batch

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> ActivationStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
