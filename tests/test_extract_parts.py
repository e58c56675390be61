"""Many workers, one dataset: which worker a process is, the token-balanced contiguous partition, part stores
that concatenate to the single-process store, and refusals of workers that do not belong together."""

import collections
import json
import os

import numpy as np
import pytest

from extract import scan as cell_scan
from extract.errors import ExtractError
from extract.parts import Worker, partition, resolve_worker
from extract.run import extract
from extract.testing import write_counts_h5ad, write_geneformer_folder
from jaxsae.store import NormStats, open_store

GENES = [f"ENSG{n:011d}" for n in range(1, 41)]
OPTIONS = dict(layers=[1], cells_per_commit=4, batch_size=3, device="cpu", progress_bar=False)


@pytest.mark.parametrize("seed", range(5))
def test_the_partition_is_contiguous_cut_at_windows_and_balanced_by_tokens(seed):
    rng = np.random.default_rng(seed)
    cell_rows = rng.integers(0, 500, size=int(rng.integers(50, 400)))
    window, n_parts = int(rng.integers(1, 9)), int(rng.integers(1, 7))
    bounds = partition(cell_rows, window, n_parts)
    assert bounds[0] == 0 and bounds[-1] == len(cell_rows) and np.all(np.diff(bounds) >= 0)
    assert all(b % window == 0 for b in bounds[:-1])
    per_part = [cell_rows[a:b].sum() for a, b in zip(bounds[:-1], bounds[1:])]
    biggest_window = max(cell_rows[a : a + window].sum() for a in range(0, len(cell_rows), window))
    assert max(per_part) - cell_rows.sum() / n_parts <= biggest_window  # off by at most one window's rows
    np.testing.assert_array_equal(partition(cell_rows, window, n_parts), bounds)  # a pure function


def test_more_parts_than_windows_leaves_empty_parts_at_the_end():
    np.testing.assert_array_equal(partition(np.ones(10, np.int64), 4, 6), [0, 0, 4, 4, 8, 8, 10])


def test_the_worker_comes_from_the_flag_a_slurm_array_or_torchrun():
    assert resolve_worker("2/8", {"RANK": "1", "WORLD_SIZE": "4"}) == Worker(2, 8)
    slurm = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "3"}
    assert resolve_worker(None, slurm) == Worker(2, 4)
    assert resolve_worker(None, {"RANK": "3", "WORLD_SIZE": "4"}) == Worker(3, 4)
    assert resolve_worker(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert resolve_worker(None, {}) is None
    assert Worker(3, 8).name == "part-0003-of-0008"
    for bad in ("3/3", "-1/2", "a/b", "2"):
        with pytest.raises(ExtractError, match=r"expected i/N with 0 <= i < N"):
            resolve_worker(bad, {})


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("parts")
    adata = write_counts_h5ad(d / "cells.h5ad", 30, GENES, mean=0.6)
    model = write_geneformer_folder(d / "model", GENES, special_tokens=True, n_layers=2, max_positions=32)
    return adata, model, open_store(extract(adata, model, d / "single", **OPTIONS)[1])


def test_parts_concatenate_to_the_single_process_store_and_the_last_worker_marks_the_dataset_complete(case,
                                                                                                     tmp_path):
    adata, model, single = case
    out = tmp_path / "out"
    for i in (2, 0, 1):
        part = extract(adata, model, out, worker=f"{i}/3", **OPTIONS)[1]
        record = json.loads((part.parent / "dataset.json").read_text())
        assert record["complete"] is (i == 1) and part.name == f"part-000{i}-of-0003"
    assert [p["cells"] for p in record["parts"]] == [[0, 12], [12, 20], [20, 30]]
    parts = [open_store(out / "layer_1/tokens" / p["path"]) for p in record["parts"]]
    np.testing.assert_array_equal(np.concatenate([p.read_rows(0, p.n_rows) for p in parts]),
                                  single.read_rows(0, single.n_rows))
    for name, values in single.read_metadata(0, single.n_rows).items():
        np.testing.assert_array_equal(np.concatenate([p.read_metadata(0, p.n_rows)[name] for p in parts]), values)
    assert NormStats.combined([p.norm for p in parts]) == single.norm
    assert parts[1].progress == {"cells_done": 20, "cells_total": 20, "part": "part-0001-of-0003", "cells_first": 12}
    assert sorted(p.name for p in out.iterdir()) == ["cell_scan", "layer_1", "skipped_cells.json"]


def test_the_workers_scan_and_hash_the_inputs_once_and_rescan_a_changed_file(case, tmp_path, monkeypatch):
    adata, model, single = case
    calls = collections.Counter()

    def counted(name, function):
        def run(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return run

    monkeypatch.setattr(cell_scan, "scan_cells", counted("scan", cell_scan.scan_cells))
    monkeypatch.setattr(cell_scan, "file_identity", counted("hash", cell_scan.file_identity))
    out = tmp_path / "out"
    for i in (1, 0):
        extract(adata, model, out, worker=f"{i}/3", **OPTIONS)
    assert calls == {"scan": 1, "hash": 1}  # the second worker read the first one's scan
    extract(adata, model, out, worker="2/3", **OPTIONS)  # started after the scan exists: no rescan either
    assert calls == {"scan": 1, "hash": 1}
    assert open_store(out / "layer_1/tokens").source["adata"] == single.source["adata"]
    stat = adata.stat()
    os.utime(adata, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # rewritten in place (same bytes here)
    extract(adata, model, out, worker="2/3", **OPTIONS)
    assert calls == {"scan": 2, "hash": 2} and len(list((out / "cell_scan").iterdir())) == 2


def test_workers_with_different_settings_or_counts_are_refused_naming_what_differs(case, tmp_path):
    adata, model, _ = case
    out = tmp_path / "out"
    extract(adata, model, out, worker="0/3", **OPTIONS)
    with pytest.raises(ExtractError, match=r"worker 1/3: dataset .*layer_1/tokens was started with different "
                                           r"settings: extraction.batch_size: 3 -> 5; start every worker with the "
                                           r"same command"):
        extract(adata, model, out, worker="1/3", **{**OPTIONS, "batch_size": 5})
    with pytest.raises(ExtractError, match=r"settings: extraction.tokens_per_batch: 8192 -> 64; start every"):
        extract(adata, model, out, worker="1/3", **{**OPTIONS, "tokens_per_batch": 64})
    with pytest.raises(ExtractError, match=r"worker 1/4: dataset .*layer_1/tokens was started by 3 workers, not 4"):
        extract(adata, model, out, worker="1/4", **OPTIONS)
    listing = sorted(p.name for p in (out / "layer_1/tokens").iterdir())
    assert listing == ["dataset.json", "genes.tsv", "part-0000-of-0003"]  # the refused workers wrote nothing
