"""A pack reads each batch from the store once per step, whatever its number of members."""

import pytest

from jaxsae.data.synthetic import SynthConfig, synthesize
from jaxsae.train import load_config, loop, train

BATCH, WINDOW = 256, 1024  # rows per batch; rows per stream window (one 1,024-row block: the store's chunk)
STEPS = 13  # 3 whole windows and a batch into the 4th, so the stream's lead (prefetch 2 + 1 batches) stays there


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("reads") / "store",
                      SynthConfig(rows=8_192, d_model=16, n_features=48, active_per_row=3), chunk=WINDOW)


def _rows_read(store, run_dir, members: str, monkeypatch) -> int:
    """Rows the real store hands to training (the data stream and the geometric-median sample) in one run."""
    rows = []
    open_store = loop.open_store

    def counting_store(path):
        real = open_store(path)
        read_ranges, read_rows_at = real.read_ranges, real.read_rows_at

        def counted_ranges(ranges):
            rows.append(sum(stop - start for start, stop in ranges))
            return read_ranges(ranges)

        def counted_rows_at(indices):
            rows.append(len(indices))
            return read_rows_at(indices)

        monkeypatch.setattr(real, "read_ranges", counted_ranges)
        monkeypatch.setattr(real, "read_rows_at", counted_rows_at)
        return real

    with monkeypatch.context() as patch:
        patch.setattr(loop, "open_store", counting_store)
        result = train(load_config(None, [
            f"data.store={store}", f"run_dir={run_dir}", f"steps={STEPS}", "progress=false", "sae.d_model=16",
            "sae.n_latents=64", "sae.k=5", f"data.batch_rows={BATCH}", "data.window_blocks=1", "data.prefetch=2",
            "checkpoint_every=0", f"members={members}"]))
    assert len(result.dictionaries) == members.count("{")
    return sum(rows)


def test_a_pack_of_8_members_reads_each_batch_once(store, tmp_path, monkeypatch):
    eight = "[" + ", ".join(f'{{"k": {k}, "lr": {lr}}}' for k in (2, 3, 4, 5) for lr in (1e-3, 3e-3)) + "]"
    alone = _rows_read(store, tmp_path / "one", '[{"k": 2, "lr": 1e-3}]', monkeypatch)
    # The stream reads whole windows, one ahead of the one in use; the median sample is the first batch's rows.
    windows = -(-STEPS * BATCH // WINDOW) + 1
    assert alone == windows * WINDOW + BATCH
    assert _rows_read(store, tmp_path / "eight", eight, monkeypatch) == alone  # not 8 times as many
