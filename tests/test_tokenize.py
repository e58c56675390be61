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


def test_bin_values_hand_computed():
    # non-zero [1,2,3,4,10]; 4 edges at quantiles 0,1/3,2/3,1 = [1, 2.333, 3.667, 10]
    assert bin_values(np.array([0, 1, 2, 3, 4, 10.0]), 5).tolist() == [0, 1, 1, 2, 3, 4]
    assert bin_values(np.zeros(3), 5).tolist() == [0, 0, 0]
    binned = bin_values(np.random.default_rng(0).poisson(3, 200).astype(float), 51)
    assert binned.min() >= 0 and binned.max() == 50


def test_scgpt_tokens_values_and_truncation():
    vocab = {"<pad>": 0, "<cls>": 1, "<eoc>": 2, "A": 3, "B": 4, "C": 5}
    var = pd.DataFrame(index=["A", "B", "X", "C"])
    counts = np.array([[1, 0, 7, 3], [2, 2, 0, 2]], dtype=np.float32)
    tok = ScGPTTokenizer(vocab, var, n_bins=5, max_seq_len=10, pad_value=-2)
    ids, out = tokens_of(tok, counts)
    # cell 0: non-zero model genes A(1), C(3); edges [1, 1.667, 2.333, 3] -> bins 1, 4; X dropped
    assert ids[0] == [1, 3, 5] and out.values[0].tolist() == [-2, 1, 4]
    assert ids[1] == [1, 3, 4, 5] and out.values[1].tolist() == [-2, 4, 4, 4]
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
