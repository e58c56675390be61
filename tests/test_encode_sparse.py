"""Sparse encoding: CSR codes equal the dense latents exactly for every architecture; encode_store streams a store."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

import jaxsae
from jaxsae.analysis import AnalysisError, TokenCodes, encode_store
from jaxsae.data.synthetic import SynthConfig, synthesize
from jaxsae.dictionary import SPARSE_DEFAULT_ROWS, load, save_dictionary
from jaxsae.sae import base, builtin_names
from jaxsae.sae.base import SAEConfig
from jaxsae.sae.init import geometric_median
from jaxsae.store import StoreWriter

D = 16


def rows(n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, D)) + 0.3).astype(np.float32)


def saved_dictionary(arch, folder, n_latents=256, k=8, seed=0):
    """An initialised dictionary saved and loaded by the real code; thresholds raised so that rows differ in
    how many latents fire (the selection cap has to grow for every architecture but TopK)."""
    cfg = SAEConfig(architecture=arch, d_model=D, n_latents=n_latents, k=k)
    module = base.build(cfg)
    params = module.init(jax.random.key(seed), jnp.asarray(geometric_median(rows(512, seed + 1))))
    buffers = module.init_buffers()
    if "threshold" in buffers:
        buffers["threshold"] = jnp.asarray(0.2, jnp.float32)
    if "threshold" in params:
        params["threshold"] = jax.random.uniform(jax.random.key(seed + 2), (n_latents,), maxval=0.5)
    return load(save_dictionary(folder / arch, sae=cfg, params=params, buffers=buffers, hparams={}, scale=1.7))


@pytest.mark.parametrize("arch", builtin_names())
def test_sparse_codes_equal_the_dense_latents_exactly(arch, tmp_path):
    d = saved_dictionary(arch, tmp_path)
    x = rows(1300)
    dense = d.encode(x, sparse=False, batch_rows=512)
    codes = d.encode(x, sparse=True, batch_rows=512)
    assert isinstance(codes, sp.csr_matrix) and codes.dtype == np.float32 and codes.shape == dense.shape
    assert codes.has_sorted_indices and (codes.data != 0).all()
    np.testing.assert_array_equal(codes.toarray(), dense)
    counts = (dense != 0).sum(axis=1)
    assert counts.min() < counts.max() or arch == "topk"  # rows differ in how many latents fire
    if arch == "topk":
        assert counts.max() <= 8
    # the same rows handed over in uneven pieces give the same matrix (the device batches are the same)
    builder = d.sparse_builder(512)
    for lo, hi in ((0, 100), (100, 1000), (1000, 1001), (1001, 1300)):
        builder.add(x[lo:hi])
    pieces = builder.result()
    assert (pieces != codes).nnz == 0 and np.array_equal(pieces.indptr, codes.indptr)
    # TopK's bound (k) always fits; the others start narrow and select some batches again, wider, on device
    assert (builder.second_passes > 0) == (arch != "topk")


def test_encode_is_sparse_by_default_above_the_threshold_and_decode_takes_either(tmp_path):
    d = saved_dictionary("jumprelu", tmp_path)
    x = rows(SPARSE_DEFAULT_ROWS + 1, seed=3)
    assert isinstance(d.encode(x[:SPARSE_DEFAULT_ROWS]), np.ndarray)
    codes = d.encode(x)
    assert sp.issparse(codes)
    np.testing.assert_array_equal(d.decode(codes), d.decode(d.encode(x, sparse=False)))
    assert d.encode(x[:0], sparse=True).shape == (0, 256)


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("store") / "store",
                      SynthConfig(rows=5000, d_model=D, n_features=48, active_per_row=3, seed=4))


def test_encode_store_chunked_equals_one_shot(synth_store, tmp_path):
    d = saved_dictionary("batchtopk", tmp_path)
    store = jaxsae.open_store(synth_store)
    all_rows = store.read_rows(0, store.n_rows)
    one_shot = d.encode(all_rows, sparse=True)
    streamed = encode_store(synth_store, d.path, chunk_rows=700, progress=False)
    assert isinstance(streamed, TokenCodes)
    assert (streamed.codes != one_shot).nnz == 0 and streamed.codes.dtype == np.float32
    np.testing.assert_array_equal(streamed.codes.toarray(), d.encode(all_rows, sparse=False))
    meta = store.read_metadata(0, store.n_rows)
    np.testing.assert_array_equal(streamed.cell_index, meta["cell_index"])
    assert streamed.cell_index.dtype == np.int64 and streamed.token_id.dtype == np.int32
    assert (streamed.token_id == -1).all()  # a store without tokens
    assert streamed.store == str(store.path.resolve()) and streamed.dictionary == d.path
    part = encode_store(store, d, chunk_rows=333, progress=False, rows=slice(1200, 3100))
    assert (part.codes != one_shot[1200:3100]).nnz == 0
    np.testing.assert_array_equal(part.cell_index, meta["cell_index"][1200:3100])


def test_encode_store_refuses_a_wrong_width_and_an_incomplete_store(synth_store, tmp_path):
    wide = saved_dictionary("topk", tmp_path)
    narrow_cfg = SAEConfig(architecture="topk", d_model=8, n_latents=32, k=4)
    narrow = load(save_dictionary(
        tmp_path / "narrow", sae=narrow_cfg, params=base.build(narrow_cfg).init(jax.random.key(0), jnp.zeros(8)),
        buffers={}, hparams={}, scale=1.0))
    with pytest.raises(AnalysisError, match=r"d_model=8 activations but store .* d_model=16; use a dictionary"):
        encode_store(synth_store, narrow, progress=False)
    with pytest.raises(AnalysisError, match="rows: expected a slice with step 1"):
        encode_store(synth_store, wide, progress=False, rows=slice(0, 10, 2))
    path = tmp_path / "incomplete"
    with StoreWriter.create(path, d_model=D, progress={"cells_done": 0, "cells_total": 10}) as writer:
        writer.append(rows(50), cell_index=np.arange(50))
        writer.commit(progress={"cells_done": 4, "cells_total": 10})
    with pytest.raises(AnalysisError, match="INCOMPLETE: extraction stopped at cell 4 of 10"):
        encode_store(path, wide, progress=False)
