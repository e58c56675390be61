"""The architecture contract end to end: a toy architecture defined in this file (ReLU with a plain L1 penalty,
an extra per-latent gain parameter and a per-latent buffer) is registered, and — with no other module touched —
trained by `jaxsae.train.train` on a latent-sharded mesh, checkpointed and resumed bitwise, saved, and loaded
with `jaxsae.load`."""

from __future__ import annotations

from typing import Annotated, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jaxsae
from jaxsae.data.synthetic import SynthConfig, synthesize
from jaxsae.errors import DictionaryError
from jaxsae.sae import Architecture, Axes, ConfigError, LossOut, Range, SAEConfig, register
from jaxsae.sae.collectives import psum
from jaxsae.train import checkpoint as ckpt
from jaxsae.train import mesh as mesh_lib
from jaxsae.train import load_config
from jaxsae.train.loop import train

D, N, STEPS = 16, 64, 8


class ToyHParams(NamedTuple):
    l1_coeff: Annotated[float, Range(0.0, 10.0)] = 0.05


def toy(cfg: SAEConfig) -> Architecture:
    """f = gain * ReLU((x - b_dec) W_enc + b_enc); loss = MSE + l1_coeff * mean_rows sum_i f_i."""

    def init(key, b_dec):
        W_dec = jax.random.normal(key, (cfg.n_latents, cfg.d_model))
        W_dec = W_dec / jnp.linalg.norm(W_dec, axis=-1, keepdims=True)
        return {"W_enc": W_dec.T, "b_enc": jnp.zeros(cfg.n_latents), "gain": jnp.ones(cfg.n_latents),
                "W_dec": W_dec, "b_dec": jnp.asarray(b_dec, jnp.float32)}

    def encode(params, buffers, x, hp, axes):
        pre = (x - params["b_dec"][None, :]) @ params["W_enc"] + params["b_enc"][None, :]
        return params["gain"][None, :] * jax.nn.relu(pre)

    def decode(params, latents, axes):
        return psum(latents @ params["W_dec"], axes.latent) + params["b_dec"][None, :]

    def loss(params, buffers, x, hp, ctx):
        f = encode(params, buffers, x, hp, ctx.axes)
        x_hat = decode(params, f, ctx.axes)
        rows = x.shape[0] * (1 if ctx.axes.data is None else jax.lax.axis_size(ctx.axes.data))
        mse = psum(jnp.sum(jnp.square(x - x_hat)), ctx.axes.data) / rows
        l1 = hp.l1_coeff * psum(psum(jnp.sum(f), ctx.axes.latent), ctx.axes.data) / rows
        fire_count = psum(jnp.sum((f > 0).astype(jnp.float32), axis=0), ctx.axes.data)
        l0 = psum(jnp.sum(fire_count), ctx.axes.latent) / rows
        mean_act = jax.lax.stop_gradient(psum(jnp.sum(f, axis=0), ctx.axes.data) / rows)
        buffers = {"mean_activation": 0.9 * buffers["mean_activation"] + 0.1 * mean_act}
        return mse + l1, LossOut({"mse": mse, "l1": l1}, x_hat, fire_count, l0, buffers)

    def fold_input_scale(params, scale):  # encoder sees (x_n - b_dec) W = (x - b_dec / scale)(scale W)
        matrix, vector = (np.reshape(scale, np.shape(scale) + (1,) * n) for n in (2, 1))
        return {**params, "W_enc": params["W_enc"] * matrix, "W_dec": params["W_dec"] / matrix,
                "b_dec": params["b_dec"] / vector}

    return Architecture(
        name="toy", init=init, init_buffers=lambda: {"mean_activation": jnp.zeros(cfg.n_latents)},
        encode=encode, decode=decode, loss=loss, fold_input_scale=fold_input_scale,
        hparams=ToyHParams, default_hparams=ToyHParams(),
        param_layout={"W_enc": 1, "b_enc": 0, "gain": 0, "W_dec": 0, "b_dec": None},
        buffer_layout={"mean_activation": 0}, uses_auxk=False, decoder_constraint="none",
        max_active_per_row=None, loss_terms=("l1", "mse"),
    )


register("toy", toy)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return str(synthesize(tmp_path_factory.mktemp("toy") / "store",
                          SynthConfig(rows=2048, d_model=D, n_features=48, seed=5), chunk=1024))


def _overrides(store, run_dir, *extra):
    return [f"data.store={store}", f"run_dir={run_dir}", "progress=false", "sae.architecture=toy",
            f"sae.d_model={D}", f"sae.n_latents={N}", f"steps={STEPS}", "log_every=4", "checkpoint_every=3",
            "data.batch_rows=64", "data.window_blocks=2", "mesh.data=2", "mesh.latent=4",
            'members=[{"l1_coeff": 0.01}, {"l1_coeff": 0.2, "lr": 1e-3, "seed": 1}]', *extra]


def _final_state(cfg):
    checkpoints = ckpt.RunCheckpoints(cfg.run_dir, keep=cfg.keep_checkpoints)
    restored = checkpoints.restore_latest(ckpt.abstract_state(cfg, mesh_lib.make_mesh(cfg.mesh)))
    checkpoints.close()
    assert restored.step == STEPS
    return restored.state


def test_a_registered_toy_architecture_trains_shards_resumes_saves_and_loads(store, tmp_path):
    full_cfg = load_config(None, _overrides(store, tmp_path / "full"))
    full = train(full_cfg)
    state = _final_state(full_cfg)
    # The layout metadata decides the sharding: the extra per-latent parameter and buffer split over latent.
    assert state.params["gain"].sharding.spec == P("ens", "latent")
    assert state.buffers.arch["mean_activation"].sharding.spec == P("ens", "latent")
    assert sorted(state.acc.terms) == ["l1", "mse"] and "l1" in full.metrics[0]
    host = jax.device_get(state)
    assert not np.allclose(host.params["gain"], 1.0)  # the extra parameter was trained
    assert (host.buffers.arch["mean_activation"] > 0).any()

    resumed_cfg = load_config(None, _overrides(store, tmp_path / "resumed"))
    assert train(resumed_cfg, stop_after=4).dictionaries == []
    resumed = train(resumed_cfg)
    for a, b in zip(jax.tree.leaves(host), jax.tree.leaves(jax.device_get(_final_state(resumed_cfg)))):
        np.testing.assert_array_equal(a, b)

    rows = jaxsae.open_store(store).read_rows(0, 256)
    for m, path in enumerate(full.dictionaries):
        d = jaxsae.load(path)
        assert d.sae.architecture == "toy" and d.hparams["l1_coeff"] == [0.01, 0.2][m]
        np.testing.assert_array_equal(d.buffers["mean_activation"], host.buffers.arch["mean_activation"][m])
        member = jax.tree.map(lambda v: v[m], host.params)
        want = toy(d.sae).encode(member, {}, rows * host.scale, ToyHParams(), Axes())
        np.testing.assert_allclose(d.encode(rows, sparse=False), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(jaxsae.load(resumed.dictionaries[m]).params["gain"], d.params["gain"])
    # It declares no portable form (Architecture.portable), so it cannot be exported to other tools.
    with pytest.raises(DictionaryError, match=r"'toy' declares no portable form .*cannot leave jaxsae"):
        jaxsae.load(full.dictionaries[0]).portable()


def test_the_toy_hyperparameters_are_validated_from_their_annotations(store, tmp_path):
    with pytest.raises(ConfigError, match=r"members\[0\]\.l1_coeff: must be in \[0\.0, 10\.0\], got -1"):
        load_config(None, _overrides(store, tmp_path, 'members=[{"l1_coeff": -1}]'))
    with pytest.raises(ConfigError, match=r"hparams\.l1_coef: not a hyperparameter of toy; did you mean "
                                          r"hparams\.l1_coeff\?"):
        load_config(None, _overrides(store, tmp_path, "hparams.l1_coef=0.1"))
    with pytest.raises(ConfigError, match="unknown architecture 'toyy'; choose one of .*topk, toy"):
        SAEConfig(architecture="toyy")
