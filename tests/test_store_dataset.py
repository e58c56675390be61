"""Datasets: part stores (or a list of stores) read as one store, row for row and statistic for statistic like the
single store they were cut from, so training on them is bitwise training on that store."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxsae
from jaxsae.errors import ConfigError
from jaxsae.store import StoreError, StoreWriter, open_store
from jaxsae.train import load_config
from jaxsae.train.loop import train

D = 16
WINDOWS = [157, 301, 96, 433, 250, 211, 380, 144]  # rows per commit window (not multiples of the chunk rows)
CUTS = [0, 3, 5, 8]  # part i holds windows CUTS[i]:CUTS[i + 1]


def window_rows(w: int) -> np.ndarray:
    """[WINDOWS[w], D] float32 rows of window w, with a non-zero mean and varied scale."""
    rng = np.random.default_rng(w)
    return (rng.normal(size=(WINDOWS[w], D)) * rng.uniform(0.5, 3, size=D) + 0.3).astype(np.float32)


def write_store(path, windows, first_window: int, part: str | None = None):
    """A store committing one window at a time with extraction-like progress (cells = windows here)."""
    total = first_window + len(windows)
    extra = {"part": part, "cells_first": first_window} if part else {}
    writer = StoreWriter.create(path, d_model=D, shard_rows=256, chunk_rows=64,
                                progress={"cells_done": first_window, "cells_total": total, **extra})
    for w in windows:
        writer.append(window_rows(w), cell_index=np.full(WINDOWS[w], w), position=np.arange(WINDOWS[w]))
        writer.commit(progress={"cells_done": w + 1, "cells_total": total, **extra})
    writer.close()
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("dataset")
    single = write_store(d / "single", range(len(WINDOWS)), 0)
    folder = d / "dataset"
    parts = []
    for i in range(3):
        name = f"part-{i:04d}-of-0003"
        parts.append({"path": name, "cells": [CUTS[i], CUTS[i + 1]]})
        write_store(folder / name, range(CUTS[i], CUTS[i + 1]), CUTS[i], part=name)
    (folder / "dataset.json").write_text(json.dumps({"format": "jaxsae dataset", "complete": True, "n_parts": 3,
                                                     "parts": parts, "source": {"kind": "tokens"}}))
    return single, folder


def test_a_dataset_reads_row_for_row_like_the_single_store_with_bitwise_statistics(stores):
    single, folder = stores
    one, many = open_store(single), open_store(folder)
    listed = open_store(",".join(str(folder / f"part-{i:04d}-of-0003") for i in range(3)))
    for store in (many, listed):
        assert (store.n_rows, store.d_model, store.chunk_rows) == (one.n_rows, D, 64)
        assert store.norm == one.norm  # exact sums: bitwise, not approximately
        np.testing.assert_array_equal(store.read_rows(0, store.n_rows), one.read_rows(0, one.n_rows))
        straddling = [(500, 600), (0, 64), (1000, 1400)]  # ranges across the part boundaries (rows 554 and 1237)
        for a, b in zip(store.read_ranges(straddling), one.read_ranges(straddling)):
            np.testing.assert_array_equal(a, b)
        picks = np.array([1971, 0, 554, 553, 1237, 1236, 17])
        np.testing.assert_array_equal(store.read_rows_at(picks), one.read_rows_at(picks))
        for name, values in one.read_metadata(0, one.n_rows).items():
            np.testing.assert_array_equal(store.read_metadata(0, store.n_rows)[name], values)
    assert many.is_complete and many.source == {"kind": "tokens"} and "parts" in many.describe()


def cfg(store, run_dir, *overrides):
    return load_config(None, [f"data.store={store}", f"run_dir={run_dir}", "progress=false", "sae.d_model=16",
                              "sae.n_latents=32", "sae.k=4", "steps=12", "log_every=6", "data.batch_rows=128",
                              "data.window_blocks=4", *overrides])


def test_training_on_a_dataset_or_a_list_of_stores_is_bitwise_training_on_the_single_store(stores, tmp_path):
    single, folder = stores
    listed = ",".join(str(folder / f"part-{i:04d}-of-0003") for i in range(3))
    results = [train(cfg(store, tmp_path / name)) for name, store in
               (("single", single), ("dataset", folder), ("listed", listed))]
    reference = jaxsae.load(results[0].dictionaries[0])
    for result in results[1:]:
        trained = jaxsae.load(result.dictionaries[0])
        for name in reference.params:
            np.testing.assert_array_equal(trained.params[name], reference.params[name], err_msg=name)


def parts_0_and_2(folder, dest):
    """A copy of the dataset `folder`'s dataset.json in `dest` with parts 0 and 2 written and part 1 absent."""
    dest.mkdir()
    (dest / "dataset.json").write_text((folder / "dataset.json").read_text())
    write_store(dest / "part-0000-of-0003", range(0, 3), 0, part="part-0000-of-0003")
    write_store(dest / "part-0002-of-0003", range(5, 8), 5, part="part-0002-of-0003")
    return dest


def test_a_dataset_with_a_missing_or_unfinished_part_is_refused_naming_the_part(stores, tmp_path):
    _, folder = stores
    broken = parts_0_and_2(folder, tmp_path / "broken")
    with pytest.raises(ConfigError, match=r"data.store: dataset .*broken: part part-0001-of-0003 \(cells 3 to 5\) is "
                                          r"missing; expected all 3 parts; run \(or rerun\) worker 1: the same jaxsae "
                                          r"extract command with --worker 1/3"):
        train(cfg(broken, tmp_path / "run"))
    writer = StoreWriter.create(broken / "part-0001-of-0003", d_model=D, shard_rows=256, chunk_rows=64,
                                progress={"cells_done": 3, "cells_total": 5})
    writer.append(window_rows(3))
    writer.commit(progress={"cells_done": 4, "cells_total": 5})
    with pytest.raises(StoreError, match=r"part part-0001-of-0003 is incomplete \(its extraction stopped at cell 4 "
                                         r"of 3 to 5\); .*worker 1: .*it resumes"):
        open_store(broken)


def test_stores_of_different_widths_are_not_read_as_one(stores, tmp_path):
    single, _ = stores
    with StoreWriter.create(tmp_path / "wide", d_model=D + 1, shard_rows=256, chunk_rows=64) as writer:
        writer.append(np.ones((10, D + 1), np.float32))
    with pytest.raises(StoreError, match=rf"store {tmp_path / 'wide'} has d_model=17, but .*single has 16; expected "
                                         r"every store of a dataset to share d_model"):
        open_store(f"{single},{tmp_path / 'wide'}")


def test_store_info_and_verify_describe_every_part_of_a_dataset_complete_or_not(stores, tmp_path, capsys):
    from jaxsae.cli import main

    _, folder = stores
    assert main(["store", "info", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "status     complete" in out
    assert "part       part-0001-of-0003  cells 3 to 5  683 rows  complete" in out
    assert main(["store", "verify", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "parts      3 of 3 complete; 1,972 committed rows read"
    assert out[-1].startswith("verify: OK: 3 parts complete")

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.json").write_text((folder / "dataset.json").read_text())
    write_store(broken / "part-0000-of-0003", range(0, 3), 0, part="part-0000-of-0003")
    writer = StoreWriter.create(broken / "part-0002-of-0003", d_model=D, shard_rows=256, chunk_rows=64,
                                progress={"cells_done": 5, "cells_total": 8})
    writer.append(window_rows(5))
    writer.commit(progress={"cells_done": 6, "cells_total": 8})
    assert main(["store", "info", str(broken)]) == 0  # described, not refused
    assert capsys.readouterr().out.splitlines() == [
        f"dataset    {broken}",
        "status     INCOMPLETE: 1 of 3 parts complete; 765 rows committed so far",
        "part       part-0000-of-0003  cells 0 to 3  554 rows  complete",
        "part       part-0001-of-0003  cells 3 to 5  -  missing",
        "part       part-0002-of-0003  cells 5 to 8  211 rows  INCOMPLETE: stopped at cell 6 of 5 to 8",
        "to do      part-0001-of-0003: run (or rerun) worker 1: the same jaxsae extract command with --worker 1/3, "
        "or the array task that is worker 1",
        "to do      part-0002-of-0003: run (or rerun) worker 2: the same jaxsae extract command with --worker 2/3, "
        "or the array task that is worker 2"]
    assert main(["store", "verify", str(broken)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "parts      1 of 3 complete; 765 committed rows read"
    assert [line for line in out if line.startswith("problem:")] == [
        "problem: part-0001-of-0003 (cells 3 to 5) is missing; run (or rerun) worker 1: the same jaxsae extract "
        "command with --worker 1/3, or the array task that is worker 1",
        "problem: part-0002-of-0003 (cells 5 to 8) is INCOMPLETE: stopped at cell 6 of 5 to 8; run (or rerun) "
        "worker 2: the same jaxsae extract command with --worker 2/3, or the array task that is worker 2"]
    assert out[-1] == f"verify: 2 problem(s) found in {broken}"


def test_a_part_with_a_corrupt_manifest_is_described_as_corrupt_not_refused(stores, tmp_path, capsys):
    from jaxsae.cli import main

    _, folder = stores
    broken = parts_0_and_2(folder, tmp_path / "corrupt")
    (broken / "part-0001-of-0003").mkdir()
    (broken / "part-0001-of-0003/manifest.json").write_text("{not json")
    assert main(["store", "info", str(broken)]) == 0  # described, not refused
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "status     INCOMPLETE: 2 of 3 parts complete; 1,289 rows committed so far"
    assert out[3].startswith("part       part-0001-of-0003  cells 3 to 5  -  CORRUPT: ")
    assert out[-1] == (f"to do      part-0001-of-0003: delete {broken / 'part-0001-of-0003'}, then run (or rerun) "
                       "worker 1: the same jaxsae extract command with --worker 1/3, or the array task that is worker 1")
    assert main(["store", "verify", str(broken)]) == 1
    assert "is CORRUPT: " in capsys.readouterr().out
    with pytest.raises(StoreError, match=r"part part-0001-of-0003 \(cells 3 to 5\) has a manifest that cannot be read"):
        open_store(broken)
