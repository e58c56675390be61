"""The training row order and the prefetching stream over a real store."""

from __future__ import annotations

import numpy as np
import pytest

from jaxsae.data import ActivationStream, BlockShuffleOrder, StreamState
from jaxsae.store import StoreWriter, open_store


def test_order_is_a_permutation_per_epoch_and_differs_across_epochs():
    order = BlockShuffleOrder(n_rows=10_000, block_rows=256, window_blocks=8, batch_rows=500, streams=1, seed=3)
    epoch0 = np.concatenate([order.batch_row_ids(0, b) for b in range(order.batches_per_epoch)])
    epoch1 = np.concatenate([order.batch_row_ids(1, b) for b in range(order.batches_per_epoch)])
    assert order.batches_per_epoch == 20
    assert len(np.unique(epoch0)) == len(epoch0) == 10_000
    assert not np.array_equal(epoch0, epoch1)
    # Block shuffling: rows are not in store order, yet a batch draws from few windows.
    assert not np.array_equal(epoch0, np.sort(epoch0))


@pytest.mark.parametrize("streams", [1, 2, 4])
def test_order_is_pure_and_streams_partition_the_batch(streams):
    kw = dict(n_rows=9_000, block_rows=128, window_blocks=8, batch_rows=256, streams=streams, seed=1)
    a, b = BlockShuffleOrder(**kw), BlockShuffleOrder(**kw)
    for batch in (0, 5, a.batches_per_epoch - 1):
        whole = a.batch_row_ids(2, batch)
        assert np.array_equal(whole, b.batch_row_ids(2, batch))
        parts = [a.batch_row_ids(2, batch, range(s, s + 1)) for s in range(streams)]
        assert np.array_equal(np.concatenate(parts), whole)
        assert len(np.unique(whole)) == 256
    seen = np.concatenate([a.batch_row_ids(0, i) for i in range(a.batches_per_epoch)])
    assert len(np.unique(seen)) == len(seen)


def test_order_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="divisible"):
        BlockShuffleOrder(n_rows=1000, block_rows=100, window_blocks=4, batch_rows=10, streams=3)
    with pytest.raises(ValueError, match="fewer than one batch"):
        BlockShuffleOrder(n_rows=100, block_rows=100, window_blocks=4, batch_rows=200)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "store"
    rows = np.arange(6_000 * 4, dtype=np.float32).reshape(6_000, 4)
    with StoreWriter.create(path, d_model=4, shard_rows=2048, chunk_rows=256) as w:
        w.append(rows, cell_index=np.arange(6_000))
    return open_store(path), rows


def test_stream_yields_the_order_and_resumes_from_its_state(small_store):
    store, rows = small_store
    order = BlockShuffleOrder(n_rows=store.n_rows, block_rows=store.chunk_rows, window_blocks=4,
                              batch_rows=512, streams=2, seed=7)
    with ActivationStream(store, order) as stream:
        batches = [next(stream) for _ in range(order.batches_per_epoch + 3)]  # crosses into epoch 1
        state_after = stream.state
    for i, batch in enumerate(batches):
        epoch, b = divmod(i, order.batches_per_epoch)
        assert np.array_equal(batch, rows[order.batch_row_ids(epoch, b)])
    assert state_after == StreamState(1, 3)
    with ActivationStream(store, order, state=StreamState(0, 4)) as resumed:
        assert np.array_equal(next(resumed), batches[4])
    with ActivationStream(store, order, streams=range(1, 2), state=StreamState(0, 2)) as half:
        assert np.array_equal(next(half), batches[2][256:])
