"""Gene tables: extraction writes genes.tsv into every store, load_genes reads it, add-genes adds it later."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import jaxsae
from extract.run import extract
from extract.testing import write_counts_h5ad, write_geneformer_folder, write_scgpt_folder
from jaxsae.store import StoreError, open_store
from jaxsae.store.genes import GENES_FILE, load_genes

GENES = [f"ENSG{n:011d}" for n in range(1, 31)]
SYMBOLS = [f"GENE{n}" for n in range(30)]
REPO = Path(__file__).resolve().parents[1]


def stores_of(out_dir):
    return sorted(p.parent for p in Path(out_dir).glob("layer_*/*/manifest.json"))


@pytest.fixture(scope="module")
def geneformer_out(tmp_path_factory):
    """A V2 Geneformer folder whose name dictionary knows every gene but the last, and its extraction."""
    d = tmp_path_factory.mktemp("gf")
    adata = write_counts_h5ad(d / "cells.h5ad", 12, GENES, mean=0.6)
    names = {symbol: gene for symbol, gene in zip(SYMBOLS[:-1], GENES[:-1])}
    model = write_geneformer_folder(d / "model", GENES, special_tokens=True, symbol_to_id=names, max_positions=40)
    out = d / "out"
    extract(adata, model, out, layers=[1], device="cpu", progress_bar=False, cells_per_commit=8)
    return model, out


def test_geneformer_extraction_writes_the_gene_table_into_every_store(geneformer_out):
    _model, out = geneformer_out
    stores = stores_of(out)
    assert [p.name for p in stores] == ["cell_cls", "cell_mean", "tokens"]
    for store in stores:
        # written before the store's commits, so before the one that made it complete
        assert (store / GENES_FILE).stat().st_mtime_ns <= (store / "manifest.json").stat().st_mtime_ns
        assert load_genes(store).equals(load_genes(stores[0]))
    table = jaxsae.load_genes(open_store(out / "layer_1/tokens"))  # an ActivationStore works too
    assert list(table.columns) == ["gene_id", "symbol"] and table.index.name == "token_id"
    assert table.index.tolist() == list(range(4 + len(GENES)))  # <pad> <mask> <cls> <eos>, then the genes
    assert table.loc[0].tolist() == ["", "<pad>"] and table.loc[2].tolist() == ["", "<cls>"]
    assert table.loc[4].tolist() == [GENES[0], SYMBOLS[0]]
    assert table.loc[4 + len(GENES) - 1].tolist() == [GENES[-1], ""]  # not in the name dictionary
    tokens = open_store(out / "layer_1/tokens")
    used = set(tokens.read_metadata(0, tokens.n_rows)["token_id"].tolist())
    assert used and all(table.loc[t, "gene_id"] == GENES[t - 4] for t in used)


def test_scgpt_extraction_writes_symbols_without_gene_ids(tmp_path):
    adata = write_counts_h5ad(tmp_path / "cells.h5ad", 8, SYMBOLS)
    model = write_scgpt_folder(tmp_path / "model", SYMBOLS, max_seq_len=16)
    extract(adata, model, tmp_path / "out", layers=[0], device="cpu", progress_bar=False)
    stores = stores_of(tmp_path / "out")
    assert len(stores) == 3
    table = load_genes(tmp_path / "out/layer_0/tokens")
    assert table["symbol"].tolist() == SYMBOLS + ["<pad>", "<cls>", "<eoc>"]
    assert table.index.tolist() == list(range(len(SYMBOLS) + 3))
    assert (table["gene_id"] == "").all()
    assert all((store / GENES_FILE).is_file() for store in stores)


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "jaxsae.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def test_old_store_message_and_add_genes_from_the_command_line(geneformer_out, tmp_path):
    model, out = geneformer_out
    store = out / "layer_1/cell_mean"
    expected = (store / GENES_FILE).read_text()
    (store / GENES_FILE).unlink()  # a store written before gene tables existed
    with pytest.raises(StoreError, match="predates gene tables.*jaxsae store add-genes .*cell_mean --model MODEL_DIR"):
        load_genes(store)

    other = write_scgpt_folder(tmp_path / "other", SYMBOLS)
    wrong = _cli("store", "add-genes", store, "--model", other)
    assert wrong.returncode == 2 and not (store / GENES_FILE).exists()
    assert wrong.stderr.startswith("error: ") and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    recorded = open_store(store).source["checkpoint_sha256"]
    assert recorded in wrong.stderr and "is not the model" in wrong.stderr

    done = _cli("store", "add-genes", store, "--model", model)
    assert done.returncode == 0, done.stderr
    assert (store / GENES_FILE).read_text() == expected
    assert load_genes(store).loc[4, "symbol"] == SYMBOLS[0]


def test_add_genes_refuses_a_store_not_written_by_an_extraction(geneformer_out, tmp_path):
    from extract.errors import ExtractError
    from extract.genes import add_genes

    model, _ = geneformer_out
    store = jaxsae.synthesize(tmp_path / "synth", jaxsae.SynthConfig(rows=64, d_model=8, n_features=16))
    with pytest.raises(ExtractError, match="not written by jaxsae extract"):
        add_genes(store, model)
