"""Tests of jaxsae.store: round trips, resumable appends, crash safety, validation, concurrent reads."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from jaxsae.store import SCHEMA_VERSION, StoreError, StoreWriter, open_store

D_MODEL = 8
SHARD_ROWS = 64
CHUNK_ROWS = 16
REPO_ROOT = Path(__file__).resolve().parents[1]


def _rows(n: int, seed: int = 0, d: int = D_MODEL) -> np.ndarray:
    """[n, d] float32 activations with a non-zero mean."""
    return (np.random.default_rng(seed).normal(size=(n, d)) + 0.5).astype(np.float32)


def _metadata(lo: int, hi: int) -> dict[str, np.ndarray]:
    """Distinct per-row metadata for rows [lo, hi)."""
    rows = np.arange(lo, hi)
    return {"cell_index": rows * 7 + 3, "token_id": rows % 97, "position": rows % 13}


def _write_in_one_go(path: Path, x: np.ndarray, dtype: str = "float32", **kwargs) -> None:
    sizes = {"shard_rows": SHARD_ROWS, "chunk_rows": CHUNK_ROWS}
    with StoreWriter.create(path, d_model=x.shape[1], dtype=dtype, **sizes, **kwargs) as w:
        w.append(x, **_metadata(0, len(x)))


def _assert_same_store(path_a: Path, path_b: Path) -> None:
    a, b = open_store(path_a), open_store(path_b)
    assert a.n_rows == b.n_rows
    np.testing.assert_array_equal(a.read_rows(0, a.n_rows), b.read_rows(0, b.n_rows))
    for name, values in a.read_metadata(0, a.n_rows).items():
        np.testing.assert_array_equal(values, b.read_metadata(0, b.n_rows)[name])
    assert a.norm.count == b.norm.count
    np.testing.assert_allclose(a.norm.sum, b.norm.sum, rtol=1e-12)
    np.testing.assert_allclose(a.norm.sum_sq_norm, b.norm.sum_sq_norm, rtol=1e-12)


def _assert_norm_matches(store, x: np.ndarray) -> None:
    x64 = x.astype(np.float64)
    assert store.norm.count == len(x)
    np.testing.assert_allclose(store.norm.mean, x64.mean(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(store.norm.mean_sq_norm, (x64**2).sum(axis=1).mean(), rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_round_trip_values_metadata_and_layout(tmp_path, dtype):
    x = _rows(200)
    _write_in_one_go(tmp_path / "s", x, dtype=dtype, source={"model": "geneformer", "layer": 4})
    store = open_store(tmp_path / "s")
    stored = x if dtype == "float32" else x.astype(ml_dtypes.bfloat16).astype(np.float32)
    assert dtype == "float32" or not np.array_equal(stored, x)  # bf16 rounding really happened
    got = store.read_rows(0, 200)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, stored)
    for name, values in store.read_metadata(30, 170).items():
        np.testing.assert_array_equal(values, _metadata(30, 170)[name])
    assert (store.n_rows, store.d_model, store.dtype) == (200, D_MODEL, dtype)
    assert store.source == {"model": "geneformer", "layer": 4}
    _assert_norm_matches(store, stored)
    sharding = json.loads((tmp_path / "s" / "acts" / "zarr.json").read_text())
    assert sharding["chunk_grid"]["configuration"]["chunk_shape"] == [SHARD_ROWS, D_MODEL]
    assert sharding["codecs"][0]["name"] == "sharding_indexed"
    assert sharding["codecs"][0]["configuration"]["chunk_shape"] == [CHUNK_ROWS, D_MODEL]
    assert "200 x d_model 8" in store.describe() and "geneformer" in store.describe()


def test_missing_metadata_is_stored_as_minus_one(tmp_path):
    with StoreWriter.create(tmp_path / "s", d_model=D_MODEL, shard_rows=SHARD_ROWS, chunk_rows=CHUNK_ROWS) as w:
        w.append(_rows(10), token_id=np.arange(10))
    meta = open_store(tmp_path / "s").read_metadata(0, 10)
    np.testing.assert_array_equal(meta["token_id"], np.arange(10))
    np.testing.assert_array_equal(meta["cell_index"], np.full(10, -1))
    assert meta["cell_index"].dtype == np.int64 and meta["position"].dtype == np.int32


def test_odd_pieces_several_commits_and_reopen_equal_one_go(tmp_path):
    x = _rows(400, seed=1)
    _write_in_one_go(tmp_path / "one_go", x)
    cuts = [0, 1, 37, 64, 100, 129, 200, 255, 256, 300, 333, 400]
    w = StoreWriter.create(tmp_path / "pieces", d_model=D_MODEL, shard_rows=SHARD_ROWS, chunk_rows=CHUNK_ROWS)
    for i, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:])):
        w.append(x[lo:hi], **_metadata(lo, hi))
        if i in (2, 4):
            w.commit({"rows_done": hi})
        if i == 6:  # reopen mid-shard, as a resumed extraction would
            w.close()
            assert open_store(tmp_path / "pieces").n_rows == hi
            w = StoreWriter.open(tmp_path / "pieces")
            assert w.rows_committed == hi and w.progress == {"rows_done": 129}
    w.close()
    _assert_same_store(tmp_path / "pieces", tmp_path / "one_go")
    store = open_store(tmp_path / "pieces")
    _assert_norm_matches(store, x)
    assert store.progress == {"rows_done": 129}  # close() keeps the last progress


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_caller_may_reuse_its_arrays_after_append(tmp_path, dtype):
    x = _rows(150, seed=2)
    _write_in_one_go(tmp_path / "one_go", x, dtype)
    w = StoreWriter.create(tmp_path / "reused", d_model=D_MODEL, dtype=dtype, shard_rows=SHARD_ROWS,
                           chunk_rows=CHUNK_ROWS)
    scratch = np.empty((50, D_MODEL), np.float32)  # one array refilled for every append, as a caller's buffer
    for lo in range(0, 150, 50):
        scratch[:] = x[lo : lo + 50]
        w.append(scratch, **_metadata(lo, lo + 50))
        if lo == 50:
            w.commit()  # the partial shard's write must not see the later refills either
    scratch[:] = np.nan
    w.close()
    _assert_same_store(tmp_path / "reused", tmp_path / "one_go")


def test_uncommitted_rows_are_invisible_and_norm_counts_committed_only(tmp_path):
    x = _rows(200, seed=2)
    w = StoreWriter.create(tmp_path / "s", d_model=D_MODEL, shard_rows=SHARD_ROWS, chunk_rows=CHUNK_ROWS)
    w.append(x[:70])
    w.commit()
    w.append(x[70:200])  # writes shards up to row 192 to disk, uncommitted
    w.flush()
    store = open_store(tmp_path / "s")
    assert store.n_rows == 70
    _assert_norm_matches(store, x[:70])
    with pytest.raises(StoreError, match=r"expected 0 <= start <= stop <= 70"):
        store.read_rows(60, 71)


_CRASH_SCRIPT = """
import sys, time
import numpy as np
from jaxsae.store import StoreWriter
path, data = sys.argv[1], np.load(sys.argv[2])
writer = StoreWriter.create(path, d_model=data["x"].shape[1], shard_rows=64, chunk_rows=16)
writer.append(data["x"][:100], cell_index=np.arange(100))
writer.commit({"cells_done": 100})
writer.append(data["junk"], cell_index=np.arange(100, 100 + len(data["junk"])))  # fills shards 1 and 2
writer.flush()
print("flushed", flush=True)
time.sleep(300)
"""


def test_sigkill_between_data_write_and_commit_keeps_committed_rows(tmp_path):
    import tensorstore as ts

    x, junk = _rows(300, seed=3), _rows(150, seed=4) * -10
    np.savez(tmp_path / "data.npz", x=x, junk=junk)
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_SCRIPT, str(tmp_path / "s"), str(tmp_path / "data.npz")],
        stdout=subprocess.PIPE, text=True, env=env,
    )
    with child.stdout:
        try:
            assert child.stdout.readline().strip() == "flushed"
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == -signal.SIGKILL

    # The uncommitted rows really reached the disk before the kill...
    raw_spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "s" / "acts")}}
    raw_acts = ts.open(raw_spec).result()
    assert raw_acts.shape[0] >= 192
    np.testing.assert_array_equal(raw_acts[100:192].read().result(), junk[:92])
    # ...yet the store shows exactly the committed ones.
    store = open_store(tmp_path / "s")
    assert store.n_rows == 100 and store.progress == {"cells_done": 100}
    np.testing.assert_array_equal(store.read_rows(0, 100), x[:100])
    _assert_norm_matches(store, x[:100])

    with StoreWriter.open(tmp_path / "s") as w:
        w.append(x[100:300], cell_index=np.arange(100, 300))
        w.commit({"cells_done": 300})
    with StoreWriter.create(tmp_path / "clean", d_model=D_MODEL, shard_rows=SHARD_ROWS, chunk_rows=CHUNK_ROWS) as w:
        w.append(x, cell_index=np.arange(300))
    _assert_same_store(tmp_path / "s", tmp_path / "clean")
    assert open_store(tmp_path / "s").progress == {"cells_done": 300}


def _edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _store_with_rows(
    path: Path, n: int, d: int = D_MODEL, dtype: str = "float32", shard_rows: int = SHARD_ROWS
) -> Path:
    """A store at `path` holding n committed rows of width d."""
    with StoreWriter.create(path, d_model=d, dtype=dtype, shard_rows=shard_rows, chunk_rows=CHUNK_ROWS) as w:
        w.append(_rows(n, d=d))
    return path


def test_open_store_refuses_missing_or_broken_manifests(tmp_path):
    with pytest.raises(StoreError, match=r"absent.*does not exist"):
        open_store(tmp_path / "absent")
    no_manifest = _store_with_rows(tmp_path / "no_manifest", 20)
    (no_manifest / "manifest.json").unlink()
    with pytest.raises(StoreError, match=r"manifest.json is missing.*re-run the extraction"):
        open_store(no_manifest)
    layer = tmp_path / "layer_2"  # an extraction's layer folder: one store per kind of row
    for kind in ("cell_cls", "tokens"):
        _store_with_rows(layer / kind, 20)
    with pytest.raises(StoreError, match=r"a folder of stores \(cell_cls, tokens\); pass one of them, e.g. .*tokens"):
        open_store(layer)
    garbled = _store_with_rows(tmp_path / "garbled", 20)
    (garbled / "manifest.json").write_text('{"schema_version": 1, "d_model": ')
    with pytest.raises(StoreError, match=r"garbled.*not valid JSON"):
        open_store(garbled)
    future = _store_with_rows(tmp_path / "future", 20)
    _edit_manifest(future, schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=rf"schema_version {SCHEMA_VERSION + 1}.*upgrade jaxsae"):
        open_store(future)
    lying = _store_with_rows(tmp_path / "lying", 20)
    _edit_manifest(lying, rows_committed=21)
    with pytest.raises(StoreError, match=r"norm stats cover 20 rows.*expected 21"):
        open_store(lying)


@pytest.mark.parametrize(
    ("donor_kwargs", "message"),
    [
        ({"d": 16}, r"array 'acts' has shape \(64, 16\).*width \(8,\)"),
        ({"dtype": "bfloat16"}, r"array 'acts' has dtype bfloat16; the manifest expects float32"),
        ({"shard_rows": 32}, r"array 'acts' has shards \(32, 8\).*expects shards \(64, 8\)"),
    ],
)
def test_open_store_refuses_arrays_that_do_not_match_the_manifest(tmp_path, donor_kwargs, message):
    store = _store_with_rows(tmp_path / "s", 20)
    donor = _store_with_rows(tmp_path / "donor", 20, **donor_kwargs)
    shutil.rmtree(store / "acts")
    shutil.copytree(donor / "acts", store / "acts")
    with pytest.raises(StoreError, match=message):
        open_store(store)
    with pytest.raises(StoreError, match=message):
        StoreWriter.open(store)


def test_open_store_refuses_acts_shorter_than_rows_committed(tmp_path):
    store = _store_with_rows(tmp_path / "s", 48, shard_rows=16)
    donor = _store_with_rows(tmp_path / "donor", 16, shard_rows=16)
    shutil.rmtree(store / "acts")
    shutil.copytree(donor / "acts", store / "acts")
    with pytest.raises(StoreError, match=r"holds 16 rows but the manifest has rows_committed=48"):
        open_store(store)
    shutil.rmtree(store / "acts")
    with pytest.raises(StoreError, match=r"array 'acts' cannot be opened"):
        open_store(store)


def test_create_refuses_an_existing_store_unless_overwrite(tmp_path):
    _store_with_rows(tmp_path / "s", 20)
    with pytest.raises(StoreError, match=r"already holds.*overwrite=True"):
        StoreWriter.create(tmp_path / "s", d_model=D_MODEL)
    StoreWriter.create(tmp_path / "s", d_model=4, overwrite=True).close()
    assert (open_store(tmp_path / "s").n_rows, open_store(tmp_path / "s").d_model) == (0, 4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_huge_finite_rows_are_kept_with_exact_norm_statistics(tmp_path, dtype):
    x = _rows(40, seed=5)
    x[7] *= 1e22  # finite in float32 and bfloat16, but its squared norm overflows float32
    w = StoreWriter.create(tmp_path / "s", d_model=D_MODEL, dtype=dtype, shard_rows=SHARD_ROWS, chunk_rows=CHUNK_ROWS)
    w.append(x)
    w.close()
    store = open_store(tmp_path / "s")
    stored = store.read_rows(0, 40).astype(np.float64)
    assert np.isfinite(stored).all() and store.n_rows == 40
    np.testing.assert_allclose(store.norm.mean_sq_norm, np.mean(np.sum(stored**2, axis=1)), rtol=1e-6)


def test_bad_appends_raise_before_anything_is_buffered(tmp_path):
    x = _rows(80)
    w = StoreWriter.create(tmp_path / "s", d_model=D_MODEL, shard_rows=SHARD_ROWS, chunk_rows=CHUNK_ROWS)
    w.append(x[:10])
    with pytest.raises(StoreError, match=r"shape \(5, 9\); expected \[n, 8\]"):
        w.append(_rows(5, d=9))
    nan_rows = x[10:80].copy()
    nan_rows[3, 2] = np.nan  # 70 rows: would have filled a shard
    with pytest.raises(StoreError, match=r"NaN or Inf.*row 3 of 70.*nothing was appended"):
        w.append(nan_rows)
    with pytest.raises(StoreError, match=r"NaN or Inf"):
        w.append(np.full((2, D_MODEL), 1e300))  # finite float64, infinite as float32
    with pytest.raises(StoreError, match=r"cell_index of shape \(4,\).*expected \[5\]"):
        w.append(x[10:15], cell_index=np.arange(4))
    with pytest.raises(StoreError, match=r"token_id values in .*int32"):
        w.append(x[10:15], token_id=np.full(5, 2**40))
    with pytest.raises(StoreError, match=r"progress holds a value JSON cannot store"):
        w.commit({"cells_done": np.int64(3)})
    assert w.rows_appended == 10 and w.rows_committed == 0
    w.append(x[10:80])
    w.close()
    store = open_store(tmp_path / "s")
    assert store.n_rows == 80
    np.testing.assert_array_equal(store.read_rows(0, 80), x)
    _assert_norm_matches(store, x)
    with pytest.raises(StoreError, match=r"writer is closed"):
        w.append(x)


def test_read_ranges_and_read_rows_at_match_numpy(tmp_path):
    x = _rows(500, seed=5)
    _write_in_one_go(tmp_path / "s", x)
    store = open_store(tmp_path / "s")
    ranges = [(0, 16), (480, 500), (17, 130), (64, 64), (200, 264), (0, 500)]
    for (start, stop), got in zip(ranges, store.read_ranges(ranges)):
        np.testing.assert_array_equal(got, store.read_rows(start, stop))
        np.testing.assert_array_equal(got, x[start:stop])
    indices = np.random.default_rng(0).integers(0, 500, size=77)
    indices[:3] = [499, 0, 499]  # unsorted, repeated, both ends
    np.testing.assert_array_equal(store.read_rows_at(indices), x[indices])
    assert store.read_rows_at(np.array([], np.int64)).shape == (0, D_MODEL)
    with pytest.raises(StoreError, match=r"indices in \[0, 500\]; expected indices in \[0, 500\)"):
        store.read_rows_at(np.array([0, 500]))
    with pytest.raises(StoreError, match=r"asked for rows \[490, 510\)"):
        store.read_ranges([(0, 10), (490, 510)])


def test_statistics_of_parts_cut_at_commit_boundaries_combine_bitwise_into_the_whole_store(tmp_path):
    from jaxsae.store import NormStats

    windows = [(_rows(n, seed=s) * 10.0 ** (s - 3)).astype(np.float32) for s, n in enumerate([5, 17, 9, 30, 1, 12])]
    whole = StoreWriter.create(tmp_path / "whole", d_model=D_MODEL, shard_rows=SHARD_ROWS, chunk_rows=CHUNK_ROWS)
    for window in windows:  # one commit per window, as an extraction does
        whole.append(window)
        whole.commit()
    parts = []
    for i, cut in enumerate([(0, 2), (2, 3), (3, 6)]):
        with StoreWriter.create(tmp_path / f"part{i}", d_model=D_MODEL, shard_rows=SHARD_ROWS,
                                chunk_rows=CHUNK_ROWS) as part:
            for window in windows[slice(*cut)]:
                part.append(window)
                part.commit()
        parts.append(open_store(tmp_path / f"part{i}").norm)
    for order in (parts, parts[::-1]):
        assert NormStats.combined(order) == whole.manifest.norm  # exact sums and the rounded floats alike
    assert open_store(tmp_path / "whole").norm == whole.manifest.norm  # the expansions survive JSON
    _assert_norm_matches(open_store(tmp_path / "whole"), np.concatenate(windows))


def test_a_store_written_before_exact_sums_reads_and_resumes_from_its_float_sums(tmp_path):
    path = tmp_path / "old"
    _write_in_one_go(path, _rows(40))
    manifest = json.loads((path / "manifest.json").read_text())
    for name in ("exact_sum", "exact_sum_sq_norm"):
        del manifest["norm"][name]
    (path / "manifest.json").write_text(json.dumps(manifest))
    old = open_store(path).norm
    assert old.exact_sum is None and old.count == 40
    with StoreWriter.open(path) as writer:
        writer.append(_rows(8, seed=1))
    _assert_norm_matches(open_store(path), np.concatenate([_rows(40), _rows(8, seed=1)]))
