"""Fault injection on `jaxsae extract`: SIGKILL at random points, a full disk, two extractions on one folder,
non-finite activations. Each case: one clear message, nothing lost, nothing that looks complete when it is not."""

from __future__ import annotations

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
from safetensors.torch import load_file, save_file

from extract.errors import ExtractError
from extract.run import extract
from extract.testing import write_counts_h5ad, write_geneformer_folder
from jaxsae.store import open_store, verify_store

REPO = Path(__file__).resolve().parents[1]
GENES = [f"ENSG{n:011d}" for n in range(1, 61)]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    adata = write_counts_h5ad(d / "cells.h5ad", 160, GENES, mean=3.0)
    model = write_geneformer_folder(d / "model", GENES, n_layers=2, max_positions=64)
    return adata, model


def extract_in_process(adata, model, out):
    """What `jaxsae extract` with `cli_args` does, in this process (no interpreter start, no second import)."""
    return extract(adata, model, out, layers=[0, 1], cells_per_commit=8, batch_size=4, shard_rows=1024,
                   chunk_rows=256, device="cpu", progress_bar=False)


@pytest.fixture(scope="module")
def reference(case, tmp_path_factory):
    """The uninterrupted extraction of `case`, read only by the tests that compare against it."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    extract_in_process(*case, out)
    return out


def cli_args(adata, model, out, *extra):
    return ["extract", str(adata), str(model), str(out), "--layers", "0,1", "--cells-per-commit", "8",
            "--batch-size", "4", "--shard-rows", "1024", "--chunk-rows", "256", "--device", "cpu",
            "--no-progress-bar", *extra]


def jaxsae(*args) -> list[str]:
    return [sys.executable, "-m", "jaxsae.cli", *map(str, args)]


def stores_of(out: Path) -> list[Path]:
    return sorted(p.parent.relative_to(out) for p in out.glob("layer_*/*/manifest.json"))


def assert_same_extraction(reference: Path, out: Path) -> None:
    """Every store of `out` holds bitwise the rows, metadata, row count, norm sums and progress of `reference`."""
    assert stores_of(out) == stores_of(reference) and len(stores_of(out)) == 6
    for rel in stores_of(reference):
        ref, new = open_store(reference / rel), open_store(out / rel)
        assert (new.n_rows, new.progress, new.norm) == (ref.n_rows, ref.progress, ref.norm), rel
        np.testing.assert_array_equal(new.read_rows(0, new.n_rows), ref.read_rows(0, ref.n_rows))
        for name, values in ref.read_metadata(0, ref.n_rows).items():
            np.testing.assert_array_equal(new.read_metadata(0, new.n_rows)[name], values)
    assert json.loads((out / "extraction.json").read_text())["complete"] is True
    assert sorted(p.name for p in out.iterdir()) == ["extraction.json", "layer_0", "layer_1", "skipped_cells.json"]
    assert not [p for p in out.rglob("*") if p.name.endswith((".tmp", ".lock", ".__lock"))]


def looks_incomplete(out: Path) -> None:
    """Nothing in `out` claims to be finished: no index, and some store short of its last cell."""
    assert not (out / "extraction.json").exists()
    assert not all(open_store(out / rel).is_complete for rel in stores_of(out)) if stores_of(out) else True


def cells_done(manifest: Path) -> int:
    try:
        return json.loads(manifest.read_text())["progress"].get("cells_done", 0)
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


@pytest.mark.e2e  # extraction processes killed at 3 points and rerun: ~30 s
def test_sigkill_at_random_points_then_rerun_is_bitwise_identical(case, reference, tmp_path):
    adata, model = case
    rng = np.random.default_rng(7)  # random kill points: after store S committed window W, plus 0-40 ms
    interrupted = 0
    for trial in range(5):
        store = stores_of(reference)[rng.integers(6)]
        window_end = 8 * int(rng.integers(1, 20))
        delay = rng.uniform(0.0, 0.04)
        out = tmp_path / f"killed_{trial}"
        child = subprocess.Popen(jaxsae(*cli_args(adata, model, out)), env=ENV, stderr=subprocess.DEVNULL)
        while cells_done(out / store / "manifest.json") < window_end and child.poll() is None:
            time.sleep(0.002)
        time.sleep(delay)
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            if (out / "extraction.json").exists():  # killed after finishing: then everything is complete
                assert all(open_store(out / rel).is_complete for rel in stores_of(out))
            else:
                interrupted += 1
        extract_in_process(adata, model, out)  # the rerun: the same command, in-process
        assert_same_extraction(reference, out)
    assert interrupted >= 4, f"only {interrupted} of 5 kills landed during the extraction"


def test_disk_full_is_one_line_marks_nothing_complete_and_the_rerun_completes(case, reference, tmp_path):
    adata, model = case
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        out = disk / "out"
        run = subprocess.run(jaxsae(*cli_args(adata, model, out)), env=ENV, capture_output=True, text=True)
        assert run.returncode == 2
        [line] = run.stderr.splitlines()
        assert line.startswith(f"error: writing the stores under {out} failed (") and "No space left on device" in line
        assert line.endswith("free disk space (or fix the cause), then rerun the same jaxsae extract command: it "
                             "resumes where the stores stopped")
        looks_incomplete(out)
        assert not (out / "extract.lock").exists()
        for rel in stores_of(out):  # what was committed before the disk filled up is intact
            report = verify_store(out / rel)
            assert len(report.nonfinite_rows) == 0 and report.problems in ([], [report.manifest.status]), report.problems
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        extract_in_process(adata, model, out)
        assert_same_extraction(reference, out)
    finally:
        subprocess.run(["umount", str(disk)])


HOLDER = textwrap.dedent("""
    import os, sys, time
    from jaxsae.store import StoreWriter
    original = StoreWriter.commit
    def held_commit(self, progress=None):  # the first commit waits until the test lets it go
        while progress and not os.path.exists(sys.argv[1]):
            time.sleep(0.05)
        original(self, progress)
    StoreWriter.commit = held_commit
    from jaxsae.cli import main
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.e2e  # two extraction processes: ~12 s
def test_two_extraction_processes_on_one_folder_one_runs_the_other_is_refused(case, tmp_path):
    adata, model = case
    out, go = tmp_path / "out", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", HOLDER, str(go), *cli_args(adata, model, out)], env=ENV,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "extract.lock").exists():
            assert first.poll() is None and time.time() < deadline, "the first extraction never took the lock"
            time.sleep(0.02)
        second = subprocess.run(jaxsae(*cli_args(adata, model, out)), env=ENV, capture_output=True, text=True)
        assert second.returncode == 2
        assert second.stderr.splitlines() == [
            f"error: out_dir: {out} is in use by another extraction (pid {first.pid} on this host, since "
            f"{json.loads((out / 'extract.lock').read_text())['since']}); wait for it to finish or stop it, or "
            "choose another out_dir"]
    finally:
        go.touch()
    with first:
        assert first.wait(timeout=300) == 0, first.stderr.read()
    assert json.loads((out / "extraction.json").read_text())["complete"] is True
    assert not (out / "extract.lock").exists()


def test_non_finite_activations_are_refused_at_commit(case, tmp_path):
    adata, model = case
    broken = tmp_path / "model"
    broken.mkdir()
    for f in model.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights = load_file(broken / "model.safetensors")
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    weights[key][4 + 40] = torch.nan  # one gene's embedding: every cell expressing it turns NaN
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    out = tmp_path / "out"
    with pytest.raises(ExtractError, match=r"append got a NaN or Inf .*nothing was appended.*none is marked "
                                           r"complete$") as refused:
        extract(adata, broken, out, layers=[0, 1], cells_per_commit=8, batch_size=4, device="cpu",
                progress_bar=False)
    assert "\n" not in str(refused.value)
    looks_incomplete(out)
    for rel in stores_of(out):
        report = verify_store(out / rel)
        assert len(report.nonfinite_rows) == 0 and report.problems == [report.manifest.status]


def test_an_extraction_is_refused_while_another_holds_the_folder(case, tmp_path):
    from extract.run import ExtractionLock

    adata, model = case
    out = tmp_path / "out"
    with ExtractionLock(out):
        holder = json.loads((out / "extract.lock").read_text())
        with pytest.raises(ExtractError, match=rf"out_dir: {out} is in use by another extraction \(pid "
                                               rf"{os.getpid()} on this host, since {holder['since']}\)"):
            extract(adata, model, out, layers=[0], device="cpu", progress_bar=False)
        assert [p.name for p in out.iterdir()] == ["extract.lock"]  # the refused one wrote nothing
    assert list(out.iterdir()) == []
