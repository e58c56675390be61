"""Extraction end to end: stores hold the model's activations, resume after SIGKILL is exact."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from extract.counts import CountSource
from extract.errors import ExtractError
from extract.models import load_model
from extract.run import extract
from extract.testing import write_counts_h5ad, write_geneformer_folder, write_scgpt_folder
from jaxsae.store import open_store

GENES = [f"ENSG{n:011d}" for n in range(1, 61)]
SYMBOLS = [f"G{n}" for n in range(60)]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def geneformer_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("gf")
    # 3 unknown genes; cell rows of zeros appear through low rates
    adata = write_counts_h5ad(d / "cells.h5ad", 40, GENES + ["ENSG99999999991", "ENSG99999999992"], mean=0.4)
    model = write_geneformer_folder(d / "model", GENES, special_tokens=True, n_layers=3, max_positions=40)
    return adata, model


def all_stores(out_dir):
    return sorted(p.parent for p in Path(out_dir).glob("layer_*/*/manifest.json"))


def test_token_rows_are_the_models_hidden_states(geneformer_case, tmp_path):
    adata, model_dir = geneformer_case
    out = extract(adata, model_dir, tmp_path / "out", layers=[1], cells_per_commit=16, batch_size=5,
                  device="cpu", progress_bar=False)
    tokens = open_store(out[1])
    meta = tokens.read_metadata(0, tokens.n_rows)
    model = load_model(model_dir)
    with CountSource(adata) as source:
        tokenizer = model.make_tokenizer(source.var)
        counts = source.rows(0, source.n_cells)
    expected_rows = tokenizer.n_genes(counts).sum()
    assert tokens.n_rows == expected_rows and tokens.source["layer"] == 1
    assert tokens.source["tokenizer"]["model_input_size"] == 40
    for cell in (0, 7, 39):
        ids = torch.from_numpy(tokenizer(counts[cell], np.array([cell])).input_ids[0])[None]
        with torch.inference_mode():
            hidden = model.module.bert(input_ids=ids, output_hidden_states=True).hidden_states[2][0]
        rows = np.flatnonzero(meta["cell_index"] == cell)
        if len(rows) == 0:
            continue
        assert meta["position"][rows].tolist() == list(range(1, ids.shape[1] - 1))  # no <cls>/<eos> rows
        assert meta["token_id"][rows].tolist() == ids[0, 1:-1].tolist()
        np.testing.assert_allclose(tokens.read_rows(rows[0], rows[-1] + 1), hidden[1:-1].numpy(), atol=1e-5)
        mean = open_store(tmp_path / "out/layer_1/cell_mean")
        cls = open_store(tmp_path / "out/layer_1/cell_cls")
        at = np.flatnonzero(mean.read_metadata(0, mean.n_rows)["cell_index"] == cell)[0]
        np.testing.assert_allclose(mean.read_rows(at, at + 1)[0], hidden[1:-1].mean(0).numpy(), atol=1e-5)
        at = np.flatnonzero(cls.read_metadata(0, cls.n_rows)["cell_index"] == cell)[0]
        np.testing.assert_allclose(cls.read_rows(at, at + 1)[0], hidden[0].numpy(), atol=1e-5)
    skipped = json.loads((tmp_path / "out/skipped_cells.json").read_text())["cell_index"]
    n_cells = len(set(meta["cell_index"].tolist()))
    assert n_cells + len(skipped) == 40 and not set(skipped) & set(meta["cell_index"].tolist())
    assert json.loads((tmp_path / "out/extraction.json").read_text())["complete"] is True


def test_scgpt_extraction_and_refusing_other_settings(tmp_path):
    adata = write_counts_h5ad(tmp_path / "cells.h5ad", 20, SYMBOLS + ["NOT_IN_VOCAB"])
    model_dir = write_scgpt_folder(tmp_path / "model", SYMBOLS, max_seq_len=16)
    out = extract(adata, model_dir, tmp_path / "out", layers=[0, 1], device="cpu", progress_bar=False,
                  include_special_tokens=True)
    store = open_store(out[0])
    meta = store.read_metadata(0, store.n_rows)
    assert (meta["position"] == 0).sum() == 20 and meta["position"].max() == 15  # <cls> rows kept on request
    assert {p.parent.name + "/" + p.name for p in all_stores(tmp_path / "out")} == {
        f"layer_{i}/{k}" for i in (0, 1) for k in ("tokens", "cell_mean", "cell_cls")}
    assert extract(adata, model_dir, tmp_path / "out", layers=[0, 1], device="cpu", progress_bar=False,
                   include_special_tokens=True) == out  # finished: returned as is
    index_before = (tmp_path / "out/extraction.json").read_bytes()
    manifests_before = {p: (p / "manifest.json").read_bytes() for p in all_stores(tmp_path / "out")}
    with pytest.raises(ExtractError, match=r"in 1 field\(s\): extraction.include_special_tokens: true -> false"):
        extract(adata, model_dir, tmp_path / "out", layers=[0, 1], device="cpu", progress_bar=False)
    assert (tmp_path / "out/extraction.json").read_bytes() == index_before  # a refusal changes nothing
    assert {p: (p / "manifest.json").read_bytes() for p in all_stores(tmp_path / "out")} == manifests_before
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["extraction.json", "layer_0", "layer_1",
                                                                   "skipped_cells.json"]  # no lock, no .tmp


def test_outputs_match_by_content_not_path_spelling(tmp_path, monkeypatch):
    adata = write_counts_h5ad(tmp_path / "cells.h5ad", 12, SYMBOLS)
    model_dir = write_scgpt_folder(tmp_path / "model", SYMBOLS, max_seq_len=16)
    options = dict(layers=[1], device="cpu", progress_bar=False, cells_per_commit=4)
    out = extract(adata, model_dir, tmp_path / "out", **options)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "model")
    monkeypatch.chdir(tmp_path / "elsewhere")  # relative paths, from another folder, the model via a symlink
    again = extract("../cells.h5ad", "../link", "../out", **options)
    assert [p.resolve() for p in again.values()] == [p.resolve() for p in out.values()]
    copy = tmp_path / "copy.h5ad"  # the same bytes under another name: the same extraction
    copy.write_bytes(adata.read_bytes())
    assert extract(copy, tmp_path / "model", tmp_path / "out", **options) == out
    other = write_counts_h5ad(tmp_path / "other.h5ad", 12, SYMBOLS, seed=5)
    with pytest.raises(ExtractError, match=r"adata.sha256: \"[0-9a-f]{64}\" -> \"[0-9a-f]{64}\""):
        extract(other, model_dir, tmp_path / "out", **options)
    assert json.loads((tmp_path / "out/extraction.json").read_text())["complete"] is True
    # an interrupted output is matched by content too: its stores resume from any spelling of the paths
    (tmp_path / "out/extraction.json").unlink()
    assert extract("../cells.h5ad", "../link", "../out", **options) == again
    assert (tmp_path / "out/extraction.json").is_file()


CHILD = textwrap.dedent("""
    import sys, time
    from jaxsae.store import StoreWriter
    original = StoreWriter.commit
    def slow_commit(self, progress=None):
        original(self, progress)
        if str(self.path).endswith("layer_0/tokens") and progress:
            time.sleep(1.5)  # the kill lands while layer_0/tokens is ahead of the other stores
    StoreWriter.commit = slow_commit
    from extract.run import extract
    extract(sys.argv[1], sys.argv[2], sys.argv[3], layers=[0, 2], cells_per_commit=8, batch_size=3,
            device="cpu", progress_bar=False)
""")


def test_sigkill_then_rerun_equals_uninterrupted(geneformer_case, tmp_path):
    adata, model_dir = geneformer_case
    options = dict(layers=[0, 2], cells_per_commit=8, batch_size=3, device="cpu", progress_bar=False)
    reference = extract(adata, model_dir, tmp_path / "reference", **options)
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(adata), str(model_dir), str(out)], env=env, cwd=REPO)
    first = out / "layer_0/tokens/manifest.json"
    lagging = out / "layer_2/cell_cls/manifest.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if first.is_file() and lagging.is_file():
                ahead = json.loads(first.read_text())["progress"].get("cells_done", 0)
                behind = json.loads(lagging.read_text())["progress"].get("cells_done", 0)
                if ahead >= 16 and behind < ahead:
                    break
            assert child.poll() is None, "extraction finished before it could be killed"
            time.sleep(0.02)
        else:
            pytest.fail("never saw the stores disagree")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert not (out / "extraction.json").exists()
    assert open_store(out / "layer_0/tokens").progress["cells_done"] < 40
    resumed = extract(adata, model_dir, out, **options)
    assert resumed.keys() == reference.keys()
    ref_stores, new_stores = all_stores(tmp_path / "reference"), all_stores(out)
    assert [p.relative_to(out) for p in new_stores] == [p.relative_to(tmp_path / "reference") for p in ref_stores]
    for ref_path, new_path in zip(ref_stores, new_stores):
        ref, new = open_store(ref_path), open_store(new_path)
        assert ref.n_rows == new.n_rows > 0 and new.progress == {"cells_done": 40, "cells_total": 40}
        np.testing.assert_array_equal(ref.read_rows(0, ref.n_rows), new.read_rows(0, new.n_rows))
        for name, values in ref.read_metadata(0, ref.n_rows).items():
            np.testing.assert_array_equal(values, new.read_metadata(0, new.n_rows)[name])


def test_a_failed_store_write_commits_nothing_after_it_and_a_rerun_completes(geneformer_case, tmp_path,
                                                                             monkeypatch):
    import extract.windows as extract_windows

    adata, model_dir = geneformer_case
    options = dict(layers=[1], cells_per_commit=8, batch_size=3, device="cpu", progress_bar=False)
    reference = extract(adata, model_dir, tmp_path / "reference", **options)
    calls = []
    real_write_batch = extract_windows.write_batch

    def failing_write_batch(stores, batch, hidden, window_end, has_cls):
        calls.append(window_end)
        if len(calls) == 5:  # the second batch of the second window (8 cells, 3 per batch)
            time.sleep(1.0)  # meanwhile the window's last batch and its commit are queued behind this write
            raise OSError("disk full (simulated)")
        real_write_batch(stores, batch, hidden, window_end, has_cls)

    monkeypatch.setattr(extract_windows, "write_batch", failing_write_batch)
    out = tmp_path / "failed"
    with pytest.raises(ExtractError, match="disk full.*rerun the same jaxsae extract command"):
        extract(adata, model_dir, out, **options)
    assert calls[4] == 16 and not (out / "extraction.json").exists()
    for path in all_stores(out):  # the failed window (cells 8..16) and everything after it stay uncommitted
        assert open_store(path).progress.get("cells_done", 0) <= 8, path
    monkeypatch.setattr(extract_windows, "write_batch", real_write_batch)
    extract(adata, model_dir, out, **options)
    ref, new = open_store(reference[1]), open_store(out / "layer_1/tokens")
    assert new.n_rows == ref.n_rows and new.progress == {"cells_done": 40, "cells_total": 40}
    np.testing.assert_array_equal(ref.read_rows(0, ref.n_rows), new.read_rows(0, new.n_rows))
