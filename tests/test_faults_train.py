"""Faults injected into training: damaged checkpoints, NaN rows in a store, changed settings on resume, SIGKILL.
Each case: one clear message, nothing lost, nothing that looks complete when it is not."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorstore as ts
from safetensors.numpy import load_file

import jaxsae
from jaxsae.cli import main
from jaxsae.data.synthetic import SynthConfig, synthesize
from jaxsae.dictionary import DictionaryError
from jaxsae.store import open_store
from jaxsae.train import checkpoint as ckpt
from jaxsae.train import load_config
from jaxsae.train.loop import make_order, train
from jaxsae.train.metrics import read_metrics

STEPS = 14
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
                    "PYTHONPATH": os.pathsep.join([REPO, *filter(None, [os.environ.get("PYTHONPATH")])])}


def _args(store, run_dir, *extra):
    # d=32, n=512: the biggest checkpoint data file holds ~200 KB, room for 64 KiB of garbage inside it.
    # `jaxsae train` flags, which load_config reads too
    return ["--" + setting for setting in [
        f"data.store={store}", f"run_dir={run_dir}", "progress=false", "sae.d_model=32", "sae.n_latents=512",
        "sae.k=4", f"steps={STEPS}", "log_every=3", "checkpoint_every=5", "keep_checkpoints=2",
        "data.batch_rows=64", "data.window_blocks=2", "mesh.data=2", "mesh.latent=2", *extra]]


def _dictionaries(run_dir) -> list[dict]:
    folders = sorted(os.listdir(os.path.join(run_dir, "dictionaries")))
    return [load_file(os.path.join(run_dir, "dictionaries", f, "dictionary.safetensors")) for f in folders]


def _assert_bitwise(got: list[dict], want: list[dict]):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"not bitwise equal: {key}")


def _jaxsae_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def _write_rows(store, rows, value):
    acts = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(store, "acts")}}).result()
    for row in rows:
        acts[int(row)].write(np.full(acts.shape[1], value, acts.dtype.numpy_dtype)).result()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("faults") / "store",
                      SynthConfig(rows=2048, d_model=32, n_features=64, seed=3), chunk=256)


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    """The uninterrupted run's final dictionaries."""
    run_dir = tmp_path_factory.mktemp("faults") / "reference"
    train(load_config(None, _args(store, run_dir)))
    return _dictionaries(run_dir)


@pytest.fixture(scope="module")
def stopped(store, tmp_path_factory):
    """A run folder stopped after step 5 (one checkpoint), never touched by the tests that share it."""
    run_dir = tmp_path_factory.mktemp("faults") / "stopped"
    train(load_config(None, _args(store, run_dir)), stop_after=5)
    return run_dir


@pytest.fixture(scope="module")
def stopped_at_10(store, tmp_path_factory):
    """A run folder stopped after step 10 (checkpoints 5 and 10); tests damage copies of it, never it."""
    run_dir = tmp_path_factory.mktemp("faults") / "stopped_at_10"
    train(load_config(None, _args(store, run_dir)), stop_after=10)
    return run_dir


def _damage(path, kind: str) -> None:
    """Damage the checkpoint folder `path` as a disk or a user would: in place, truncated, deleted, or its arrays
    replaced by others that decode (what damage the file format cannot see looks like)."""
    if kind == "deleted":
        shutil.rmtree(path)
        return
    if kind == "replaced":
        shutil.rmtree(path / "state")
        shutil.copytree(path.parent / "5" / "state", path / "state")
        return
    files = [os.path.join(root, f) for root, _, names in os.walk(path / "state") for f in names]
    biggest = max(files, key=os.path.getsize)
    size = os.path.getsize(biggest)
    if kind == "garbled":  # same size, other bytes
        with open(biggest, "r+b") as f:
            f.seek(size // 4)
            f.write(np.random.default_rng(0).bytes(min(64 * 1024, size // 2)))
        assert os.path.getsize(biggest) == size
    else:
        os.truncate(biggest, size // 3)


@pytest.mark.parametrize("kind, message", [
    ("garbled", "could not be restored"),  # zstd-compressed chunks: garbage in place fails to decode
    ("replaced", "is damaged (checksum of "),
    ("truncated", "could not be restored"),
    ("deleted", None),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(stopped_at_10, reference, tmp_path, capsys,
                                                                     kind, message):
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_at_10, run_dir)  # checkpoints 5 and 10
    newest = run_dir / ckpt.CHECKPOINT_DIR / "10"
    _damage(newest, kind)
    capsys.readouterr()

    assert main(["train", str(run_dir / "config.json")]) == 0
    lines = _jaxsae_lines(capsys.readouterr().err)
    resumed = f"jaxsae: resuming from step 5 of {STEPS} (checkpoint {run_dir / ckpt.CHECKPOINT_DIR / '5'})"
    if message is None:
        assert lines == [resumed]
    else:
        assert len(lines) == 2 and lines[1] == resumed, lines
        assert lines[0].startswith(f"jaxsae: checkpoint {newest} ") and message in lines[0], lines
        assert lines[0].endswith("; falling back to step 5"), lines
        assert os.listdir(run_dir / ckpt.SKIPPED_DIR)[0].startswith("10-")
    _assert_bitwise(_dictionaries(run_dir), reference)


def test_no_usable_checkpoint_is_one_line_and_never_a_silent_restart(stopped_at_10, reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(stopped_at_10, run_dir)
    for step in ("5", "10"):
        _damage(run_dir / ckpt.CHECKPOINT_DIR / step, "garbled" if step == "10" else "truncated")
    command = [sys.executable, "-m", "jaxsae.cli", "train", str(run_dir / "config.json")]

    first = subprocess.run(command, env=ENV, capture_output=True, text=True, cwd=tmp_path)
    assert first.returncode == 2, first.stderr[-3000:]
    assert "Traceback" not in first.stderr, first.stderr[-3000:]
    lines = _jaxsae_lines(first.stderr)
    assert len(lines) == 3, lines  # one line per damaged checkpoint, then the error
    assert lines[-1].startswith("error: no checkpoint of the run") and "--restart" in lines[-1]
    assert not (run_dir / "run.json").exists()

    # The rerun must not quietly start again from step 0 ...
    assert main(["train", str(run_dir / "config.json")]) == 2
    assert not (run_dir / "run.json").exists() and not os.listdir(run_dir / ckpt.CHECKPOINT_DIR)
    # ... unless asked to: then it trains from scratch to the uninterrupted run's result.
    assert main(["train", str(run_dir / "config.json"), "--restart"]) == 0
    _assert_bitwise(_dictionaries(run_dir), reference)
    assert [r["step"] for r in read_metrics(str(run_dir))] == [3, 6, 9, 12, 14]


def test_nan_rows_in_the_store_stop_the_run_naming_step_and_rows(tmp_path, capfd):
    store = synthesize(tmp_path / "store", SynthConfig(rows=2048, d_model=32, n_features=64, seed=4), chunk=256)
    run_dir = tmp_path / "run"
    args = _args(store, run_dir)
    cfg = load_config(None, args)
    order = make_order(cfg, open_store(store))
    bad_rows = np.sort(order.batch_row_ids(0, 7)[:10])  # rows of the 8th step, after the step-5 checkpoint
    _write_rows(store, bad_rows, np.nan)
    capfd.readouterr()

    assert main(["train", *args]) == 2
    err = capfd.readouterr().err
    lines = _jaxsae_lines(err)
    assert len(lines) == 1, err
    assert lines[0].startswith(f"error: training stopped: non-finite loss or gradient at step 8 of {STEPS}; "
                               f"the batch holds 10 non-finite store rows ({', '.join(map(str, bad_rows))}) of "
                               f"{store}"), lines[0]
    assert not (run_dir / "run.json").exists() and not (run_dir / "dictionaries").exists()
    assert sorted(os.listdir(run_dir / ckpt.CHECKPOINT_DIR)) == ["5"]
    import jax

    from jaxsae.train import mesh as mesh_lib

    checkpoints = ckpt.RunCheckpoints(str(run_dir), keep=2)
    restored = checkpoints.restore_latest(ckpt.abstract_state(cfg, mesh_lib.make_mesh(cfg.mesh)))
    checkpoints.close()
    assert restored.step == 5
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(jax.device_get(restored.state)))


@pytest.mark.parametrize("change, expected", [
    ("data.store={other}", "data.store: \"{store}\" -> \"{other}\""),
    ("optim.lr=1e-3", "optim.lr: 0.0004 -> 0.001"),
    ("steps=20", "steps: 14 -> 20"),
    ("sae.k=8", "sae.k: 4 -> 8"),
    ("sae.n_latents=256", "sae.n_latents: 512 -> 256"),
    ('members=[{"seed": 1}]', "members[0].seed: (unset) -> 1"),
    ("data.seed=5", "data.seed: 0 -> 5"),
    ("total_rows=1280", "steps: 14 -> 20"),  # steps given as rows: compared as the number of steps
])
def test_resume_with_a_result_changing_setting_is_refused_naming_it(store, stopped, tmp_path_factory, capsys,
                                                                   change, expected):
    other = tmp_path_factory.getbasetemp() / "other-store"
    if not other.exists():  # the same width, another store
        synthesize(other, SynthConfig(rows=2048, d_model=32, n_features=64, seed=9), chunk=256)
    config_before = (stopped / "config.json").read_text()
    args = [a for a in _args(store, stopped) if not (change.startswith("total_rows") and a.startswith("--steps="))]
    capsys.readouterr()

    assert main(["train", *args, "--" + change.replace("{other}", str(other))]) == 2
    err = capsys.readouterr().err
    assert len(_jaxsae_lines(err)) == 1, err
    assert err.startswith(f"error: run_dir: {stopped} holds an unfinished run with other settings ("), err
    assert expected.format(store=store, other=other) in err, err
    assert f"jaxsae train {stopped / 'config.json'}" in err
    assert (stopped / "config.json").read_text() == config_before


def test_every_differing_field_is_named(store, stopped, capsys):
    assert main(["train", *_args(store, stopped), "--optim.lr=1e-3", "--data.seed=5", "--seed=2"]) == 2
    err = capsys.readouterr().err
    assert "(data.seed: 0 -> 5; optim.lr: 0.0004 -> 0.001; seed: 0 -> 2)" in err, err


def test_neutral_changes_resume_and_a_finished_folder_has_no_leftovers(store, stopped, reference, tmp_path,
                                                                      capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(stopped, run_dir)
    # Leftovers of a trainer killed while writing: a half-written dictionary and a temporary JSON file.
    os.makedirs(run_dir / "dictionaries" / ".tmp-dictionary-abc123")
    (run_dir / ".tmp-abc123-config.json").write_text("{")
    capsys.readouterr()

    # Another run_dir spelling, mesh, log cadence, checkpoint cadence, the same store moved elsewhere: none
    # changes the result.
    moved = tmp_path / "moved-store"
    shutil.copytree(store, moved)
    assert main(["train", *_args(moved, run_dir, "mesh.data=4", "mesh.latent=1", "log_every=7",
                                 "checkpoint_every=4", "keep_checkpoints=3")]) == 0
    assert f"jaxsae: resuming from step 5 of {STEPS}" in capsys.readouterr().err
    got = _dictionaries(run_dir)
    for a, b in zip(got, reference):  # another mesh: the same up to float reassociation
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=2e-5, err_msg=key)

    leftovers = [os.path.relpath(os.path.join(root, name), run_dir) for root, dirs, files in os.walk(run_dir)
                 for name in dirs + files if name.endswith(".tmp") or name.startswith(".tmp-")]
    assert leftovers == []
    for name in ("run.json", "config.json"):
        assert json.loads((run_dir / name).read_text())["schema_version"] == 1
    assert load_config(str(run_dir / "config.json")).data.store == str(moved)  # its own config reads back


def test_loading_from_an_unfinished_run_says_so(stopped, tmp_path):
    for path in (stopped, stopped / "dictionaries" / "member_000"):
        with pytest.raises(DictionaryError, match="this run has not finished") as refused:
            jaxsae.load(path)
        assert f"jaxsae train {stopped / 'config.json'}" in str(refused.value)


def test_a_newer_run_folder_schema_is_refused(store, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"schema_version": 2}))
    assert main(["train", *_args(store, run_dir)]) == 2
    err = capsys.readouterr().err
    assert "schema_version 2 is newer than this jaxsae reads (1); upgrade jaxsae" in err, err


def _committed(run_dir) -> list[str]:
    directory = run_dir / ckpt.CHECKPOINT_DIR
    return [name for name in os.listdir(directory) if name.isdigit()] if directory.is_dir() else []


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkilled_cli_trainer_resumes_bitwise(store, reference, tmp_path, capsys, monkeypatch, seed):
    run_dir = tmp_path / "run"
    args = _args(store, run_dir, "checkpoint_every=1")  # saves in flight most of the time
    with subprocess.Popen([sys.executable, "-m", "jaxsae.cli", "train", *args], env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 180
        while not _committed(run_dir):  # then kill at a point drawn from a fixed seed
            assert proc.poll() is None, f"trainer exited early: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        time.sleep(random.Random(seed).uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "the trainer finished before the kill"
    assert not (run_dir / "run.json").exists()
    with pytest.raises(DictionaryError, match="has not finished"):
        jaxsae.load(run_dir / "dictionaries" / "member_000")

    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", str(run_dir / "config.json")]) == 0  # the rerun: the same command, in-process
    err = capsys.readouterr().err
    assert any(line.startswith("jaxsae: resuming from step ") for line in err.splitlines()), err
    _assert_bitwise(_dictionaries(run_dir), reference)
    assert [r["step"] for r in read_metrics(str(run_dir))] == [3, 6, 9, 12, 14]


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory):
    """Two stores read as one (`data.store A,B`: the reader a dataset folder of extraction workers also uses)."""
    folder = tmp_path_factory.mktemp("faults_parts")
    return ",".join(str(synthesize(folder / f"part{i}", SynthConfig(rows=1024, d_model=32, n_features=64, seed=i),
                                   chunk=256)) for i in (4, 5))


def test_sigkilled_trainer_on_several_stores_resumes_bitwise(two_stores, tmp_path, capsys, monkeypatch):
    """Training on parts read as one store: the uninterrupted run's dictionaries, bitwise, after SIGKILL + rerun."""
    reference = tmp_path / "reference"
    train(load_config(None, _args(two_stores, reference)))
    run_dir = tmp_path / "run"
    with subprocess.Popen([sys.executable, "-m", "jaxsae.cli", "train", *_args(two_stores, run_dir)], env=ENV,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 180
        while not _committed(run_dir):  # the first checkpoint (step 5), then kill mid-run
            assert proc.poll() is None, f"trainer exited early: {proc.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL and not (run_dir / "run.json").exists()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["train", str(run_dir / "config.json")]) == 0
    assert "jaxsae: resuming from step " in capsys.readouterr().err
    _assert_bitwise(_dictionaries(run_dir), _dictionaries(reference))
