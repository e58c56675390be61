"""The demo: pbmc68k_reduced as raw counts + a small pretrained Geneformer, cached, loadable, extractable."""

import json

import anndata
import numpy as np
import pandas as pd
import scanpy as sc

from extract.demo import MARKER, prepare_demo
from extract.models import load_model
from extract.run import extract
from jaxsae.store import open_store

SMALL = dict(n_layers=2, d_model=32, n_heads=2, d_ff=64, train_steps=3, batch_size=8)


def test_demo_counts_model_cache_and_extraction(tmp_path):
    adata_path, model_dir = prepare_demo(tmp_path / "cache", **SMALL)
    adata = anndata.read_h5ad(adata_path)
    assert adata.shape == (700, 765) and adata.obs["bulk_labels"].nunique() == 10
    x = adata.X.toarray()
    assert np.array_equal(x, np.round(x)) and x.min() == 0
    reduced = sc.datasets.pbmc68k_reduced()
    expected_log = np.log1p(x / reduced.obs["n_counts"].to_numpy()[:, None] * 1e4)
    np.testing.assert_allclose(expected_log, reduced.raw.X.toarray(), atol=1e-3)
    ids = adata.var["ensembl_id"]
    assert ids.is_unique and ids.str.match(r"^ENSG99\d{9}$").all()
    log = json.loads((model_dir.parent / MARKER).read_text())["pretraining"]
    assert log["steps"] == 3

    model = load_model(model_dir)  # the public loader a downloaded Geneformer goes through
    assert model.kind == "geneformer" and model.special_tokens and model.model_input_size == 1026
    by_id = model.make_tokenizer(adata.var)
    by_symbol = model.make_tokenizer(pd.DataFrame(index=adata.var_names))  # through the demo's name dictionary
    from extract.tokenize import as_count_rows

    rows = as_count_rows(adata.X[:5])
    assert [t.tolist() for t in by_id(rows).input_ids] == [t.tolist() for t in by_symbol(rows).input_ids]

    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert prepare_demo(tmp_path / "cache", **SMALL) == (adata_path, model_dir)  # reused
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp
    (model_dir.parent / MARKER).unlink()  # a half-written cache is rebuilt
    assert prepare_demo(tmp_path / "cache", **SMALL) == (adata_path, model_dir)
    assert (model_dir.parent / MARKER).is_file()

    stores = extract(adata_path, model_dir, tmp_path / "out", layers=[1], device="cpu", progress_bar=False,
                     batch_size=32)
    tokens = open_store(stores[1])
    assert tokens.n_rows == int((x > 0).sum()) and tokens.d_model == 32
    assert tokens.source["adata"]["n_cells_skipped"] == 0
    mean = open_store(tmp_path / "out/layer_1/cell_mean")
    assert mean.n_rows == 700 and sorted(mean.read_metadata(0, 700)["cell_index"].tolist()) == list(range(700))
