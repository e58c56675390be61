"""Highly variable genes streamed over row blocks equal scanpy's in-memory selection; extraction reads blocks."""

import anndata
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from extract.counts import CountSource
from extract.errors import ExtractError
from extract.hvg import streamed_hvg
from extract.run import extract
from extract.testing import write_counts_h5ad, write_scgpt_folder
from jaxsae.store import open_store


def scanpy_hvg(counts: sp.csr_matrix, var, n_top_genes: int, flavor: str) -> np.ndarray:
    """[n_var] bool: scanpy's own `highly_variable_genes` on the whole matrix (log1p of counts per 10,000 for
    'seurat' / 'cell_ranger', raw counts for 'seurat_v3')."""
    adata = anndata.AnnData(X=counts.astype(np.float32), var=pd.DataFrame(index=var.index.astype(str)))
    adata.var_names_make_unique()
    if flavor != "seurat_v3":
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=n_top_genes, flavor=flavor)
    return adata.var["highly_variable"].to_numpy(dtype=bool)


@pytest.fixture(scope="module")
def pbmc_file(pbmc_cells, tmp_path_factory):
    path = tmp_path_factory.mktemp("hvg") / "pbmc.h5ad"
    pbmc_cells.write_h5ad(path)
    return path


@pytest.mark.parametrize("flavor", ["seurat_v3", "seurat", "cell_ranger"])
@pytest.mark.parametrize("n_top_genes", [50, 300])
def test_streamed_mask_equals_scanpy_in_memory(pbmc_file, pbmc_cells, flavor, n_top_genes):
    expected = scanpy_hvg(sp.csr_matrix(pbmc_cells.X), pbmc_cells.var, n_top_genes, flavor)
    with CountSource(pbmc_file) as source:
        streamed = streamed_hvg(source, n_top_genes, flavor, block_rows=97)  # 700 cells: 8 uneven blocks
    assert expected.sum() == n_top_genes
    np.testing.assert_array_equal(streamed, expected)


def test_an_unknown_flavor_is_refused(pbmc_file):
    with CountSource(pbmc_file) as source, pytest.raises(ExtractError, match="'seurat_v3', 'seurat', 'cell_ranger'"):
        streamed_hvg(source, 50, "pearson_residuals")


@pytest.mark.parametrize("flavor", ["seurat_v3", "seurat"])
def test_extraction_with_hvg_reads_row_blocks(tmp_path, monkeypatch, flavor):
    symbols = [f"G{n}" for n in range(60)]
    adata = write_counts_h5ad(tmp_path / "cells.h5ad", 200, symbols)
    model_dir = write_scgpt_folder(tmp_path / "model", symbols, max_seq_len=16)
    reads, rows = [], CountSource.rows

    def recording_rows(self, start, stop):
        reads.append(stop - start)
        return rows(self, start, stop)

    monkeypatch.setattr(CountSource, "rows", recording_rows)
    monkeypatch.setattr("extract.hvg.BLOCK_ROWS", 64)
    monkeypatch.setattr("extract.scan.SCAN_ROWS", 64)  # the cell scan's blocks (4,096) would hold all 200 too
    extract(adata, model_dir, tmp_path / "out", layers=[0], device="cpu", progress_bar=False, n_hvg=20,
            hvg_flavor=flavor, cells_per_commit=64, cell_embeddings=False)
    assert reads and max(reads) <= 64  # never the whole 200-cell matrix
    tokenizer = open_store(tmp_path / "out/layer_0/tokens").source["tokenizer"]
    assert tokenizer["n_hvg"] == 20 and tokenizer["hvg_flavor"] == flavor  # a resume with another is refused


def test_the_evaluation_tokenises_with_the_recorded_hvg_flavor(tmp_path):
    from extract.models import load_model
    from extract.splice import sample_cells

    symbols = [f"G{n}" for n in range(60)]
    adata = write_counts_h5ad(tmp_path / "cells.h5ad", 200, symbols)
    model_dir = write_scgpt_folder(tmp_path / "model", symbols, max_seq_len=64)
    extract(adata, model_dir, tmp_path / "out", layers=[0], device="cpu", progress_bar=False, n_hvg=20,
            hvg_flavor="cell_ranger", cell_embeddings=False)
    model = load_model(model_dir)
    with CountSource(adata) as source:
        masks = {flavor: streamed_hvg(source, 20, flavor) for flavor in ("cell_ranger", "seurat_v3")}
    assert (masks["cell_ranger"] != masks["seurat_v3"]).any()  # the flavors choose other genes here
    cells = sample_cells(model, adata, 200, 0, open_store(tmp_path / "out/layer_0/tokens").source)
    used = {model.vocab[symbols[j]] for j in np.flatnonzero(masks["cell_ranger"])}
    seen = set(np.concatenate([ids[cells.tokens.n_prefix:] for ids in cells.tokens.input_ids]).tolist())
    assert seen <= used and len(seen) > 15  # the store's flavor, not the default 'seurat_v3'
