"""Tokenisers against hand-computed expectations on a tiny AnnData."""

import pickle

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from extract.errors import ExtractError
from extract.tokenize import (
    GeneformerDictionaries,
    GeneformerTokenizer,
    ScGPTTokenizer,
    as_count_rows,
    bin_values,
)

E = [f"ENSG{n:011d}" for n in range(1, 6)]  # E[4] is in no dictionary
SYMBOLS = ["A", "B", "C", "D", "Z"]
COUNTS = np.array(
    [
        [10, 10, 10, 10, 60],  # total 100: /median -> E1 1000, E2 500, E3 2000, E4 250
        [0, 3, 2, 0, 0],  # E2 3/5e4/2 = 3000 < E3 2/5e4/0.5 = 8000: medians reverse the raw order
        [0, 0, 0, 0, 4],  # only an unknown gene: no tokens
    ],
    dtype=np.float32,
)


def write_dicts(folder, *, v2=False, with_names=False, numpy_medians=False):
    tokens = {"<pad>": 0, "<mask>": 1, E[0]: 2, E[1]: 3, E[2]: 4, E[3]: 5}
    if v2:
        tokens.update({"<cls>": 6, "<eos>": 7})
    medians = {E[0]: 1.0, E[1]: 2.0, E[2]: 0.5, E[3]: 4.0}
    if numpy_medians:
        medians = {k: np.float32(v) for k, v in medians.items()}
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "token_dictionary_gc.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(folder / "gene_median_dictionary_gc.pkl", "wb") as f:
        pickle.dump(medians, f)
    if with_names:
        with open(folder / "gene_name_id_dict_gc.pkl", "wb") as f:
            pickle.dump(dict(zip(SYMBOLS[:4], E[:4])), f)
    return folder


def tokens_of(tokenizer, counts=COUNTS):
    out = tokenizer(as_count_rows(sp.csr_matrix(counts)), np.arange(len(counts)))
    return [ids.tolist() for ids in out.input_ids], out


def test_geneformer_rank_value_v1(tmp_path):
    dicts = GeneformerDictionaries.from_dir(write_dicts(tmp_path))
    var = pd.DataFrame(index=E)
    tok = GeneformerTokenizer(dicts, var, model_input_size=2048, special_tokens=False)
    ids, out = tokens_of(tok)
    assert ids == [[4, 2, 3, 5], [4, 3], []]
    assert (out.n_prefix, out.n_suffix) == (0, 0)
    assert tok.n_genes(as_count_rows(sp.csr_matrix(COUNTS))).tolist() == [4, 2, 0]


def test_geneformer_truncation_and_v2_special_tokens(tmp_path):
    dicts = GeneformerDictionaries.from_dir(write_dicts(tmp_path, v2=True))
    var = pd.DataFrame(index=E)
    v1 = GeneformerTokenizer(dicts, var, model_input_size=3, special_tokens=False)
    assert tokens_of(v1)[0][0] == [4, 2, 3]
    v2 = GeneformerTokenizer(dicts, var, model_input_size=4, special_tokens=True)
    ids, out = tokens_of(v2)
    assert ids[0] == [6, 4, 2, 7] and ids[1] == [6, 4, 3, 7]
    assert (out.n_prefix, out.n_suffix) == (1, 1)


def test_geneformer_numpy_medians_and_symbol_mapping(tmp_path):
    dicts = GeneformerDictionaries.from_dir(write_dicts(tmp_path, with_names=True, numpy_medians=True))
    assert all(type(m) is float for m in dicts.medians.values())
    tok = GeneformerTokenizer(dicts, pd.DataFrame(index=SYMBOLS), model_input_size=2048, special_tokens=False)
    assert tokens_of(tok)[0] == [[4, 2, 3, 5], [4, 3], []]


def test_geneformer_ensembl_column_and_duplicates_summed(tmp_path):
    dicts = GeneformerDictionaries.from_dir(write_dicts(tmp_path))
    # columns 1 and 3 both carry E2 (second with a version suffix): summed -> 20/100e4/2 = 1000 ties E1 (var order)
    var = pd.DataFrame({"gene_ids": [E[0], E[1], E[2], E[1] + ".7", E[4]]}, index=SYMBOLS)
    tok = GeneformerTokenizer(dicts, var, model_input_size=2048, special_tokens=False, gene_column="gene_ids")
    assert tokens_of(tok)[0][0] == [4, 2, 3]


def test_geneformer_symbols_without_mapping_refused(tmp_path):
    dicts = GeneformerDictionaries.from_dir(write_dicts(tmp_path))
    with pytest.raises(ExtractError, match="gene symbols"):
        GeneformerTokenizer(dicts, pd.DataFrame(index=SYMBOLS), model_input_size=2048, special_tokens=False)


def test_no_gene_in_vocabulary_refused(tmp_path):
    dicts = GeneformerDictionaries.from_dir(write_dicts(tmp_path))
    var = pd.DataFrame(index=[f"ENSG{n:011d}" for n in range(100, 105)])
    with pytest.raises(ExtractError, match="none of the 5 genes"):
        GeneformerTokenizer(dicts, var, model_input_size=2048, special_tokens=False)


def rng(seed=0):
    return np.random.default_rng(seed)


def test_bin_values_hand_computed():
    # non-zero [1,2,3,4,10]; 4 edges at quantiles 0,1/3,2/3,1 = [1, 2.333, 3.667, 10]; 1 and 10 each sit on one
    # edge, where scGPT's ceil(u * (right - left) + left) is always `left`
    assert bin_values(np.array([0, 1, 2, 3, 4, 10.0]), 5, rng()).tolist() == [0, 1, 1, 2, 3, 4]
    assert bin_values(np.zeros(3), 5, rng()).tolist() == [0, 0, 0]
    binned = bin_values(np.random.default_rng(0).poisson(3, 200).astype(float), 51, rng())
    assert binned.min() >= 0 and binned.max() == 50


def official_digitize(x, bins, side="both"):
    """scGPT scgpt/preprocess.py `_digitize`, verbatim (global np.random)."""
    assert x.ndim == 1 and bins.ndim == 1
    left_digits = np.digitize(x, bins)
    if side == "one":
        return left_digits
    right_difits = np.digitize(x, bins, right=True)
    rands = np.random.rand(len(x))  # uniform random numbers
    digits = rands * (right_difits - left_digits) + left_digits
    digits = np.ceil(digits).astype(np.int64)
    return digits


def official_binning(row, n_bins):
    """scGPT scgpt/preprocess.py `binning`, verbatim for numpy rows."""
    dtype = row.dtype
    if row.max() == 0:
        return np.zeros_like(row, dtype=dtype)
    if row.min() <= 0:
        non_zero_ids = row.nonzero()
        non_zero_row = row[non_zero_ids]
        bins = np.quantile(non_zero_row, np.linspace(0, 1, n_bins - 1))
        non_zero_digits = official_digitize(non_zero_row, bins)
        binned_row = np.zeros_like(row, dtype=np.int64)
        binned_row[non_zero_ids] = non_zero_digits
    else:
        bins = np.quantile(row, np.linspace(0, 1, n_bins - 1))
        binned_row = official_digitize(row, bins)
    return binned_row.astype(dtype)


@pytest.fixture(scope="module")
def pbmc_rows(pbmc_cells):
    """Real count rows with many ties: scanpy's pbmc68k_reduced recovered as raw counts (700 cells, about
    250 non-zero genes each, most of them 1, 2 or 3), as float32 like scGPT's tensors."""
    return pbmc_cells.X.toarray().astype(np.float32)


def test_scgpt_binning_has_the_official_support_and_distribution(pbmc_rows):
    n_bins, repeats = 51, 4
    ours, official, left_only = [], [], []
    expected = np.zeros(n_bins)  # exact pmf: each non-zero value uniform over its bins right+1..left
    np.random.seed(0)
    for repeat in range(repeats):
        for cell, row in enumerate(pbmc_rows):
            mine = bin_values(row, n_bins, rng([repeat, cell]))
            theirs = official_binning(row, n_bins)
            nonzero = row > 0
            x = row[nonzero]
            edges = np.quantile(x, np.linspace(0, 1, n_bins - 1))
            left, right = np.digitize(x, edges), np.digitize(x, edges, right=True)
            low = np.where(left > right, right + 1, left)
            for binned in (mine, theirs):  # (a) the same support: each value within its own [right+1, left]
                assert np.all(binned[~nonzero] == 0)
                assert np.all((low <= binned[nonzero]) & (binned[nonzero] <= left)), cell
            ours.append(mine[nonzero])
            official.append(theirs[nonzero])
            left_only.append(left)
            if repeat == 0:
                for lo, hi in zip(low, left):
                    expected[lo : hi + 1] += 1.0 / (hi - lo + 1)
    ours, official, left_only = (np.concatenate(v).astype(np.int64) for v in (ours, official, left_only))
    assert len(ours) == repeats * 174_400 and np.mean(ours != left_only) > 0.8  # ties are the common case

    def pmf(bins):
        return np.bincount(bins, minlength=n_bins) / len(bins)

    def total_variation(p, q):
        return 0.5 * np.abs(p - q).sum()

    # (b) the same distribution. With these fixed seeds: ours vs scGPT's 0.0039, each vs the exact pmf 0.0031
    # and 0.0029 (sampling noise of 700k draws); always taking the left digitisation (the old code) is 0.45 off.
    expected /= expected.sum()
    assert total_variation(pmf(ours), pmf(official)) < 0.01
    assert total_variation(pmf(ours), expected) < 0.01 and total_variation(pmf(official), expected) < 0.01
    assert total_variation(pmf(left_only), pmf(official)) > 0.4


def test_scgpt_binning_is_reproducible_per_seed_and_cell(pbmc_rows):
    vocab = {"<pad>": 0, "<cls>": 1, **{f"g{j}": j + 2 for j in range(pbmc_rows.shape[1])}}
    var = pd.DataFrame(index=[f"g{j}" for j in range(pbmc_rows.shape[1])])
    counts = as_count_rows(sp.csr_matrix(pbmc_rows[:20]))
    cells = np.arange(100, 120)  # AnnData rows seed the generators, not positions in the block

    def values(**options):
        out = ScGPTTokenizer(vocab, var, n_bins=51, max_seq_len=101, **options)(counts, cells)
        return out.input_ids, out.values

    ids, first = values(binning_seed=0)
    ids_again, again = values(binning_seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(first + ids, again + ids_again))  # (c) reruns: identical
    _, other = values(binning_seed=1)
    assert sum(not np.array_equal(a, b) for a, b in zip(first, other)) == 20  # another seed: other tie-breaks
    # a resume tokenises a later block alone: the same cell gets the same bins
    tail = ScGPTTokenizer(vocab, var, n_bins=51, max_seq_len=101)(as_count_rows(sp.csr_matrix(pbmc_rows[15:20])),
                                                                   cells[15:])
    assert all(np.array_equal(a, b) for a, b in zip(first[15:], tail.values))
    # binned over all of the cell's genes before the subsampling to max_seq_len (as scGPT's DataCollator)
    for i in range(20):
        row = pbmc_rows[i]
        full = bin_values(row[row > 0], 51, np.random.default_rng([0, int(cells[i]), 1]))
        kept = np.searchsorted(np.flatnonzero(row > 0), ids[i][1:] - 2)
        assert len(ids[i]) == 101 and np.array_equal(first[i][1:], full[kept]) and first[i][0] == -2


def test_scgpt_tokens_values_and_truncation():
    vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2, "A": 3, "B": 4, "C": 5}
    var = pd.DataFrame(index=["A", "B", "X", "C"])
    counts = np.array([[1, 0, 7, 3], [2, 2, 0, 2]], dtype=np.float32)
    tok = ScGPTTokenizer(vocab, var, n_bins=5, max_seq_len=10, pad_value=-2)
    ids, out = tokens_of(tok, counts)
    # cell 0: non-zero model genes A(1), C(3); edges [1, 1.667, 2.333, 3] -> bins 1, 4; X dropped
    assert ids[0] == [1, 3, 5] and out.values[0].tolist() == [-2, 1, 4]
    # cell 1: three 2s, every edge is 2: left 4, right 0 -> each a random bin in 1..4
    assert ids[1] == [1, 3, 4, 5] and out.values[1][0] == -2 and set(out.values[1][1:]) <= {1, 2, 3, 4}
    assert tok.settings()["binning_seed"] == 0 and "_digitize(side='both')" in tok.settings()["binning"]
    zeros = ScGPTTokenizer(vocab, var, n_bins=5, max_seq_len=10, include_zero_genes=True)
    ids, out = tokens_of(zeros, counts)
    assert ids[0] == [1, 3, 4, 5] and out.values[0].tolist() == [-2, 1, 0, 4]
    short = ScGPTTokenizer(vocab, var, n_bins=5, max_seq_len=3)
    first = tokens_of(short, counts)[0]
    assert [len(x) for x in first] == [3, 3] and first == tokens_of(short, counts)[0]
    assert first[1][0] == 1


def test_scgpt_hvg_mask_restricts_genes():
    vocab = {"<pad>": 0, "<cls>": 1, "A": 3, "B": 4, "C": 5}
    var = pd.DataFrame(index=["A", "B", "C"])
    tok = ScGPTTokenizer(vocab, var, n_bins=5, max_seq_len=10, gene_mask=np.array([True, False, True]))
    ids, _ = tokens_of(tok, np.array([[1, 1, 1]], dtype=np.float32))
    assert ids == [[1, 3, 5]] and tok.settings()["n_hvg"] == 2


@pytest.mark.parametrize(
    "bad, match",
    [(np.array([[1.5, 2.0]]), "non-integer"), (np.array([[-1.0, 2.0]]), "negative"), (np.array([[np.nan, 1]]), "NaN")],
)
def test_count_checks(bad, match):
    with pytest.raises(ExtractError, match=match):
        as_count_rows(sp.csr_matrix(bad))
