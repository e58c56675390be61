"""Three `jaxsae extract --worker i/3` processes on demo cells split over three .h5ad files, one SIGKILLed mid-way
and rerun: the dataset equals a single-process extraction bit for bit (rows, metadata, statistics), and training
on it is bitwise training on the single-process store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata
import numpy as np
import pytest

import jaxsae
from extract.demo import prepare_demo
from extract.run import extract
from jaxsae.store import StoreError, open_store
from jaxsae.train import load_config
from jaxsae.train.loop import train

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
FILE_CELLS = [41, 37, 42]  # the first 120 demo cells, split over three files
SETTINGS = dict(cells_per_commit=4, batch_size=4, shard_rows=1024, chunk_rows=256, device="cpu")
FLAGS = ["--cells-per-commit", "4", "--batch-size", "4", "--shard-rows", "1024", "--chunk-rows", "256",
         "--device", "cpu", "--no-progress-bar"]


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("workers")
    adata_path, model = prepare_demo(d / "cache")
    cells = anndata.read_h5ad(adata_path)
    folder = d / "atlas"
    folder.mkdir()
    start = 0
    for i, n in enumerate(FILE_CELLS):
        cells[start : start + n].copy().write_h5ad(folder / f"donor_{i}.h5ad")
        start += n
    return folder, model


def worker(folder, model, out, i):
    return [sys.executable, "-m", "jaxsae.cli", "extract", str(folder), str(model), str(out), "--worker", f"{i}/3",
            *FLAGS]


def cells_done(manifest: Path) -> int:
    try:
        return json.loads(manifest.read_text())["progress"]["cells_done"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


@pytest.mark.e2e  # three extraction processes, a kill, a rerun and two small trainings: ~60 s
def test_three_workers_one_killed_and_rerun_equal_one_process_bit_for_bit_and_train_the_same(demo_files, tmp_path):
    folder, model = demo_files
    single = open_store(extract(folder, model, tmp_path / "single", progress_bar=False, **SETTINGS)[3])
    out = tmp_path / "dataset"
    logs = [open(tmp_path / f"worker_{i}.log", "w") for i in range(3)]
    workers = [subprocess.Popen(worker(folder, model, out, i), env=ENV, stdout=logs[i], stderr=subprocess.STDOUT)
               for i in range(3)]
    victim = out / "layer_3" / "tokens" / "part-0001-of-0003" / "manifest.json"
    deadline = time.time() + 300
    while workers[1].poll() is None and time.time() < deadline:
        done = cells_done(victim)
        first = json.loads(victim.read_text())["progress"]["cells_first"] if done >= 0 else None
        if first is not None and done >= first + 8:  # two windows committed
            break
        time.sleep(0.002)
    assert workers[1].poll() is None, "worker 1 finished before it could be killed"
    os.kill(workers[1].pid, signal.SIGKILL)
    codes = [w.wait(timeout=300) for w in workers]
    for log in logs:
        log.close()
    assert codes[0] == codes[2] == 0 and codes[1] == -signal.SIGKILL, [(tmp_path / f"worker_{i}.log").read_text()
                                                                      for i in range(3)]
    record = json.loads((out / "layer_3" / "tokens" / "dataset.json").read_text())
    assert record["complete"] is False and not open_store(victim.parent).is_complete
    with pytest.raises(StoreError, match=r"part part-0001-of-0003 is incomplete .*--worker 1/3"):
        open_store(out / "layer_3" / "tokens")

    rerun = subprocess.run(worker(folder, model, out, 1), env=ENV, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"layer 3 tokens    {out}/layer_3/tokens/part-0001-of-0003" in rerun.stdout
    for kind in ("tokens", "cell_mean"):
        record = json.loads((out / "layer_3" / kind / "dataset.json").read_text())
        assert record["complete"] is True and [p["cells"][1] for p in record["parts"]][-1] == sum(FILE_CELLS)
        dataset = open_store(out / "layer_3" / kind)
        reference = open_store(tmp_path / "single" / "layer_3" / kind)
        assert dataset.n_rows == reference.n_rows and dataset.norm == reference.norm
        np.testing.assert_array_equal(dataset.read_rows(0, dataset.n_rows), reference.read_rows(0, reference.n_rows))
        for name, values in reference.read_metadata(0, reference.n_rows).items():
            np.testing.assert_array_equal(dataset.read_metadata(0, dataset.n_rows)[name], values)

    common = ["progress=false", f"sae.d_model={single.d_model}", "sae.n_latents=64", "sae.k=4", "steps=10",
              "log_every=5", "data.batch_rows=256", "data.window_blocks=4"]
    trained = [jaxsae.load(train(load_config(None, [f"data.store={store}", f"run_dir={tmp_path / name}", *common]))
                           .dictionaries[0]) for name, store in (("on_single", single.path),
                                                                 ("on_dataset", out / "layer_3" / "tokens"))]
    for name in trained[0].params:
        np.testing.assert_array_equal(trained[1].params[name], trained[0].params[name], err_msg=name)
