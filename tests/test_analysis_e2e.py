"""End to end on real extractions: `jaxsae analyze` on a tiny Geneformer, promoted genes for Geneformer and scGPT."""

import json
import os
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest
import torch

from extract.heads import promoted_genes, typical_activations
from extract.models import load_model
from extract.run import extract
from extract.testing import write_counts_h5ad, write_geneformer_folder, write_scgpt_folder
from jaxsae.analysis import encode_cells
from jaxsae.dictionary import load, save_dictionary
from jaxsae.sae.base import SAEConfig
from jaxsae.store import open_store

GENES = [f"ENSG{n:011d}" for n in range(1, 61)]
SYMBOLS = [f"G{n}" for n in range(60)]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def geneformer_run(tmp_path_factory):
    """(h5ad, model folder, extraction output, dictionary folder): 40 cells with a cell_type column, a 2-block
    Geneformer, layer 1 extracted, and a dictionary trained on its token store for 30 steps."""
    from jaxsae.train import train
    from jaxsae.train import load_config

    d = tmp_path_factory.mktemp("gf_analyze")
    h5ad = write_counts_h5ad(d / "cells.h5ad", 40, GENES, mean=1.0)
    adata = anndata.read_h5ad(h5ad)
    adata.obs["cell_type"] = pd.Categorical(np.array(["B", "T", "NK"])[np.arange(40) % 3])
    adata.write_h5ad(h5ad)
    model = write_geneformer_folder(d / "model", GENES, n_layers=2, max_positions=64,
                                    symbol_to_id={f"SYM{i}": g for i, g in enumerate(GENES)})
    extract(h5ad, model, d / "out", layers=[1], device="cpu", progress_bar=False)
    cfg = load_config(None, [f"data.store={d / 'out/layer_1/tokens'}", f"run_dir={d / 'run'}", "sae.d_model=32",
                             "sae.n_latents=64", "sae.k=4", "steps=30", "progress=false", "data.batch_rows=256"])
    result = train(cfg)
    return h5ad, model, d / "out", result.dictionaries[0]


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "jaxsae.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_jaxsae_analyze_writes_every_file(geneformer_run, tmp_path):
    h5ad, model, out, dictionary = geneformer_run
    gmt = tmp_path / "sets.gmt"  # two sets of the tiny model's symbols, one of them every gene
    gmt.write_text("EVEN\teven genes\t" + "\t".join(f"SYM{i}" for i in range(0, 60, 2)) + "\n"
                   "ALL\tevery gene\t" + "\t".join(f"SYM{i}" for i in range(60)) + "\n")
    done = run_cli("analyze", dictionary, "--store", out, "--obs", "cell_type", "--model", model, "--out",
                   tmp_path / "analysis", "--gmt", gmt, "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    files = {"cells.h5ad", "features.csv", "associations.csv", "best_features.csv", "top_genes.csv",
             "promoted_genes.csv", "heatmap.png", "enrichment.csv", "expression.csv"}
    assert {p.name for p in (tmp_path / "analysis").iterdir()} == files  # no half-written leftovers
    enrichment = pd.read_csv(tmp_path / "analysis" / "enrichment.csv")
    assert set(enrichment["gene_set"]) <= {"EVEN", "ALL"} and (enrichment["fdr"] <= 0.05).all()
    for label in ("B", "NK", "T"):
        assert any(line.startswith(f"{label}: feature ") and "AUROC" in line for line in done.stdout.splitlines())
    cells = anndata.read_h5ad(tmp_path / "analysis" / "cells.h5ad")
    assert cells.obsm["X_sae"].shape == (40, 64) and cells.uns["jaxsae"]["sae"]["model"] == "geneformer"
    features = pd.read_csv(tmp_path / "analysis" / "features.csv", index_col="feature")
    assert len(features) == 64 and {"freq_cells", "freq_tokens", "top_genes", "promoted_genes"} <= set(features)
    top = pd.read_csv(tmp_path / "analysis" / "top_genes.csv", keep_default_na=False)
    assert len(top) and top["symbol"].str.startswith("SYM").all() and top["gene_id"].isin(GENES).all()
    promoted = pd.read_csv(tmp_path / "analysis" / "promoted_genes.csv")
    assert (promoted["method"] == "logit_lens").all() and len(promoted) == 64 * 10
    expression = pd.read_csv(tmp_path / "analysis" / "expression.csv")
    assert set(expression["gene"]) <= set(anndata.read_h5ad(h5ad).var_names) and len(expression)
    assert expression.groupby("feature")["rank"].min().eq(1).all()
    best = pd.read_csv(tmp_path / "analysis" / "best_features.csv")
    assert best["label"].tolist() == ["B", "NK", "T"]


def test_jaxsae_analyze_refuses_a_numeric_column_before_any_work(geneformer_run, tmp_path, capsys):
    from jaxsae.cli import main

    _, _, out, dictionary = geneformer_run
    adata = anndata.read_h5ad(geneformer_run[0])
    adata.obs["depth"] = np.arange(40)
    adata.write_h5ad(tmp_path / "annotated.h5ad")
    code = main(["analyze", str(dictionary), "--store", str(out), "--adata", str(tmp_path / "annotated.h5ad"),
                 "--obs", "depth", "--out", str(tmp_path / "analysis")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: adata.obs['depth'] has dtype int64, not categorical")
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "analysis").exists()


def test_geneformer_logit_lens_scores_are_the_head_differences(geneformer_run):
    _, model_dir, out, dictionary_dir = geneformer_run
    store, dictionary = open_store(out / "layer_1" / "tokens"), load(dictionary_dir)
    table = promoted_genes(model_dir, dictionary, store, top=5, features=[3, 17])
    assert table["feature"].tolist() == [3] * 5 + [17] * 5 and table["rank"].tolist() == list(range(1, 6)) * 2
    model = load_model(model_dir)
    specials = {model.dictionaries.token_ids[t] for t in ("<pad>", "<mask>", "<cls>", "<eos>")}
    assert not set(table["token_id"]) & specials and table["symbol"].str.startswith("SYM").all()
    mean = torch.tensor(store.norm.mean, dtype=torch.float32)
    typical = typical_activations(dictionary, store)
    for f in (3, 17):
        with torch.inference_mode():
            head = model.module.cls.predictions
            direction = torch.tensor(dictionary.decoder[f])
            diff = (head(mean + float(typical[f]) * direction) - head(mean)).numpy()
        diff[sorted(specials)] = -np.inf
        rows = table[table["feature"] == f]
        assert rows["token_id"].tolist() == np.argsort(-diff, kind="stable")[:5].tolist()
        np.testing.assert_allclose(rows["score"], np.sort(diff)[::-1][:5], rtol=1e-4, atol=1e-5)


def test_scgpt_promoted_genes_find_planted_embedding_directions(tmp_path):
    h5ad = write_counts_h5ad(tmp_path / "cells.h5ad", 12, SYMBOLS)
    model_dir = write_scgpt_folder(tmp_path / "model", SYMBOLS, max_seq_len=16)
    out = extract(h5ad, model_dir, tmp_path / "out", layers=[1], device="cpu", progress_bar=False)
    embedding = load_model(model_dir).module.encoder.embedding.weight.detach().numpy()
    planted = [7, 30, 55]  # feature i's decoder row = 2 x the embedding of gene SYMBOLS[planted[i]]
    rng = np.random.default_rng(0)
    w_dec = rng.normal(size=(8, 32)).astype(np.float32)
    w_dec[: len(planted)] = 2 * embedding[planted]
    save_dictionary(tmp_path / "dictionary", sae=SAEConfig(architecture="relu", d_model=32, n_latents=8, k=4),
                    params={"W_enc": w_dec.T.copy(), "b_enc": np.zeros(8), "W_dec": w_dec, "b_dec": np.zeros(32)},
                    buffers={}, hparams={}, scale=1.0)
    table = promoted_genes(model_dir, tmp_path / "dictionary", out[1], top=3)
    first = table[table["rank"] == 1].set_index("feature")
    assert first.loc[[0, 1, 2], "symbol"].tolist() == [SYMBOLS[i] for i in planted]
    np.testing.assert_allclose(first.loc[[0, 1, 2], "score"], 1.0, rtol=1e-5)
    assert (table["method"] == "embedding_cosine").all() and not table["symbol"].str.startswith("<").any()

    # an output extracted before obs names were recorded still matches by content, and still encodes
    for path in [*(tmp_path / "out").glob("layer_*/*/manifest.json"), tmp_path / "out" / "extraction.json"]:
        content = json.loads(path.read_text())
        del content["source"]["adata"]["obs_names_sha256"]
        path.write_text(json.dumps(content))
    assert extract(h5ad, model_dir, tmp_path / "out", layers=[1], device="cpu", progress_bar=False) == out
    adata = encode_cells(tmp_path / "out", tmp_path / "dictionary", anndata.read_h5ad(h5ad), progress=False)
    assert adata.obsm["X_sae"].shape == (12, 8)
