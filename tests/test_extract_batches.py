"""Batching by token count: the cuts respect the budget and cover every cell once in order, and an extraction
cut by a token budget stores the rows of one cut into fixed batches."""

import numpy as np
import pytest

from extract.errors import ExtractError
from extract.run import extract
from extract.testing import write_counts_h5ad, write_geneformer_folder, write_scgpt_folder
from extract.windows import batch_cuts
from jaxsae.store import open_store

GENES = [f"ENSG{n:011d}" for n in range(1, 61)]
SYMBOLS = [f"G{n}" for n in range(60)]


@pytest.mark.parametrize("seed", range(6))
def test_cuts_respect_the_budget_and_cover_every_cell_once_in_order(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 300, rng.integers(0, 200))
    if seed % 2 == 0:
        lengths = np.sort(lengths)[::-1]  # extraction's order: longest first
    budget = int(rng.integers(1, 2000))
    cap = None if seed % 3 == 0 else int(rng.integers(1, 20))
    cuts = batch_cuts(lengths, budget, cap)
    assert [i for cut in cuts for i in range(cut.start, cut.stop)] == list(range(len(lengths)))
    for k, cut in enumerate(cuts):
        n, longest = cut.stop - cut.start, lengths[cut].max()
        assert n == 1 or (n * longest <= budget and (cap is None or n <= cap))
        if k + 1 < len(cuts):  # greedy: the next cell would not have fitted
            grown = lengths[cut.start : cut.stop + 1]
            assert len(grown) * grown.max() > budget or (cap is not None and len(grown) > cap)
    assert batch_cuts(lengths, None, 7) == [slice(s, min(s + 7, len(lengths))) for s in range(0, len(lengths), 7)]


def test_a_cell_longer_than_the_budget_goes_alone():
    assert batch_cuts(np.array([50, 9, 5, 5, 5]), 20, None) == [slice(0, 1), slice(1, 3), slice(3, 5)]


@pytest.mark.parametrize("kind", ["geneformer", "scgpt"])
def test_token_budget_batches_store_the_rows_of_fixed_batches(tmp_path, kind):
    if kind == "geneformer":
        adata = write_counts_h5ad(tmp_path / "cells.h5ad", 40, GENES, mean=0.4)
        model = write_geneformer_folder(tmp_path / "model", GENES, special_tokens=True, n_layers=3, max_positions=40)
    else:
        adata = write_counts_h5ad(tmp_path / "cells.h5ad", 40, SYMBOLS, mean=0.4)
        model = write_scgpt_folder(tmp_path / "model", SYMBOLS, max_seq_len=32)
    options = dict(layers=[1], cells_per_commit=16, device="cpu", progress_bar=False)
    fixed = extract(adata, model, tmp_path / "fixed", batch_size=2, tokens_per_batch=None, **options)[1]
    budget = extract(adata, model, tmp_path / "budget", tokens_per_batch=150, **options)[1]
    for kind_name in ("tokens", "cell_mean"):
        a, b = (open_store(path.parent / kind_name) for path in (fixed, budget))
        assert a.n_rows == b.n_rows > 0
        meta_a, meta_b = a.read_metadata(0, a.n_rows), b.read_metadata(0, b.n_rows)
        for name in meta_a:
            np.testing.assert_array_equal(meta_a[name], meta_b[name])
        # Not bitwise: the same cell padded into another batch shape goes through other matmul blockings
        # (~1e-7 relative differences, as between batch_size 1 and 4; 2 to 7 cells per batch here).
        np.testing.assert_allclose(a.read_rows(0, a.n_rows), b.read_rows(0, b.n_rows), rtol=1e-5, atol=1e-5)
    assert "tokens_per_batch" not in open_store(fixed).source["extraction"]  # as extractions before the setting
    assert open_store(budget).source["extraction"] == {**open_store(fixed).source["extraction"],
                                                            "batch_size": None, "tokens_per_batch": 150}


def test_a_batch_bounded_by_nothing_is_refused(tmp_path):
    with pytest.raises(ExtractError, match="tokens_per_batch and batch_size are both None: nothing bounds a batch"):
        extract(tmp_path / "cells.h5ad", tmp_path, tmp_path / "out", tokens_per_batch=None)
    with pytest.raises(ExtractError, match="tokens_per_batch must be a positive integer, found 0"):
        extract(tmp_path / "cells.h5ad", tmp_path, tmp_path / "out", tokens_per_batch=0)
