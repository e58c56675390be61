"""The demo: pbmc68k_reduced as raw counts + the committed pretrained demo models, cached, loadable, extractable."""

import json

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

from extract.demo import MARKER, prepare_demo
from extract.errors import ExtractError
from extract.models import load_model
from extract.run import extract
from extract.tokenize import as_count_rows
from jaxsae.store import open_store


def test_demo_counts_are_the_raw_counts_of_pbmc68k_reduced(tmp_path):
    adata_path, _ = prepare_demo(tmp_path / "cache")
    adata = anndata.read_h5ad(adata_path)
    assert adata.shape == (700, 765) and adata.obs["bulk_labels"].nunique() == 10
    x = adata.X.toarray()
    assert np.array_equal(x, np.round(x)) and x.min() == 0
    reduced = sc.datasets.pbmc68k_reduced()
    expected_log = np.log1p(x / reduced.obs["n_counts"].to_numpy()[:, None] * 1e4)
    np.testing.assert_allclose(expected_log, reduced.raw.X.toarray(), atol=1e-3)
    ids = adata.var["ensembl_id"]
    assert ids.is_unique and ids.str.match(r"^ENSG99\d{9}$").all()


@pytest.mark.parametrize("model_kind", ["geneformer", "scgpt"])
def test_demo_model_cache_and_extraction(tmp_path, model_kind):
    adata_path, model_dir = prepare_demo(tmp_path / "cache", model_kind)
    adata = anndata.read_h5ad(adata_path)
    assert "bulk_labels" in adata.obs
    done = json.loads((model_dir.parent / MARKER).read_text())
    assert done["settings"]["model_kind"] == model_kind and done["pretraining"]["steps"] > 0

    model = load_model(model_dir)  # the public loader a downloaded checkpoint goes through
    assert model.kind == model_kind and model.n_layers == 4 and model.d_model == 128
    rows = as_count_rows(adata.X[:5])
    if model_kind == "geneformer":
        assert model.special_tokens and model.model_input_size == 411  # the longest cell + <cls> + <eos>
        by_id = model.make_tokenizer(adata.var)
        by_symbol = model.make_tokenizer(pd.DataFrame(index=adata.var_names))  # through the demo's name dictionary
        assert [t.tolist() for t in by_id(rows).input_ids] == [t.tolist() for t in by_symbol(rows).input_ids]
    else:
        assert model.n_bins == 51 and model.max_seq_len == 410

    weights = model_dir / ("model.safetensors" if model_kind == "geneformer" else "best_model.pt")
    stamp = weights.stat().st_mtime_ns
    assert prepare_demo(tmp_path / "cache", model_kind) == (adata_path, model_dir)  # reused
    assert weights.stat().st_mtime_ns == stamp
    (model_dir.parent / MARKER).unlink()  # a half-written cache is rebuilt
    assert prepare_demo(tmp_path / "cache", model_kind) == (adata_path, model_dir)
    assert (model_dir.parent / MARKER).is_file()
    done["settings"]["weights_sha256"] = "0" * 64  # a cache of other weights is rebuilt
    (model_dir.parent / MARKER).write_text(json.dumps(done))
    assert prepare_demo(tmp_path / "cache", model_kind) == (adata_path, model_dir)
    assert json.loads((model_dir.parent / MARKER).read_text())["settings"]["weights_sha256"] != "0" * 64

    stores = extract(adata_path, model_dir, tmp_path / "out", layers=[1], device="cpu", progress_bar=False,
                     batch_size=32)
    tokens = open_store(stores[1])
    x = adata.X.toarray()
    assert tokens.n_rows == int((x > 0).sum()) and tokens.d_model == 128
    assert tokens.source["adata"]["n_cells_skipped"] == 0
    mean = open_store(tmp_path / "out/layer_1/cell_mean")
    assert mean.n_rows == 700 and sorted(mean.read_metadata(0, 700)["cell_index"].tolist()) == list(range(700))


def test_demo_refuses_an_unknown_model_kind(tmp_path):
    with pytest.raises(ExtractError, match="model_kind='bert'"):
        prepare_demo(tmp_path / "cache", "bert")
