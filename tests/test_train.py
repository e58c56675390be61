"""The trainer end to end on real synthetic stores: recovery, members, metrics, run folders, saved dictionaries."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import jaxsae
from jaxsae.data.synthetic import SynthConfig, synthesize
from jaxsae.sae import builtin_names
from jaxsae.train import load_config
from jaxsae.train.loop import train
from jaxsae.train.metrics import read_metrics


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
    """d = 64, 512 true features, ~4 active per row."""
    return synthesize(tmp_path_factory.mktemp("synth") / "store", SynthConfig(rows=100_000, seed=0))


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("tiny") / "store",
                      SynthConfig(rows=8_192, d_model=16, n_features=48, active_per_row=3, seed=1))


def _cfg(store, run_dir, *overrides):
    return load_config(None, [f"data.store={store}", f"run_dir={run_dir}", "progress=false", *overrides])


def test_topk_recovers_the_true_features(synth_store, tmp_path):
    cfg = _cfg(synth_store, tmp_path / "run", "sae.d_model=64", "sae.n_latents=1024", "sae.k=4", "steps=1000", "mesh.data=1",
               "optim.lr=1e-3", "optim.warmup_steps=20", "data.batch_rows=1024", "log_every=100")
    result = train(cfg)
    recovery = jaxsae.feature_recovery(jaxsae.load_truth(synth_store), jaxsae.load(result.dictionaries[0]).decoder)
    assert recovery["frac_recovered"] >= 0.9, recovery
    assert recovery["mean_max_cos"] >= 0.95, recovery


@pytest.mark.slow
def test_relu_l1_recovers_the_true_features(synth_store, tmp_path):
    cfg = _cfg(synth_store, tmp_path / "run", "sae.architecture=relu", "sae.d_model=64", "sae.n_latents=1024",
               "steps=2000", "optim.lr=1e-3", "hparams.l1_coeff=0.2", "hparams.l1_warmup_steps=100",
               "data.batch_rows=1024", "log_every=500", "mesh.data=1")
    result = train(cfg)
    recovery = jaxsae.feature_recovery(jaxsae.load_truth(synth_store), jaxsae.load(result.dictionaries[0]).decoder)
    assert recovery["frac_recovered"] >= 0.9, recovery


@pytest.mark.parametrize("arch", builtin_names())
def test_every_architecture_trains_and_saves_a_loadable_dictionary(arch, tiny_store, tmp_path):
    cfg = _cfg(tiny_store, tmp_path / "run", f"sae.architecture={arch}", "sae.d_model=16", "sae.n_latents=64",
               "sae.k=4", "steps=120", "log_every=20", "data.batch_rows=256", "optim.lr=3e-3",
               "optim.warmup_steps=10")
    result = train(cfg)
    records = read_metrics(result.run_dir)
    assert [r["step"] for r in records] == list(range(20, 121, 20))
    assert records[-1]["fvu"] < records[0]["fvu"]
    for key in ("loss", "fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction", "rows_per_s",
                "density_log10_hist"):
        assert key in records[-1], key
    assert sum(records[-1]["density_log10_hist"]) + records[-1]["never_fired_in_window"] == 64
    # The saved dictionary works on RAW rows (normalisation folded in): its reconstruction error on store rows
    # matches what training reported, within the noise of a different sample.
    d = jaxsae.load(result.dictionaries[0])
    rows = jaxsae.open_store(tiny_store).read_rows(0, 2048)
    latents = d.encode(rows)
    assert latents.shape == (2048, 64) and (latents >= 0).all()
    err = rows - d.decode(latents)
    fvu = (err ** 2).sum() / ((rows - rows.mean(0)) ** 2).sum()
    assert abs(fvu - records[-1]["fvu"]) < 0.1 + 0.5 * records[-1]["fvu"], (fvu, records[-1]["fvu"])
    with open(os.path.join(result.run_dir, "run.json")) as f:
        assert json.load(f)["status"] == "complete"


def test_members_in_one_vmapped_step_equal_separate_runs(tiny_store, tmp_path):
    members = [{"k": 2, "lr": 1e-3}, {"k": 4, "lr": 3e-3}, {"k": 3, "lr": 2e-3, "seed": 5}, {"k": 4, "lr": 5e-4}]
    common = ["sae.d_model=16", "sae.n_latents=64", "sae.k=4", "steps=30", "log_every=10", "data.batch_rows=256",
              "mesh.data=1"]
    pack = train(_cfg(tiny_store, tmp_path / "pack", *common, f"members={json.dumps(members)}"))
    for i, member in enumerate(members):
        alone = train(_cfg(tiny_store, tmp_path / f"alone{i}", *common, f"members={json.dumps([member])}"))
        a, b = jaxsae.load(pack.dictionaries[i]), jaxsae.load(alone.dictionaries[0])
        for name in a.params:
            np.testing.assert_allclose(a.params[name], b.params[name], rtol=2e-4, atol=2e-5, err_msg=name)
        assert pack.metrics[i]["fvu"] == pytest.approx(alone.metrics[0]["fvu"], rel=1e-3)


def test_sharded_training_matches_one_device(tiny_store, tmp_path):
    common = ["sae.d_model=16", "sae.n_latents=64", "sae.k=4", "steps=20", "log_every=10", "data.batch_rows=256",
              'members=[{"k": 4}, {"k": 2}]']
    one = train(_cfg(tiny_store, tmp_path / "one", *common, "mesh.data=1"))
    mesh = train(_cfg(tiny_store, tmp_path / "mesh", *common, "mesh.data=2", "mesh.ens=2", "mesh.latent=2"))
    for i in range(2):
        a, b = jaxsae.load(one.dictionaries[i]), jaxsae.load(mesh.dictionaries[i])
        for name in a.params:
            np.testing.assert_allclose(a.params[name], b.params[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_finished_run_folder_is_not_overwritten(tiny_store, tmp_path):
    cfg = _cfg(tiny_store, tmp_path / "run", "sae.d_model=16", "sae.n_latents=32", "sae.k=2", "steps=5",
               "data.batch_rows=256")
    train(cfg)
    with pytest.raises(jaxsae.ConfigError, match="already holds a finished run"):
        train(cfg)


def test_tensorboard_event_files_are_written(tiny_store, tmp_path):
    cfg = _cfg(tiny_store, tmp_path / "run", "sae.d_model=16", "sae.n_latents=32", "sae.k=2", "steps=10",
               "log_every=5", "data.batch_rows=256", "tensorboard=true")
    train(cfg)
    events = os.listdir(tmp_path / "run" / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)
