"""Bad input is refused with ExtractError before any work, leaving nothing on disk."""

import os
import pickle

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from extract.errors import ExtractError
from extract.run import extract
from extract.safe_pickle import load_plain_pickle
from extract.testing import write_counts_h5ad, write_geneformer_folder, write_scgpt_folder

GENES = [f"ENSG{n:011d}" for n in range(1, 21)]
SYMBOLS = [f"G{n}" for n in range(20)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_geneformer_folder(tmp_path_factory.mktemp("gf") / "model", GENES, n_layers=2, max_positions=32,
                                   symbol_to_id=None)


def write_h5ad(path, X, var_names, layers=None):
    adata = anndata.AnnData(X=X, var=pd.DataFrame(index=var_names), layers=layers or {})
    adata.write_h5ad(path)
    return path


def refused(tmp_path, adata, model, match, **options):
    out = tmp_path / "out"
    with pytest.raises(ExtractError, match=match):
        extract(adata, model, out, layers=options.pop("layers", [0]), device="cpu", progress_bar=False, **options)
    assert not out.exists()


def counts(n_cells=6, n_genes=20, seed=0):
    return np.random.default_rng(seed).poisson(2, (n_cells, n_genes)).astype(np.float32)


def test_bad_counts_refused(tmp_path, model_dir):
    refused(tmp_path, write_h5ad(tmp_path / "zeros.h5ad", sp.csr_matrix((6, 20), dtype=np.float32), GENES),
            model_dir, "no counts")
    x = counts()
    x[3, 4] = -1
    refused(tmp_path, write_h5ad(tmp_path / "neg.h5ad", x, GENES), model_dir, "negative")
    refused(tmp_path, write_h5ad(tmp_path / "log.h5ad", np.log1p(counts()), GENES), model_dir, "non-integer")
    refused(tmp_path, write_h5ad(tmp_path / "c.h5ad", counts(), GENES), model_dir, "no count matrix",
            counts_layer="counts")


def test_counts_layer_is_used(tmp_path, model_dir):
    path = write_h5ad(tmp_path / "l.h5ad", np.log1p(counts()), GENES, layers={"counts": sp.csr_matrix(counts())})
    extract(path, model_dir, tmp_path / "out", layers=[0], counts_layer="counts", device="cpu", progress_bar=False)
    assert (tmp_path / "out/extraction.json").is_file()


def test_gene_identifiers_refused(tmp_path, model_dir):
    refused(tmp_path, write_h5ad(tmp_path / "sym.h5ad", counts(), SYMBOLS), model_dir, "no gene-name dictionary")
    other = [f"ENSG{n:011d}" for n in range(500, 520)]
    refused(tmp_path, write_h5ad(tmp_path / "other.h5ad", counts(), other), model_dir, "none of the 20 genes")
    refused(tmp_path, write_h5ad(tmp_path / "ok.h5ad", counts(), GENES), model_dir, "not a column",
            gene_column="ensembl")


def test_empty_cells_skipped_with_one_logged_line(tmp_path, model_dir, capsys):
    x = counts()
    x[2] = 0
    extract(write_h5ad(tmp_path / "e.h5ad", sp.csr_matrix(x), GENES), model_dir, tmp_path / "out", layers=[0],
            device="cpu", progress_bar=False)
    err = capsys.readouterr().err
    assert err.startswith("jaxsae: skipping 1 of 6 cells") and len(err.splitlines()) == 1, err
    assert '"cell_index": [\n    2\n  ]' in (tmp_path / "out/skipped_cells.json").read_text()


def test_layer_and_option_checks(tmp_path, model_dir):
    adata = write_h5ad(tmp_path / "ok.h5ad", counts(), GENES)
    refused(tmp_path, adata, model_dir, "layer 2 is out of range", layers=[2])
    refused(tmp_path, adata, model_dir, "layer -3 is out of range", layers=[-3])
    refused(tmp_path, adata, model_dir, "batch_size must be", batch_size=0)
    refused(tmp_path, adata, model_dir, "store_dtype", store_dtype="float16")


def test_model_folder_missing_files(tmp_path):
    adata = write_counts_h5ad(tmp_path / "a.h5ad", 4, SYMBOLS)
    scgpt = write_scgpt_folder(tmp_path / "sg", SYMBOLS)
    (scgpt / "vocab.json").unlink()
    refused(tmp_path, adata, scgpt, r"missing \['vocab.json'\]")
    gf = write_geneformer_folder(tmp_path / "gf", GENES, n_layers=1, max_positions=32)
    next(gf.glob("gene_median_dictionary*.pkl")).unlink()
    refused(tmp_path, adata, gf, r"no gene_median_dictionary\*\.pkl")
    (gf / "model.safetensors").unlink()
    refused(tmp_path, adata, gf, "has no weights")
    refused(tmp_path, adata, tmp_path / "nowhere", "does not exist")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_unexecuted(tmp_path):
    marker = tmp_path / "executed"
    gf = write_geneformer_folder(tmp_path / "gf", GENES, n_layers=1, max_positions=32)
    token_file = next(gf.glob("token_dictionary*.pkl"))
    with open(token_file, "wb") as f:
        pickle.dump({"<pad>": 0, "<mask>": 1, GENES[0]: _RunsCode(marker)}, f)
    adata = write_h5ad(tmp_path / "ok.h5ad", counts(), GENES)
    refused(tmp_path, adata, gf, "refusing to load global (posix|os).system")
    assert not marker.exists()
    for payload in ([1, {"a": (2.0, None)}], {"x": np.float64(0.5), "y": np.int32(3)}):
        path = tmp_path / "plain.pkl"
        path.write_bytes(pickle.dumps(payload, protocol=2))
        assert load_plain_pickle(path) == payload
    path.write_bytes(pickle.dumps({"a": np.array([1.0])}))
    with pytest.raises(ExtractError, match="refusing"):
        load_plain_pickle(path)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicate_gene_ids_logged_recorded_or_refused(tmp_path, model_dir, capsys):
    names = GENES[:18] + [GENES[3], GENES[5] + ".2"]  # two model genes appear twice (one with a version suffix)
    adata = write_h5ad(tmp_path / "dup.h5ad", counts(), names)
    out = extract(adata, model_dir, tmp_path / "sum", layers=[0], device="cpu", progress_bar=False)
    err = capsys.readouterr().err
    assert f"2 model genes appear in more than one var column (e.g. {GENES[3]} x2, {GENES[5]} x2): their counts " \
           "are summed" in err and len(err.splitlines()) == 1, err
    from jaxsae.store import open_store

    settings = open_store(out[0]).source["tokenizer"]
    assert (settings["duplicate_genes"], settings["n_duplicate_genes"], settings["n_genes_used"]) == ("sum", 2, 18)
    extract(adata, model_dir, tmp_path / "first", layers=[0], device="cpu", progress_bar=False,
            duplicate_genes="first")
    assert "only the first column of each is used" in capsys.readouterr().err
    refused(tmp_path, adata, model_dir, rf"2 model genes .*{GENES[3]} x2.*adata.var_names_make_unique\(\)",
            duplicate_genes="error")


def test_missing_or_unreadable_inputs_are_refused_before_the_model_loads(tmp_path, model_dir, monkeypatch):
    import extract.run as extract_run

    def no_model_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input paths were checked")

    monkeypatch.setattr(extract_run, "load_model", no_model_load)
    refused(tmp_path, tmp_path / "missing.h5ad", model_dir, r"AnnData file .*missing.h5ad does not exist")
    (tmp_path / "junk.h5ad").write_text("not an hdf5 file")
    refused(tmp_path, tmp_path / "junk.h5ad", model_dir, r"cannot be read as an .h5ad")
    adata = write_h5ad(tmp_path / "ok.h5ad", counts(), GENES)
    refused(tmp_path, adata, tmp_path / "no_model", r"model folder .*no_model does not exist")
