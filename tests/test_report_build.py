"""What `jaxsae report` reports on: run folders, members, stand-alone dictionaries, its errors, chosen cards."""

import shutil

import numpy as np
import pandas as pd
import pytest

from jaxsae.cli import main
from jaxsae.data.synthetic import SynthConfig, synthesize
from jaxsae.dictionary import DictionaryError
from jaxsae.report.build import best_label_per_feature, cell_umap, choose_cards
from jaxsae.report.source import resolve, summary
from jaxsae.train import load_config
from jaxsae.train.loop import train


@pytest.fixture(scope="module")
def two_member_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    store = synthesize(d / "store", SynthConfig(rows=4_096, d_model=16, n_features=32, active_per_row=3, seed=1))
    cfg = load_config(None, [f"data.store={store}", f"run_dir={d / 'run'}", "progress=false", "sae.d_model=16",
                             "sae.n_latents=32", "sae.k=4", "steps=40", "log_every=10", "data.batch_rows=256",
                             "mesh.data=1", 'members=[{"k": 4}, {"k": 2}]'])
    return train(cfg).run_dir


def test_a_run_folder_names_its_members_and_their_history(two_member_run, tmp_path):
    first, second = resolve(two_member_run), resolve(two_member_run, member=1)
    assert (first.member, second.member, first.n_members) == (0, 1, 2)
    assert first.dictionary_dir.name == "member_000" and second.dictionary.hparams["k"] == 2
    assert [r["step"] for r in second.records] == [10, 20, 30, 40] and {r["member"] for r in second.records} == {1}
    assert second.final["fvu"] == second.records[-1]["fvu"]
    assert summary(second)["member"].startswith("1 of 2")
    assert resolve(second.dictionary_dir).member == 1  # a member folder inside the run: same history

    alone = tmp_path / "alone"
    shutil.copytree(second.dictionary_dir, alone)  # a dictionary handed around without its run folder
    standalone = resolve(alone)
    assert standalone.run_dir is None and standalone.records == [] and standalone.final["fvu"] == second.final["fvu"]
    assert summary(standalone)["run folder"] == "(stand-alone dictionary)"


def test_errors_say_what_to_do(two_member_run, tmp_path, capsys):
    with pytest.raises(DictionaryError, match=r"this run has 2 member\(s\) \(member_000, member_001\): pick one "
                                              r"with --member 0\.\.1"):
        resolve(two_member_run, member=2)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(two_member_run, unfinished)
    (unfinished / "run.json").unlink()
    for path in (unfinished, unfinished / "dictionaries" / "member_000"):
        with pytest.raises(DictionaryError, match=r"has not finished training \(no run.json\).*jaxsae train "
                                                  r".*config.json. and run .jaxsae report. again"):
            resolve(path)
    code = main(["report", str(unfinished), "--store", str(tmp_path), "--adata", "x.h5ad"])
    assert code == 2 and capsys.readouterr().err.startswith(f"error: {unfinished}: this run has not finished")
    with pytest.raises(DictionaryError, match="neither a run folder"):
        resolve(tmp_path)


def test_cards_go_to_the_best_aurocs_and_the_most_frequent_live_features():
    table = pd.DataFrame({"freq_tokens": [0.0, 0.5, 0.01, 0.02, 0.3, 0.001, 0.2],
                          "auroc": [0.99, 0.6, 0.95, 0.9, np.nan, 0.7, 0.5]}, index=pd.RangeIndex(7, name="feature"))
    assert choose_cards(table, 6) == [2, 3, 5, 1, 6, 4]  # feature 0 never fires; 1 in 6 cards by frequency
    assert choose_cards(table, 3) == [2, 3, 1]
    assert choose_cards(table.drop(columns="auroc"), 2) == [1, 4]  # no labels: the most frequent
    assert choose_cards(table, 0) == []

    assoc = pd.DataFrame({"feature": [0, 1, 0, 1], "label": ["B", "B", "T", "T"], "auroc": [0.7, 0.5, 0.9, 0.5],
                          "mean_diff": [0.1, 0.0, 0.3, 0.2]})
    best = best_label_per_feature(assoc)
    assert best["label"].tolist() == ["T", "T"] and best["auroc"].tolist() == [0.9, 0.5]


@pytest.mark.slow  # numba compiles UMAP's kernels on first use: ~20-50 s
def test_a_umap_is_computed_when_the_cells_have_none():
    import anndata
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1], 60)
    counts = rng.poisson(np.where(groups[:, None] == 0, [5.0] * 10 + [0.2] * 10, [0.2] * 10 + [5.0] * 10))
    cells = anndata.AnnData(X=sp.csr_matrix(counts.astype(np.float32)))
    umap = cell_umap(cells)
    assert umap.shape == (120, 2) and "X_umap" not in cells.obsm  # computed on a copy
    centres = np.array([umap[groups == g].mean(0) for g in (0, 1)])
    spread = max(np.linalg.norm(umap[groups == g] - centres[g], axis=1).mean() for g in (0, 1))
    assert np.linalg.norm(centres[0] - centres[1]) > 2 * spread  # the two kinds of cells land apart
    cells.obsm["X_umap"] = np.zeros((120, 2))
    assert np.array_equal(cell_umap(cells), np.zeros((120, 2)))


def test_summary_shows_the_final_metrics(two_member_run):
    items = summary(resolve(two_member_run))
    assert {"final fvu", "final l0", "final dead_fraction", "architecture", "finished"} <= set(items)
    assert items["latents x d_model"] == "32 x 16" and items["k"] == 4


def test_enrichment_of_top_genes_reaches_the_table_and_the_cards(tmp_path):
    import scipy.sparse as sp

    from jaxsae.analysis import TokenCodes, feature_enrichment, top_genes
    from jaxsae.analysis.enrichment import read_gmt, resolve_gene_sets
    from jaxsae.report.build import _card, _top_sets_text

    symbols = [f"G{i}" for i in range(200)]
    genes = pd.DataFrame({"gene_id": [f"ENSG{i}" for i in range(200)] + [""], "symbol": symbols + ["<cls>"]},
                         index=pd.Index(range(201), name="token_id"))
    (tmp_path / "sets.gmt").write_text("PROGRAM_A\tan <i>escaped</i> program\t" + "\t".join(symbols[:8]) + "\n"
                                       "OTHER\tsomething else\t" + "\t".join(symbols[100:140]) + "\n")
    sets, required = resolve_gene_sets(tmp_path / "sets.gmt")
    assert resolve_gene_sets(None) == (None, False) and required and len(sets) == 2
    assert isinstance(read_gmt(tmp_path / "sets.gmt"), type(sets))
    # 200 gene tokens x 5 rows; feature 0 fires on G0-G5 and G50-G53, feature 1 on G60-G69
    token_id = np.repeat(np.arange(200), 5).astype(np.int32)
    dense = np.zeros((1000, 2), np.float32)
    dense[np.isin(token_id, [*range(6), *range(50, 54)]), 0] = 1.0
    dense[np.isin(token_id, range(60, 70)), 1] = 1.0
    codes = TokenCodes(codes=sp.csr_matrix(dense), cell_index=np.arange(1000) // 10, token_id=token_id,
                       store="in-test", dictionary=None)
    top = top_genes(codes, genes, top=20)
    enrichment = feature_enrichment(codes, genes, sets, top=20, max_fdr=0.05)
    assert enrichment["feature"].unique().tolist() == [0] and enrichment["gene_set"].iloc[0] == "PROGRAM_A"
    assert enrichment["overlap"].iloc[0] == 6 and enrichment["universe"].iloc[0] == 200  # <cls> is no gene
    text = _top_sets_text(enrichment)
    assert text.index.tolist() == [0] and text[0].startswith("an <i>escaped</i> program (FDR ")

    table = pd.DataFrame({"freq_cells": [0.5, 0.1], "freq_tokens": [0.01, 0.02], "mean_activation": [1.0, 2.0],
                          "max_activation": [3.0, 4.0], "top_genes": ["G0; G1", "G60"]}, index=[0, 1])
    card = _card(0, table, np.array([0.0, 1.0, 2.0]), np.zeros((3, 2)), top, enrichment, None)
    assert card["title"] == "Feature 0" and set(card["images"]) == {"activation on the UMAP", "activation over cells"}
    sets_table = card["tables"]["gene sets (over-representation of the top genes)"]
    assert sets_table["gene_set"].tolist() == ["PROGRAM_A"] and sets_table["genes"].iloc[0].startswith("G0")
