"""`jaxsae extract` as a user runs it: the console entry point in a subprocess, on Geneformer and scGPT folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from extract.counts import CountSource
from extract.models import load_model
from extract.testing import write_counts_h5ad, write_geneformer_folder, write_scgpt_folder
from jaxsae.store import open_store

REPO = Path(__file__).resolve().parents[1]
GENES = [f"ENSG{n:011d}" for n in range(1, 41)]
SYMBOLS = [f"G{n}" for n in range(40)]


def jaxsae_cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    """`jaxsae ...` in a fresh process that imports this checkout (the console script runs jaxsae.cli:main)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "jaxsae.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def expected_rows(adata, model_dir) -> tuple[int, int]:
    """(token rows, cells with a token) the extraction of `adata` must write."""
    model = load_model(model_dir)
    with CountSource(adata) as source:
        n_genes = model.make_tokenizer(source.var).n_genes(source.rows(0, source.n_cells))
    return int(n_genes.sum()), int((n_genes > 0).sum())


@pytest.mark.parametrize("kind", ["geneformer", "scgpt"])
def test_jaxsae_extract_writes_every_store_and_names_them(tmp_path, kind):
    if kind == "geneformer":
        adata = write_counts_h5ad(tmp_path / "cells.h5ad", 24, GENES, mean=2.0)
        model_dir = write_geneformer_folder(tmp_path / "model", GENES, n_layers=2, max_positions=48)
    else:
        adata = write_counts_h5ad(tmp_path / "cells.h5ad", 24, SYMBOLS, mean=2.0)
        model_dir = write_scgpt_folder(tmp_path / "model", SYMBOLS, max_seq_len=32)
    run = jaxsae_cli("extract", adata, model_dir, tmp_path / "out", "--layers", "0,-1", "--cells-per-commit", "8",
                     "--tokens_per_batch", "100", "--device", "cpu", "--no-progress-bar")
    assert run.returncode == 0, run.stderr
    token_rows, n_cells = expected_rows(adata, model_dir)
    printed = run.stdout.splitlines()
    assert len(printed) == 6, run.stdout  # 2 layers x tokens, cell_mean, cell_cls
    for layer in (0, 1):
        for store_kind, rows in (("tokens", token_rows), ("cell_mean", n_cells), ("cell_cls", n_cells)):
            path = tmp_path / "out" / f"layer_{layer}" / store_kind
            store = open_store(path)
            assert store.n_rows == rows and store.is_complete, path
            assert f"layer {layer} {store_kind:<9} {path}  ({rows:,} rows)" in printed
    index = json.loads((tmp_path / "out/extraction.json").read_text())
    assert index["complete"] and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "extraction.json", "layer_0", "layer_1", "skipped_cells.json"]  # no extract.lock, no .tmp left
    assert open_store(tmp_path / "out/layer_0/tokens").source["extraction"]["tokens_per_batch"] == 100
    if kind == "scgpt":  # the scGPT binning is recorded in every manifest
        assert open_store(tmp_path / "out/layer_0/tokens").source["tokenizer"]["binning_seed"] == 0


def test_jaxsae_extract_bad_input_is_one_error_line(tmp_path):
    model_dir = write_geneformer_folder(tmp_path / "model", GENES, n_layers=1, max_positions=48)
    run = jaxsae_cli("extract", tmp_path / "missing.h5ad", model_dir, tmp_path / "out", "--device", "cpu")
    assert run.returncode == 2
    assert run.stderr.splitlines() == [f"error: AnnData file {tmp_path / 'missing.h5ad'} does not exist (or is not "
                                       "a file); expected an .h5ad of raw counts; check the path"]
    assert not (tmp_path / "out").exists()


def test_jaxsae_extract_refuses_an_unknown_hvg_flavor_before_any_work(tmp_path):
    model_dir = write_geneformer_folder(tmp_path / "model", GENES, n_layers=1, max_positions=48)
    run = jaxsae_cli("extract", tmp_path / "missing.h5ad", model_dir, tmp_path / "out", "--hvg_flavor", "pearson")
    assert run.returncode == 2
    assert run.stderr.splitlines() == ["error: hvg_flavor must be one of ('seurat_v3', 'seurat', 'cell_ranger'), "
                                       "found 'pearson'"]
    assert not (tmp_path / "out").exists()
