"""Cells x features: a planted signal is recovered end to end; aggregation is exact; wrong cells are refused."""

import os
import shutil

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from jaxsae.analysis import (AnalysisError, aggregate_cells, associate, best_features, encode_cells, encode_store,
                             feature_table, features_to_obs, load_genes, top_genes)
from jaxsae.analysis.cells import resolve_store
from jaxsae.dictionary import save_dictionary
from jaxsae.sae.base import SAEConfig
from jaxsae.store import StoreWriter
from jaxsae.store.genes import write_genes
from jaxsae.store.manifest import obs_names_sha256, sha256_file

N_CELLS, N_TYPES, N_GENES, ROWS_PER_CELL, D = 250, 5, 20, 8, 32
FIRST_GENE_TOKEN = 4  # tokens 0..3 are specials, as in Geneformer V2
PLANTED_FEATURE = [7, 2, 10, 5, 0]  # type t -> the feature that fires on (type t, gene token 4 + t) rows only
N_LATENTS = 12
TYPES = [f"type{t}" for t in range(N_TYPES)]


def planted_case(folder):
    """(h5ad path, store path, dictionary path, cell types) of a synthetic extraction with a planted signal.

    Row of cell c (type t) at gene token g: x = e_t + e_{5 + g - 4} + noise on dims 25..31. Planted feature
    PLANTED_FEATURE[t] = relu(2 (x_t + x_{5 + t}) - 3): 1 on rows of type t at gene token 4 + t, else 0. The
    other features read the noise dims only (no type or gene information).
    """
    rng = np.random.default_rng(0)
    cell_type = np.repeat(np.arange(N_TYPES), N_CELLS // N_TYPES)
    rng.shuffle(cell_type)
    counts = rng.poisson(1.0, size=(N_CELLS, 30)).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(np.array(TYPES)[cell_type], categories=TYPES)},
                       index=[f"cell{i}" for i in range(N_CELLS)])
    h5ad = folder / "cells.h5ad"
    anndata.AnnData(X=sp.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(30)])) \
        .write_h5ad(h5ad)
    cell_order = rng.permutation(N_CELLS)  # rows of a cell are contiguous, cells in any order
    cell_index = np.repeat(cell_order, ROWS_PER_CELL)
    genes = rng.integers(0, N_GENES, size=len(cell_index))
    genes[::ROWS_PER_CELL] = cell_type[cell_order]  # every cell has a row of its type's planted gene
    acts = np.zeros((len(cell_index), D), np.float32)
    acts[np.arange(len(acts)), cell_type[cell_index]] = 1.0
    acts[np.arange(len(acts)), 5 + genes] = 1.0
    acts[:, 25:] = rng.normal(size=(len(acts), D - 25))
    source = {"model": "geneformer", "layer": 3, "kind": "tokens", "checkpoint_sha256": "0" * 64,
              "adata": {"path": str(h5ad), "sha256": sha256_file(h5ad), "n_cells": N_CELLS,
                        "obs_names_sha256": obs_names_sha256(obs.index)}}
    store = folder / "out" / "layer_3" / "tokens"
    writer = StoreWriter.create(store, d_model=D, chunk_rows=256, shard_rows=1024, source=source)
    writer.append(acts, cell_index=cell_index, token_id=FIRST_GENE_TOKEN + genes,
                  position=np.tile(np.arange(1, ROWS_PER_CELL + 1), N_CELLS))
    writer.commit()
    writer.close()
    write_genes(store, pd.DataFrame({"token_id": FIRST_GENE_TOKEN + np.arange(N_GENES),
                                     "gene_id": [f"ENSG{j:011d}" for j in range(N_GENES)],
                                     "symbol": [f"GENE{j}" for j in range(N_GENES)]}))
    w_enc = np.zeros((D, N_LATENTS), np.float32)
    b_enc = np.zeros(N_LATENTS, np.float32)
    for t, f in enumerate(PLANTED_FEATURE):
        w_enc[t, f] = w_enc[5 + t, f] = 2.0
        b_enc[f] = -3.0
    noise = [f for f in range(N_LATENTS) if f not in PLANTED_FEATURE]
    w_enc[25:, noise] = rng.normal(size=(D - 25, len(noise)))
    w_dec = w_enc.T / np.linalg.norm(w_enc.T, axis=1, keepdims=True)
    dictionary = save_dictionary(folder / "dictionary", sae=SAEConfig(architecture="relu", d_model=D,
                                                                      n_latents=N_LATENTS, k=4),
                                 params={"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": np.zeros(D)},
                                 buffers={}, hparams={}, scale=1.0)
    return h5ad, store, dictionary, np.array(TYPES)[cell_type]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return planted_case(tmp_path_factory.mktemp("planted"))


def test_planted_features_cell_types_and_genes_are_recovered(planted):
    h5ad, store, dictionary, cell_type = planted
    adata = encode_cells(store.parent.parent, dictionary, progress=False)  # the extraction output folder
    assert adata.obsm["X_sae"].shape == (N_CELLS, N_LATENTS) and sp.issparse(adata.obsm["X_sae"])
    provenance = adata.uns["jaxsae"]["sae"]
    assert provenance["store"] == str(store.resolve()) and provenance["agg"] == "mean"
    assert provenance["layer"] == 3 and provenance["architecture"] == "relu" and provenance["n_latents"] == N_LATENTS
    assoc = associate(adata, "cell_type")
    best = best_features(assoc)
    assert best["label"].tolist() == TYPES and best["feature"].tolist() == PLANTED_FEATURE
    assert np.allclose(best["auroc"], 1.0) and np.allclose(best["specificity"], 1.0)
    noise = assoc[~assoc["feature"].isin(PLANTED_FEATURE)]
    assert noise["auroc"].between(0.3, 0.7).all() and noise["specificity"].between(0.1, 0.3).all()
    pairs = set(zip(PLANTED_FEATURE, TYPES))
    planted_pair = np.array([(f, label) in pairs for f, label in zip(assoc["feature"], assoc["label"])])
    assert np.allclose(assoc.loc[assoc["feature"].isin(PLANTED_FEATURE) & ~planted_pair, "mean_in"], 0.0)

    codes = encode_store(store, dictionary, progress=False)
    genes = top_genes(codes, load_genes(store), top=3)
    for t, f in enumerate(PLANTED_FEATURE):
        rows = genes[genes["feature"] == f]
        assert rows["symbol"].tolist() == [f"GENE{t}"] and rows["token_id"].tolist() == [FIRST_GENE_TOKEN + t]
        row = rows.iloc[0]  # fires on exactly the gene's rows that are in type-t cells
        token_rows = codes.token_id == FIRST_GENE_TOKEN + t
        in_type = (cell_type[codes.cell_index] == TYPES[t]) & token_rows
        assert row["n_rows"] == token_rows.sum() and row["n_fired"] == in_type.sum()
        assert row["mean_activation"] == pytest.approx(in_type.sum() / token_rows.sum(), rel=1e-5)

    table = feature_table(adata, codes=codes, genes=load_genes(store))
    for t, f in enumerate(PLANTED_FEATURE):
        assert table.loc[f, "top_genes"] == f"GENE{t}"
        top_cells = table.loc[f, "top_cells"].split("; ")
        assert len(top_cells) == 5 and set(adata.obs.loc[top_cells, "cell_type"]) == {TYPES[t]}
        assert table.loc[f, "freq_cells"] == pytest.approx(1 / N_TYPES)
    assert table.loc[PLANTED_FEATURE, "freq_tokens"].sum() == pytest.approx(
        sum(((cell_type[codes.cell_index] == TYPES[t]) & (codes.token_id == FIRST_GENE_TOKEN + t)).mean()
            for t in range(N_TYPES)))


def test_encode_cells_writes_into_the_given_anndata_with_each_aggregation(planted):
    h5ad, store, dictionary, cell_type = planted
    adata = anndata.read_h5ad(h5ad)
    for agg in ("max", "frac"):
        assert encode_cells(store, dictionary, adata, agg=agg, name=f"sae_{agg}", progress=False) is adata
    planted_in_own_type = adata.obsm["X_sae_max"][:, PLANTED_FEATURE].toarray()[cell_type == TYPES[1], 1]
    assert np.allclose(planted_in_own_type, 1.0)  # max over rows: the one planted row
    frac = adata.obsm["X_sae_frac"][:, PLANTED_FEATURE].toarray()[cell_type == TYPES[1], 1]
    assert np.all(frac >= 1 / ROWS_PER_CELL) and np.all(frac <= 1)
    assert adata.uns["jaxsae"]["sae_frac"]["agg"] == "frac" and "sae_max" in adata.uns["jaxsae"]


def _reference(codes, cell_index, n_cells, agg):
    out = np.zeros((n_cells, codes.shape[1]), np.float32)
    for cell in range(n_cells):
        rows = codes[cell_index == cell]
        if len(rows):
            out[cell] = {"mean": rows.mean(0), "max": rows.max(0), "frac": (rows > 0).mean(0)}[agg]
    return out


@pytest.mark.parametrize("agg", ["mean", "max", "frac"])
def test_aggregate_cells_matches_a_per_cell_loop(agg):
    rng = np.random.default_rng(1)
    dense = rng.exponential(size=(400, 30)).astype(np.float32) * (rng.random((400, 30)) < 0.2)
    cell_index = rng.integers(0, 50, size=400)
    cell_index[cell_index == 7] = 8  # cell 7 has no rows (skipped by the extraction): all zeros
    got = aggregate_cells(sp.csr_matrix(dense), cell_index, 55, agg)
    assert sp.isspmatrix_csr(got) and got.dtype == np.float32 and got.shape == (55, 30)
    np.testing.assert_allclose(got.toarray(), _reference(dense, cell_index, 55, agg), rtol=1e-6)
    one_row_per_cell = rng.permutation(55)[:40]  # a cell-level store passes through, whatever agg says
    cell_level = aggregate_cells(sp.csr_matrix(dense[:40]), one_row_per_cell, 55, agg).toarray()
    np.testing.assert_array_equal(cell_level[one_row_per_cell], dense[:40])


def test_aggregate_cells_refuses_rows_of_cells_the_anndata_lacks():
    with pytest.raises(AnalysisError, match=r"name AnnData rows 0\.\.9, but the AnnData has 5 cells"):
        aggregate_cells(sp.csr_matrix(np.ones((10, 3))), np.arange(10), 5)
    with pytest.raises(AnalysisError, match="agg='median'; expected one of mean, max, frac"):
        aggregate_cells(sp.csr_matrix(np.ones((10, 3))), np.arange(10), 10, "median")


def test_cells_of_another_anndata_are_refused_before_encoding(planted, tmp_path):
    h5ad, store, dictionary, _ = planted
    adata = anndata.read_h5ad(h5ad)
    with pytest.raises(AnalysisError, match=r"has 249 cells but the store was extracted from 250 cells"):
        encode_cells(store, dictionary, adata[1:].copy(), progress=False)
    shuffled = adata[np.random.default_rng(0).permutation(N_CELLS)].copy()
    with pytest.raises(AnalysisError, match="other obs_names \\(or another order\\)"):
        encode_cells(store, dictionary, shuffled, progress=False)
    shuffled.write_h5ad(tmp_path / "shuffled.h5ad")
    with pytest.raises(AnalysisError, match="other obs_names"):
        encode_cells(store, dictionary, tmp_path / "shuffled.h5ad", progress=False)
    annotated = adata.copy()  # the same cells saved again with a new column: other bytes, accepted
    annotated.obs["score"] = 1.0
    annotated.write_h5ad(tmp_path / "annotated.h5ad")
    out = encode_cells(store, dictionary, tmp_path / "annotated.h5ad", progress=False)
    assert "score" in out.obs and out.obsm["X_sae"].shape == (N_CELLS, N_LATENTS)
    assert "X_sae" not in adata.obsm  # each refusal came before anything was written


def test_a_moved_or_changed_source_anndata_needs_adata(tmp_path):
    h5ad, store, dictionary, _ = planted_case(tmp_path)
    moved = tmp_path / "moved.h5ad"
    shutil.move(h5ad, moved)
    with pytest.raises(AnalysisError, match=r"cells\.h5ad, the AnnData store .* was extracted from, no longer "
                                            r"exists; pass adata="):
        encode_cells(store, dictionary, progress=False)
    assert encode_cells(store, dictionary, moved, progress=False).n_obs == N_CELLS
    adata = anndata.read_h5ad(moved)
    adata.obs["extra"] = 1
    adata.write_h5ad(h5ad)
    with pytest.raises(AnalysisError, match=r"changed since store .* was extracted from it .*pass adata="):
        encode_cells(store, dictionary, progress=False)


def test_store_folders_resolve_to_one_token_store_or_list_the_candidates(planted, tmp_path):
    _, store, _, _ = planted
    assert resolve_store(store.parent) == store and resolve_store(store.parent.parent) == store
    for layer in (1, 2):
        shutil.copytree(store, tmp_path / f"layer_{layer}" / "tokens")
    with pytest.raises(AnalysisError, match=r"holds 2 token stores.*layer_1/tokens, .*layer_2/tokens"):
        resolve_store(tmp_path)
    with pytest.raises(AnalysisError, match="holds no activation store"):
        resolve_store(tmp_path / "layer_1" / "tokens" / "acts")
    with pytest.raises(AnalysisError, match="does not exist"):
        resolve_store(tmp_path / "nope")


def test_features_to_obs_colours_a_umap(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    rng = np.random.default_rng(0)
    adata.obsm["X_sae"] = sp.random(adata.n_obs, 16, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    columns = features_to_obs(adata, [3, 11])
    assert columns == ["sae_3", "sae_11"]
    np.testing.assert_array_equal(adata.obs["sae_11"].to_numpy(), adata.obsm["X_sae"][:, 11].toarray().ravel())
    axes = sc.pl.umap(adata, color=columns, show=False)
    figure = axes[0].figure
    figure.savefig(tmp_path / "umap.png")
    assert [ax.get_title() for ax in axes] == columns and os.path.getsize(tmp_path / "umap.png") > 10_000
    with pytest.raises(AnalysisError, match=r"features \[16\] are out of range; obsm\['X_sae'\] has features 0\.\.15"):
        features_to_obs(adata, [16])
    with pytest.raises(AnalysisError, match=r"adata.obsm has no 'X_other'.*encode_cells\(store, dictionary, adata, "
                                            r"name='other'\)"):
        features_to_obs(adata, [1], name="other")
