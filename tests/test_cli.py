"""The `jaxsae` CLI: the verbs, and bad input refused with one clear message before anything is written."""

from __future__ import annotations

import os

import pytest

from jaxsae.cli import main
from jaxsae.data.synthetic import SynthConfig, synthesize


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("cli") / "store",
                      SynthConfig(rows=4_096, d_model=16, n_features=32, active_per_row=2))


def test_synth_store_info_train(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["synth", str(out), "--rows", "3000", "--d-model", "8", "--n-features", "16"]) == 0
    assert main(["store", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "3000" in info or "3,000" in info
    config = tmp_path / "c.toml"
    config.write_text(f'steps = 6\nlog_every = 3\nprogress = false\n[sae]\nd_model = 8\nn_latents = 16\nk = 2\n'
                      f'[data]\nstore = "{out}"\nbatch_rows = 256\n')
    assert main(["train", str(config), f"--run_dir={tmp_path / 'run'}", "--optim.lr", "1e-3"]) == 0
    printed = capsys.readouterr().out
    assert "dictionary:" in printed and "member 0: fvu=" in printed
    assert os.path.isfile(tmp_path / "run" / "dictionaries" / "member_000" / "dictionary.safetensors")


@pytest.mark.parametrize("overrides, expected", [
    (["data.store={missing}"], "data.store"),
    (["sae.d_model=32"], "sae.d_model=32 does not match"),
    (["sae.k=64", "sae.n_latents=32"], "sae.k"),
    (["optim.lr=-1"], "optim.lr"),
    (["sae.architecture=wavelet"], "unknown architecture 'wavelet'"),
    (["sae.kk=3"], "Unrecognized options: --sae.kk=3; Perhaps you meant: --sae.k INT"),
    (["hparams.l1_coeff=0.1"], "hparams.l1_coeff: not a hyperparameter of topk"),
    (['members=[{"k": 99}]'], "members[0].k"),
    (["mesh.latent=3"], "mesh"),
    (["data.batch_rows=100000"], "data.batch_rows"),
    (["steps=abc"], "Error parsing --steps"),
])
def test_bad_input_is_refused_before_any_work(store, tmp_path, capsys, overrides, expected):
    run_dir = tmp_path / "run"
    args = [f"--data.store={store}", f"--run_dir={run_dir}", "--sae.d_model=16", "--sae.n_latents=32", "--sae.k=4",
            "--steps=5", "--no_progress"]
    args += ["--" + o.replace("{missing}", str(tmp_path / "nope")) for o in overrides]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not run_dir.exists()


def test_missing_config_file_is_refused(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_train_on_a_run_folders_config_resumes_it_from_anywhere(store, tmp_path, monkeypatch):
    from jaxsae.train import load_config
    from jaxsae.train.loop import train
    from jaxsae.train.metrics import read_metrics

    run_dir = tmp_path / "run"
    monkeypatch.chdir(os.path.dirname(store))  # the store and the run folder given relative to this folder
    cfg = load_config(None, [f"data.store={os.path.basename(store)}", f"run_dir={os.path.relpath(run_dir)}",
                             "sae.d_model=16", "sae.n_latents=32", "sae.k=4", "steps=8", "log_every=2",
                             "checkpoint_every=2", "progress=false", "data.batch_rows=256"])
    train(cfg, stop_after=4)
    assert not (run_dir / "run.json").exists()
    monkeypatch.chdir(tmp_path.parent)  # a different working directory than the one the run started in
    assert main(["train", str(run_dir / "config.json")]) == 0
    assert (run_dir / "run.json").exists()
    assert [r["step"] for r in read_metrics(str(run_dir))] == [2, 4, 6, 8]


def test_the_jax_side_never_imports_torch():
    import subprocess
    import sys

    code = ("import contextlib, io, sys, jaxsae, jaxsae.cli, jaxsae.train.loop, jaxsae.dictionary, jaxsae.data.stream\n"
            "for verb in (['--help'], ['train', '--help'], ['extract', '--help'], ['store', 'add-genes', '--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "        jaxsae.cli.main(verb)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
