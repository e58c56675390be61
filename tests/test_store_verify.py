"""Store integrity: `jaxsae store verify` on damaged and clean stores, completeness of half-extracted stores
(`store info`, the trainer's refusal), and the folder lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorstore as ts

from jaxsae.cli import main
from jaxsae.store import FolderLock, FolderLockedError, StoreWriter, open_store, verify_store

D = 16


def write_store(path, n_rows=3000, *, progress=None, source=None, seed=0):
    """A real store of `n_rows` random rows (chunks of 256, shards of 1024) with cell_index = row // 7."""
    rows = np.random.default_rng(seed).normal(size=(n_rows, D)).astype(np.float32)
    with StoreWriter.create(path, d_model=D, shard_rows=1024, chunk_rows=256, source=source,
                            progress=progress) as writer:
        writer.append(rows, cell_index=np.arange(n_rows) // 7, token_id=np.arange(n_rows) % 50,
                      position=np.arange(n_rows) % 9)
    return path


def test_verify_finds_exactly_the_rows_damaged_on_disk(tmp_path, capsys):
    store = write_store(tmp_path / "s")
    damaged = np.array([3, 4, 255, 256, 1023, 1024, 1500, 2047, 2900, 2999])
    acts = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / "acts")}}).result()
    for row in damaged:  # as a damaged file looks: NaN written straight into committed rows, manifest untouched
        acts[int(row), row % D].write(np.float32(np.nan)).result()
    report = verify_store(store)
    np.testing.assert_array_equal(report.nonfinite_rows, damaged)
    np.testing.assert_array_equal(report.nonfinite_cells, damaged // 7)
    assert main(["store", "verify", str(store)]) == 1
    out = capsys.readouterr().out.splitlines()
    problems = [line for line in out if line.startswith("problem: ")]
    assert problems[0].startswith("problem: 10 of 3,000 committed rows hold NaN or Inf: rows 3 (cell_index 0), "
                                  "4 (cell_index 0), 255 (cell_index 36), 256 (cell_index 36), 1023 (cell_index "
                                  "146), ... (5 more)")
    assert "norm statistics recomputed from the rows (over the finite rows) differ" in problems[1]
    assert out[-1] == f"verify: {len(problems)} problem(s) found in {store}"


def test_verify_passes_a_clean_store_and_refuses_a_non_store(tmp_path, capsys):
    store = write_store(tmp_path / "s")
    assert main(["store", "verify", str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "status     complete" and out[-1].startswith("verify: OK: 3,000 committed rows finite")
    assert main(["store", "verify", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: store ") and "does not exist" in err and len(err.splitlines()) == 1


def test_verify_reports_changed_norm_statistics_and_bad_metadata(tmp_path):
    store = write_store(tmp_path / "s", source={"adata": {"n_cells": 500}})
    acts = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / "acts")}}).result()
    acts[10].write(np.full(D, 5.0, np.float32)).result()  # finite, but not what was committed
    cells = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(store / "cell_index")}}).result()
    cells[20:23].write(np.array([-5, -1, 500], np.int64)).result()
    report = verify_store(store)
    assert len(report.nonfinite_rows) == 0 and len(report.problems) == 2
    assert report.problems[0].startswith("norm statistics recomputed from the rows differ")
    assert report.problems[1].startswith("3 rows have an invalid cell_index; expected 0 <= cell_index < 500")


def half_extracted(path):
    return write_store(path, 700, source={"adata": {"n_cells": 250}, "model": "scgpt"},
                       progress={"cells_done": 100, "cells_total": 250})


def test_store_info_and_verify_say_when_an_extraction_stopped(tmp_path, capsys):
    incomplete = half_extracted(tmp_path / "half")
    assert not open_store(incomplete).is_complete and open_store(write_store(tmp_path / "plain")).is_complete
    legacy = write_store(tmp_path / "legacy", 700, source={"adata": {"n_cells": 250}}, progress={"cells_done": 100})
    assert not open_store(legacy).is_complete  # older extraction stores: the total comes from the source
    assert main(["store", "info", str(incomplete)]) == 0
    status = "INCOMPLETE: extraction stopped at cell 100 of 250; rerun the extract command to finish it"
    assert f"status     {status}" in capsys.readouterr().out.splitlines()
    assert main(["store", "verify", str(incomplete)]) == 1
    assert f"problem: {status}" in capsys.readouterr().out.splitlines()


def test_the_trainer_refuses_an_incomplete_store_unless_allowed(tmp_path, capsys):
    store = half_extracted(tmp_path / "half")
    args = ["train", f"--data.store={store}", f"--run_dir={tmp_path / 'run'}", f"--sae.d_model={D}",
            "--sae.n_latents=32", "--sae.k=4", "--steps=2", "--no_progress", "--data.batch_rows=256"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (f"error: data.store: {store} is incomplete (extraction stopped at cell 100 of 250); finish the "
                   "extraction (rerun the same jaxsae extract command) or pass --data.allow_incomplete\n")
    assert not (tmp_path / "run").exists()
    assert main([*args, "--data.allow_incomplete"]) == 0


def test_folder_lock_refuses_a_live_holder_takes_over_a_dead_one_and_leaves_nothing(tmp_path, capsys):
    with FolderLock(tmp_path, "x.lock", "extraction", field="out_dir"):
        with pytest.raises(FolderLockedError, match=rf"out_dir: {tmp_path} is in use by another extraction "
                                                   rf"\(pid {os.getpid()} on this host"):
            FolderLock(tmp_path, "x.lock", "extraction", field="out_dir").acquire()
    assert list(tmp_path.iterdir()) == []  # no lock file, no guard file
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "x.lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with FolderLock(tmp_path, "x.lock", "extraction"):
        assert json.loads((tmp_path / "x.lock").read_text())["pid"] == os.getpid()
    assert f"(pid {dead.pid}) is gone; taking the folder over" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
