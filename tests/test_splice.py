"""Spliced evaluation (extract.evaluate) and feature interventions (extract.intervene) on the demo models and a
tiny one: the identity recovers all of the loss, zero recovers none, a trained dictionary lands in between, a
planted feature moves its gene most, and a dictionary that does not belong to the model is refused."""

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

from extract.demo import prepare_demo
from extract.errors import ExtractError
from extract.evaluate import evaluate_dictionary
from extract.models import load_model
from extract.testing import write_counts_h5ad, write_geneformer_folder
from jaxsae.dictionary import save_dictionary
from jaxsae.errors import AnalysisError
from jaxsae.report.evaluation import evaluation_facts
from jaxsae.sae.base import SAEConfig

REPO = Path(__file__).resolve().parents[1]
GENES = [f"ENSG{n:011d}" for n in range(1, 41)]


@pytest.fixture(scope="module", params=["geneformer", "scgpt"])
def demo(request, tmp_path_factory):
    """(kind, adata path, model folder) of a demo model."""
    adata, model = prepare_demo(tmp_path_factory.mktemp(f"demo_{request.param}"), request.param)
    return request.param, adata, model


def relu_dictionary(path, W_enc, b_enc, W_dec, b_dec, source=None) -> str:
    """A ReLU dictionary folder with these raw-unit weights (W_enc [d, n], W_dec [n, d])."""
    d, n = W_enc.shape
    params = {k: np.asarray(v, np.float32) for k, v in
              {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}.items()}
    return save_dictionary(path, sae=SAEConfig(architecture="relu", d_model=d, n_latents=n), params=params,
                           buffers={}, hparams={}, scale=1.0, source=source)


def identity(path, d, source=None, decoder_scale=1.0) -> str:
    """relu(x) - relu(-x) = x: W_enc [I, -I], W_dec [I; -I] (times decoder_scale; 0 gives the zero dictionary)."""
    eye = np.eye(d)
    return relu_dictionary(path, np.concatenate([eye, -eye], 1), np.zeros(2 * d),
                           decoder_scale * np.concatenate([eye, -eye], 0), np.zeros(d), source)


def test_identity_recovers_all_the_loss_zero_recovers_none(demo, tmp_path):
    kind, adata, model_dir = demo
    d = load_model(model_dir).d_model
    same = identity(tmp_path / "identity", d)
    result = evaluate_dictionary(same, model_dir, adata, cells=6, layer=1, obs="bulk_labels")
    main = result["objective"]["main"]
    assert main == ("masked_gene_ce" if kind == "geneformer" else "gep_mse")
    if kind == "scgpt":
        assert set(result["losses"]) == {"gep_mse", "mvc_mse"}  # the demo scGPT has its MVC head
    loss = result["losses"][main]
    assert loss["zero_ablated"] > 1.1 * loss["clean"] and loss["mean_ablated"] > 1.1 * loss["clean"]
    for name, loss in result["losses"].items():  # scGPT's MVC reads the <cls> output, which moves far less
        assert loss["error_added"] == pytest.approx(loss["clean"], rel=1e-5)
        for ablation in ("zero", "mean"):
            assert result["fraction_loss_recovered"][name][ablation] == pytest.approx(1.0, abs=1e-5)
    assert result["splice_exact"]["ok"] and result["embedding"]["cosine_min"] == pytest.approx(1.0, abs=1e-5)
    assert result["embedding"]["pooling"] == "cls"
    assert result["knn"]["accuracy_clean"] == result["knn"]["accuracy_spliced"]
    assert result["cells"]["n_used"] == 6 and "evaluated cells" in result["mean_ablation"]["source"]
    assert result["cells"]["in_dictionary_store"] is None  # built in memory: no store recorded

    zero = evaluate_dictionary(identity(tmp_path / "zero", d, decoder_scale=0.0), model_dir, adata, cells=6, layer=1)
    assert zero["losses"][main]["spliced"] == pytest.approx(zero["losses"][main]["zero_ablated"], rel=1e-6)
    assert zero["fraction_loss_recovered"][main]["zero"] == pytest.approx(0.0, abs=1e-6)
    assert zero["losses"][main]["clean"] == result["losses"][main]["clean"]  # same seeded cells and masks


def test_trained_dictionary_recovers_part_of_the_loss(pbmc_cells, tmp_path):
    """The demo Geneformer, layer 1 of 48 demo cells extracted, a TopK dictionary trained 40 steps on it."""
    from extract.run import extract
    from jaxsae.train import load_config, train

    adata_path, model_dir = prepare_demo(tmp_path / "cache", "geneformer")
    cells = tmp_path / "cells.h5ad"
    pbmc_cells[:48].copy().write_h5ad(cells)
    store = extract(cells, model_dir, tmp_path / "out", layers=[1], progress_bar=False)[1]
    cfg = load_config(None, [f"data.store={store}", f"run_dir={tmp_path / 'run'}", "sae.d_model=128",
                             "sae.n_latents=256", "sae.k=8", "steps=40", "progress=false", "data.batch_rows=512"])
    dictionary = train(cfg).dictionaries[0]
    result = evaluate_dictionary(dictionary, model_dir, cells, cells=8)
    for ablation in ("zero", "mean"):
        assert 0.0 < result["fraction_loss_recovered"]["masked_gene_ce"][ablation] < 1.0
    assert result["splice_exact"]["ok"] and result["layer"] == 1
    assert result["cells"]["in_dictionary_store"] is True and "training store" in result["mean_ablation"]["source"]
    assert 0.0 < result["embedding"]["cosine_mean"] < 1.0
    assert "in_pretraining_heldout" in result["cells"]  # a demo model: its held-out split is reported


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(adata path with obs cell_type, 2-block Geneformer folder with d_model 16, its model)."""
    d = tmp_path_factory.mktemp("tiny")
    h5ad = write_counts_h5ad(d / "cells.h5ad", 24, GENES, mean=2.0)
    adata = anndata.read_h5ad(h5ad)
    adata.obs["cell_type"] = pd.Categorical(np.array(["A", "B"])[np.arange(24) % 2])
    adata.write_h5ad(h5ad)
    folder = write_geneformer_folder(d / "model", GENES, n_layers=2, d_model=16, n_heads=2, d_ff=32, max_positions=64)
    return h5ad, folder, load_model(folder)


def test_ablating_a_planted_feature_moves_its_gene_most(tiny, tmp_path):
    """Last block; feature 2d fires at 1 everywhere (bias) and decodes along the direction that raises gene g's
    log-probability at the masked positions of the evaluated cells (the gradient there, small): ablating it
    lowers g most, doubling it raises g most."""
    from extract.splice import batches, sample_cells
    from jaxsae.analysis import intervene

    h5ad, folder, model = tiny
    gene_token = model.dictionaries.token_ids[GENES[7]]
    layer, d = model.n_layers - 1, model.d_model
    direction = torch.zeros(d)
    for batch in batches(model, sample_cells(model, h5ad, 12, 0, {}), 0, 16, all_tokens=False):
        with model.capture([layer]) as captured:
            model.module.bert(input_ids=torch.where(batch.masked, model.dictionaries.token_ids["<mask>"],
                                                    batch.ids), attention_mask=batch.attention.long())
        hidden = captured[layer].detach()[batch.masked].requires_grad_(True)
        torch.log_softmax(model.module.cls(hidden), -1)[:, gene_token].sum().backward()
        direction += hidden.grad.sum(0)
    direction = (0.05 * direction / direction.norm()).numpy()
    eye = np.eye(d)
    planted = relu_dictionary(tmp_path / "planted", np.concatenate([eye, -eye, np.zeros((d, 1))], 1),
                              np.r_[np.zeros(2 * d), 1.0], np.concatenate([eye, -eye, direction[None]], 0),
                              np.zeros(d))
    down = intervene(folder, planted, h5ad, 2 * d, 0.0, cells=12, layer=layer, obs="cell_type", top=3)
    for group in ("all", "A", "B"):
        rows = down[(down["group"] == group) & (down["direction"] == "down")]
        assert rows.iloc[0]["token_id"] == gene_token and rows.iloc[0]["delta"] < 0, rows
    assert down.attrs["firing_fraction"] == 1.0
    up = intervene(folder, planted, h5ad, [2 * d], 2.0, cells=12, layer=layer, top=3)
    assert up[up["direction"] == "up"].iloc[0]["token_id"] == gene_token


def test_a_dictionary_that_does_not_belong_to_the_model_is_refused(tiny, tmp_path):
    h5ad, folder, model = tiny
    d = model.d_model
    source = {"model": "geneformer", "model_dir": "elsewhere/model", "checkpoint_sha256": model.checkpoint_hash,
              "layer": 1, "kind": "tokens", "d_model": d}
    cases = [
        ({**source, "kind": "cell_mean"}, d, {}, ["cell_mean store", "tokens store"]),
        ({**source, "checkpoint_sha256": "ab" * 32}, d, {}, ["abababababab", model.checkpoint_hash[:12],
                                                            "pass the model folder"]),
        (source, d, {"layer": 0}, ["trained on layer 1", "layer 0 was asked", "pass layer=1"]),
        (source, d + 8, {}, [f"d_model={d + 8}", f"d_model={d}", "pass the model"]),
        (None, d, {}, ["records no source layer", "pass layer="]),
    ]
    for i, (recorded, width, options, words) in enumerate(cases):
        with pytest.raises(ExtractError) as err:
            evaluate_dictionary(identity(tmp_path / f"d{i}", width, recorded), folder, h5ad, cells=4, **options)
        assert all(w in str(err.value) for w in words), (words, str(err.value))
    (tmp_path / "not_a_model").mkdir()
    with pytest.raises(ExtractError, match=r"neither a Geneformer.*nor an scGPT.*elsewhere/model.*pass the model"):
        evaluate_dictionary(identity(tmp_path / "d_ok", d, source), tmp_path / "not_a_model", h5ad, cells=4)


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-m", "jaxsae.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_eval_and_intervene_verbs(tiny, tmp_path):
    h5ad, folder, model = tiny
    source = {"model": "geneformer", "checkpoint_sha256": model.checkpoint_hash, "layer": 1, "kind": "tokens"}
    same = identity(tmp_path / "identity", model.d_model, source)
    done = run_cli("eval", same, "--model", folder, "--adata", h5ad, "--cells", 12, "--obs", "cell_type",
                   "--out", tmp_path / "eval.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["fraction_loss_recovered"]["masked_gene_ce"]["zero"] == pytest.approx(1.0, abs=1e-5)
    assert "masked_gene_ce" in done.stdout and "5-NN cell_type accuracy" in done.stdout
    facts = evaluation_facts(tmp_path / "eval.json", model.d_model)  # what `jaxsae report --evaluation` shows
    assert facts["masked_gene_ce: fraction of loss recovered (zero / mean ablation)"].startswith("1.000 / ")
    assert facts["5-NN cell_type accuracy (clean / spliced)"] == \
        f"{result['knn']['accuracy_clean']:.3f} / {result['knn']['accuracy_spliced']:.3f}"
    with pytest.raises(AnalysisError, match=f"reads d_model={model.d_model}, this dictionary d_model=7"):
        evaluation_facts(result, 7)
    done = run_cli("intervene", same, "--model", folder, "--adata", h5ad, "--feature", 3, "--cells", 12,
                   "--top", 4, "--out", tmp_path / "moved.csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "all up:" in done.stdout and "all down:" in done.stdout
    assert len(pd.read_csv(tmp_path / "moved.csv")) == 8
    refused = run_cli("eval", same, "--model", folder, "--adata", h5ad, "--layer", 0, cwd=tmp_path)
    assert refused.returncode == 2 and "trained on layer 1" in refused.stderr
