"""Planted gene sets: features that fire on the genes of known sets -> feature_enrichment finds exactly those sets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from jaxsae.analysis import AnalysisError, GeneSets, TokenCodes, feature_enrichment

N_GENES, ROWS_PER_GENE = 300, 6
N_PLANTED, N_NOISE, N_RANDOM_SETS = 4, 30, 100


def planted_codes(seed: int):
    """(codes, genes, gene_sets, planted {feature: set name}): every gene has ROWS_PER_GENE token rows; planted
    feature f fires on 10 genes of its set PLANTED_f (15 genes), noise features on 10 random genes each."""
    rng = np.random.default_rng(seed)
    symbols = [f"G{i}" for i in range(N_GENES)]
    sets = {f"RANDOM_{i}": set(rng.choice(symbols, rng.integers(15, 40), replace=False)) for i in range(N_RANDOM_SETS)}
    token_id = np.repeat(np.arange(N_GENES), ROWS_PER_GENE).astype(np.int32)
    n_features = N_PLANTED + N_NOISE
    dense = np.zeros((len(token_id), n_features), np.float32)
    planted = {}
    for f in range(n_features):
        if f < N_PLANTED:
            members = rng.choice(N_GENES, 15, replace=False)
            sets[f"PLANTED_{f}"] = {symbols[g] for g in members}
            planted[f] = f"PLANTED_{f}"
            fires_on = members[:10]
        else:
            fires_on = rng.choice(N_GENES, 10, replace=False)
        strength = rng.uniform(1.0, 2.0, size=10).astype(np.float32)  # distinct: a well-defined top-gene order
        for gene, value in zip(fires_on, strength):
            dense[token_id == gene, f] = value
    genes = pd.DataFrame({"gene_id": "", "symbol": symbols}, index=pd.Index(range(N_GENES), name="token_id"))
    codes = TokenCodes(codes=sp.csr_matrix(dense), cell_index=np.arange(len(token_id)) // 12, token_id=token_id,
                       store="planted", dictionary=None)
    return codes, genes, GeneSets(sets), planted


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_gene_sets_are_found_and_nothing_else(seed):
    codes, genes, gene_sets, planted = planted_codes(seed)
    table = feature_enrichment(codes, genes, gene_sets, top=20, max_fdr=0.05)
    found = table.groupby("feature")["gene_set"].first().to_dict()
    assert found == planted  # each planted feature's best set is its own; no noise feature has any set
    for feature, name in planted.items():
        row = table[(table.feature == feature) & (table.gene_set == name)].iloc[0]
        assert row["overlap"] == 10 and row["n_genes"] == 10 and row["universe"] == N_GENES
    assert table.attrs["fdr"] == "Benjamini-Hochberg, global"


def test_genes_without_symbols_are_refused_with_the_fix():
    codes, genes, gene_sets, _ = planted_codes(0)
    with pytest.raises(AnalysisError, match="jaxsae store add-genes"):
        feature_enrichment(codes, genes.assign(symbol=""), gene_sets)
