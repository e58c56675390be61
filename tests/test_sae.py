"""SAE architectures: training works, constraints hold, sparse == dense, vmap over members, folding, init."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxsae.errors import ConfigError
from jaxsae.sae import base, builtin_names, constraints, sparse
from jaxsae.sae.base import Axes, LossContext, SAEConfig
from jaxsae.sae.fold import fold_input_scale
from jaxsae.sae.init import geometric_median

ARCHITECTURES = builtin_names()
D, N, K = 32, 128, 8
BF16_MSE_RTOL = 0.02  # sae.compute_dtype="bfloat16" vs "float32": final training MSE, relative (README)


def make_cfg(arch: str, **overrides) -> SAEConfig:
    return SAEConfig(**{"architecture": arch, "d_model": D, "n_latents": N, "k": K, "k_aux": 12,
                        "dead_after_rows": 100, **overrides})


def bundle(arch: str, **overrides) -> base.Architecture:
    return base.build(make_cfg(arch, **overrides))


def make_hp(arch: str, **overrides):
    """The architecture's hyperparameter NamedTuple (fields it lacks in `overrides` are ignored)."""
    module = bundle(arch)
    values = module.default_hparams._replace(**{k: v for k, v in overrides.items() if k in module.hparams._fields})
    return module.hparams(*(jnp.asarray(v, jnp.float32) for v in values))


def dead_mask(cfg: SAEConfig, dead_every: int) -> jax.Array:
    """[n] bool: every `dead_every`-th latent is dead (for AuxK)."""
    return jnp.arange(cfg.n_latents) % dead_every == 0


def sparse_dictionary_data(key, n_rows=2048, n_true=96, active=4, noise=0.02):
    """Rows = sparse non-negative combinations of random unit directions + noise, at unit mean squared norm."""
    k_dir, k_on, k_mag, k_noise = jax.random.split(key, 4)
    directions = jax.random.normal(k_dir, (n_true, D))
    directions = directions / jnp.linalg.norm(directions, axis=-1, keepdims=True)
    on = jax.random.bernoulli(k_on, active / n_true, (n_rows, n_true))
    coeffs = jnp.where(on, jax.random.exponential(k_mag, (n_rows, n_true)) + 0.5, 0.0)
    x = coeffs @ directions + noise * jax.random.normal(k_noise, (n_rows, D)) + 0.3
    return x / jnp.sqrt(jnp.mean(jnp.sum(x**2, axis=-1)))


def make_member(arch, cfg, key, x, dead_every=3):
    """(params, buffers, dead [n] bool) for one member; every `dead_every`-th latent is dead (for AuxK)."""
    module = base.build(cfg)
    params = module.init(key, jnp.asarray(geometric_median(np.asarray(x))))
    buffers = module.init_buffers()
    if "threshold" in buffers:
        buffers["threshold"] = jnp.asarray(0.05, jnp.float32)
    return params, buffers, dead_mask(cfg, dead_every)


def loss_and_grad(arch, cfg, params, buffers, dead, x, hp, axes=Axes(), with_aux=True, step=100):
    """(loss, LossOut, grads) of one member; x: [B, d]."""
    ctx = LossContext(axes=axes, step=jnp.int32(step), with_aux=with_aux, dead=dead)

    def f(p):
        return base.build(cfg).loss(p, buffers, x, hp, ctx)

    (loss, out), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss, out, grads


def jitted_loss_and_grad(arch, cfg):
    return jax.jit(lambda params, buffers, dead, x, hp: loss_and_grad(arch, cfg, params, buffers, dead, x, hp))


def assert_trees_close(a, b, rtol=2e-5, atol=2e-5, what=""):
    leaves_a, tree_a = jax.tree.flatten_with_path(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b, f"{what}: tree structures differ: {tree_a} vs {tree_b}"
    for (path, va), vb in zip(leaves_a, leaves_b):
        np.testing.assert_allclose(np.asarray(va), np.asarray(vb), rtol=rtol, atol=atol,
                                   err_msg=f"{what}{jax.tree_util.keystr(path)}")


def train_member(cfg: SAEConfig, steps: int = 200):
    """(final params, losses [steps], full-batch MSEs [steps]) of one member trained by Adam (lr 2e-3) on 8
    batches of `sparse_dictionary_data`, decoder constraint applied, no AuxK."""
    module = base.build(cfg)
    constrained = module.decoder_constraint == "unit_norm_rows"
    x = sparse_dictionary_data(jax.random.key(0))
    params, buffers, _ = make_member(cfg.architecture, cfg, jax.random.key(1), x)
    no_dead = jnp.zeros((N,), bool)
    hp = make_hp(cfg.architecture, **({"l1_coeff": 0.02} if cfg.architecture in ("relu", "gated") else {}))
    optimizer = optax.adam(2e-3)
    batches = x.reshape(8, -1, D)

    def train_step(carry, i):
        params, buffers, opt_state = carry
        ctx = LossContext(axes=Axes(), step=i, with_aux=False, dead=no_dead)
        (loss, out), grads = jax.value_and_grad(module.loss, has_aux=True)(params, buffers, batches[i % 8], hp, ctx)
        if constrained:
            grads = {**grads, "W_dec": constraints.remove_parallel_grad(params["W_dec"], grads["W_dec"])}
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if constrained:
            params = {**params, "W_dec": constraints.normalise_rows(params["W_dec"])}
        full_mse = jnp.mean(jnp.sum((batches[i % 8] - out.x_hat) ** 2, axis=-1))
        return (params, out.buffers, opt_state), (loss, full_mse)

    (params, _, _), (losses, mses) = jax.jit(lambda c: jax.lax.scan(train_step, c, jnp.arange(steps)))(
        (params, buffers, optimizer.init(params)))
    return params, np.asarray(losses), np.asarray(mses)


@pytest.mark.parametrize("arch,penalty", [(arch, "l0") for arch in ARCHITECTURES] + [("jumprelu", "tanh")])
def test_loss_decreases_and_decoder_constraint_holds(arch, penalty):
    cfg = make_cfg(arch, k=4, jumprelu_penalty=penalty)
    params, losses, mses = train_member(cfg)
    assert np.all(np.isfinite(losses))
    assert losses[-10:].mean() < 0.7 * losses[:10].mean(), (losses[:10].mean(), losses[-10:].mean())
    # explains over half the variance, and well below where it started (a TopK-family init starts at ~0.45)
    x = sparse_dictionary_data(jax.random.key(0))
    assert mses[-10:].mean() < 0.5 * float(jnp.sum(jnp.var(x, axis=0))), mses[-10:].mean()
    assert mses[-10:].mean() < 0.6 * mses[:10].mean(), (mses[:10].mean(), mses[-10:].mean())
    norms = jnp.linalg.norm(params["W_dec"], axis=-1)
    if base.build(cfg).decoder_constraint == "unit_norm_rows":
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    else:
        assert float(jnp.max(jnp.abs(norms - 0.1))) > 1e-3  # relu: unconstrained, rows started at norm 0.1


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_bfloat16_compute_tracks_float32(arch):
    """sae.compute_dtype="bfloat16" (bf16 matmul inputs, float32 accumulation and parameters): after 200 Adam
    steps the full-batch MSE is within BF16_MSE_RTOL of the float32 run's (the README states this tolerance)."""
    cfg = make_cfg(arch, k=4)
    params32, _, mses32 = train_member(cfg)
    params16, losses16, mses16 = train_member(dataclasses.replace(cfg, compute_dtype="bfloat16"))
    assert np.all(np.isfinite(losses16))
    assert {str(v.dtype) for v in jax.tree.leaves(params16)} == {"float32"}
    final32, final16 = mses32[-10:].mean(), mses16[-10:].mean()
    print(f"{arch}: final MSE float32 {final32:.5f}, bfloat16 {final16:.5f}")
    assert abs(final16 - final32) <= BF16_MSE_RTOL * final32, (final32, final16)


def test_compute_dtype_and_selection_are_checked():
    with pytest.raises(ConfigError, match="sae.compute_dtype: must be one of 'float32', 'bfloat16', got 'float16'"):
        make_cfg("topk", compute_dtype="float16")
    with pytest.raises(ConfigError, match="sae.selection: must be 'exact' or 'approx'"):
        make_cfg("topk", selection="fast")
    with pytest.raises(ConfigError, match=r"sae.approx_recall: must be in \(0, 1\]"):
        make_cfg("topk", selection="approx", approx_recall=0.0)


def test_approx_selection_recall_and_training_loss():
    """sae.selection="approx" (`lax.approx_max_k`): its recall of the exact top-k, printed; on CPU XLA computes
    it exactly (recall 1.0), so the approx training loss and gradients equal the exact ones there."""
    scores = jax.random.normal(jax.random.key(5), (256, 4096))
    exact = np.asarray(jax.lax.top_k(scores, 32)[1])
    approx = np.asarray(jax.lax.approx_max_k(scores, 32, recall_target=0.95)[1])
    recall = np.mean([len(set(a) & set(e)) / 32 for a, e in zip(approx, exact)])
    print(f"approx_max_k recall vs exact top-k on {jax.default_backend()}: {recall:.4f}")
    assert (recall == 1.0) if jax.default_backend() == "cpu" else (recall >= 0.9)
    x = sparse_dictionary_data(jax.random.key(2), n_rows=64)
    cfg = make_cfg("topk")
    params, buffers, dead = make_member("topk", cfg, jax.random.key(3), x)
    hp = make_hp("topk")
    exact_out = jitted_loss_and_grad("topk", cfg)(params, buffers, dead, x, hp)
    approx_out = jitted_loss_and_grad("topk", dataclasses.replace(cfg, selection="approx"))(params, buffers, dead, x, hp)
    assert_trees_close(approx_out, exact_out, rtol=0, atol=0, what="approx vs exact selection on CPU ")


@pytest.mark.parametrize("n,k", [(1024, 16), (4096, 7), (8192, 32)])
def test_two_stage_top_k_equals_lax_top_k(n, k):
    """The top-k of the step's selection (`sparse.top_k`: block maxima, then the blocks' scores) gives
    `lax.top_k`'s values and indices, ties included (to the lower index), on rows of ties and -inf."""
    assert sparse.block_size(n, k) > 1  # the two-stage path, not lax.top_k itself
    scores = np.array(jax.random.normal(jax.random.key(n + k), (96, n)))
    scores[:32] = np.round(scores[:32])  # a few distinct values: ties across and inside blocks
    scores[32:40] = 0.0
    scores[40:48, ::3] = -np.inf
    scores[48:56, : n // 2] = -0.0
    values, index = jax.jit(lambda s: sparse.top_k(s, k))(scores)
    expected_values, expected_index = jax.lax.top_k(scores, k)
    np.testing.assert_array_equal(np.asarray(values), np.asarray(expected_values))
    np.testing.assert_array_equal(np.asarray(index), np.asarray(expected_index))


def test_decoder_projection_helpers():
    W = jax.random.normal(jax.random.key(0), (3, N, D))
    g = jax.random.normal(jax.random.key(1), (3, N, D))
    unit = constraints.normalise_rows(W)
    np.testing.assert_allclose(jnp.linalg.norm(unit, axis=-1), 1.0, rtol=1e-6)
    g_perp = constraints.remove_parallel_grad(unit, g)
    np.testing.assert_allclose(jnp.sum(g_perp * unit, axis=-1), 0.0, atol=1e-5)
    # A small step along the projected gradient leaves the norm unchanged to first order.
    step_norms = jnp.linalg.norm(unit - 1e-3 * g_perp, axis=-1)
    np.testing.assert_allclose(step_norms, 1.0, atol=1e-4)


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES if bundle(a).uses_auxk])
@pytest.mark.parametrize("member_k", [pytest.param(K, marks=pytest.mark.slow), 5])
def test_sparse_path_equals_dense_reference(arch, member_k):
    x = sparse_dictionary_data(jax.random.key(2), n_rows=64)
    cfg_sparse, cfg_dense = make_cfg(arch), make_cfg(arch, sparse_decode=False)
    params, buffers, dead = make_member(arch, cfg_sparse, jax.random.key(3), x)
    hp = make_hp(arch, k=member_k)
    sparse = jitted_loss_and_grad(arch, cfg_sparse)(params, buffers, dead, x, hp)
    dense = jitted_loss_and_grad(arch, cfg_dense)(params, buffers, dead, x, hp)
    assert float(sparse[1].terms["auxk"]) > 0
    assert_trees_close(sparse, dense, what=f"{arch} sparse vs dense ")


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in ("batchtopk", "matryoshka") else a
                                  for a in ARCHITECTURES])
def test_vmap_over_members_equals_separate_calls(arch):
    x = sparse_dictionary_data(jax.random.key(4), n_rows=64)
    cfg = make_cfg(arch, jumprelu_ste_to_input=True)
    members = [make_member(arch, cfg, jax.random.key(10 + e), x, dead_every=2 + e) for e in range(4)]
    varied = {"k": [8, 6, 4, 2], "aux_coeff": [1 / 32, 0.1, 0.5, 1.0], "l1_coeff": [0.01, 0.1, 0.3, 1.0],
              "l0_coeff": [1e-3, 1e-2, 0.1, 0.3], "bandwidth": [1e-3, 0.01, 0.1, 0.3],
              "threshold_ema_decay": [0.9, 0.99, 0.5, 0.0], "gated_aux_coeff": [1.0, 0.5, 2.0, 0.0],
              "l1_warmup_steps": [0, 50, 200, 1000], "l0_warmup_steps": [0, 50, 200, 1000]}
    hps = [make_hp(arch, **{name: v[e] for name, v in varied.items()}) for e in range(4)]
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)  # noqa: E731
    params, buffers, dead = (stack([m[i] for m in members]) for i in range(3))

    member = jitted_loss_and_grad(arch, cfg)
    batched = jax.jit(jax.vmap(member, in_axes=(0, 0, 0, None, 0)))(params, buffers, dead, x, stack(hps))
    separate = stack([member(*members[e], x, hps[e]) for e in range(4)])
    assert_trees_close(batched, separate, what=f"{arch} vmap vs separate ")
    assert len(set(np.asarray(batched[0]).round(6))) == 4


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fold_input_scale(arch):
    scale = 3.7
    cfg = make_cfg(arch)
    module = base.build(cfg)
    x_n = sparse_dictionary_data(jax.random.key(5), n_rows=64)
    params, buffers, _ = make_member(arch, cfg, jax.random.key(6), x_n)
    params = {**params, "b_dec": params["b_dec"] + 0.1}
    hp = make_hp(arch)
    folded = fold_input_scale(params, cfg, scale)
    x_raw = x_n / scale
    f_n = module.encode(params, buffers, x_n, hp, Axes())
    f_raw = module.encode(folded, buffers, x_raw, hp, Axes())
    assert float(jnp.mean(f_n > 0)) > 0
    np.testing.assert_allclose(f_raw, f_n, rtol=1e-5, atol=1e-5)
    x_hat_raw = module.decode(folded, f_raw, Axes())
    np.testing.assert_allclose(x_hat_raw, module.decode(params, f_n, Axes()) / scale, rtol=1e-5, atol=1e-6)


def test_geometric_median_ignores_far_outlier():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16) * 3
    points = centre + rng.normal(size=(200, 16))
    points = np.concatenate([points, np.full((1, 16), 1e4)])
    median = geometric_median(points)
    assert median.shape == (16,)
    assert np.linalg.norm(median - centre) < 0.5
    assert np.linalg.norm(points.mean(axis=0) - centre) > 100


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encode_matches_training_activations(arch):
    """Inference encode gives the latents the loss decodes (BatchTopK family: with threshold 0 and k = n)."""
    cfg = make_cfg(arch)
    module = base.build(cfg)
    x = sparse_dictionary_data(jax.random.key(7), n_rows=64)
    params, buffers, dead = make_member(arch, cfg, jax.random.key(8), x)
    hp = make_hp(arch)
    latents = module.encode(params, buffers, x, hp, Axes())
    _, out = module.loss(params, buffers, x, hp, LossContext(Axes(), jnp.int32(0), False, dead))
    x_hat = module.decode(params, latents, Axes())
    if "threshold" in module.buffer_layout:  # BatchTopK activations: a batch selection in training
        assert float(out.l0) == pytest.approx(K, abs=0.5)
        assert float(out.buffers["threshold"]) != float(buffers["threshold"])
    else:
        np.testing.assert_allclose(x_hat, out.x_hat, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(jnp.sum(latents > 0, axis=0), out.fire_count)
    if module.max_active_per_row is not None:
        np.testing.assert_array_equal(jnp.sum(latents > 0, axis=1) <= module.max_active_per_row, True)


def test_batchtopk_keeps_the_global_top_bk():
    """With enough per-row candidates the selection is exactly the B*k largest positive pre-activations."""
    from jaxsae.sae import batchtopk, sparse

    cfg = make_cfg("batchtopk", batchtopk_row_cap=16)
    x = sparse_dictionary_data(jax.random.key(11), n_rows=64)
    params, buffers, dead = make_member("batchtopk", cfg, jax.random.key(12), x)
    hp = make_hp("batchtopk", k=5)
    fwd, new_buffers = batchtopk.select(params, buffers, x, hp, cfg, LossContext(Axes(), jnp.int32(0), False, dead))
    dense = sparse.scatter_dense(fwd.acts, fwd.sel, N)
    pre = (x - params["b_dec"][None, :]) @ params["W_enc"] + params["b_enc"][None, :]
    kth = jnp.sort(pre.reshape(-1))[-64 * 5]
    np.testing.assert_allclose(dense, jnp.where(pre >= kth, jax.nn.relu(pre), 0.0), rtol=1e-5, atol=1e-5)
    assert int(jnp.sum(dense > 0)) == 64 * 5
    np.testing.assert_allclose(new_buffers["threshold"], 0.99 * 0.05 + 0.01 * kth, rtol=1e-5)


def test_matryoshka_prefix_losses_use_only_leading_latents():
    from jaxsae.sae import batchtopk, sparse

    cfg = make_cfg("matryoshka", matryoshka_prefixes=(16, 40, N))
    x = sparse_dictionary_data(jax.random.key(13), n_rows=64)
    params, buffers, dead = make_member("matryoshka", cfg, jax.random.key(14), x)
    hp = make_hp("matryoshka")
    ctx = LossContext(Axes(), jnp.int32(0), False, dead)
    loss, out = base.build(cfg).loss(params, buffers, x, hp, ctx)
    fwd, _ = batchtopk.select(params, buffers, x, hp, cfg, ctx)
    dense = sparse.scatter_dense(fwd.acts, fwd.sel, N)
    per_prefix = [jnp.mean(jnp.sum((x - dense[:, :m] @ params["W_dec"][:m] - params["b_dec"][None, :]) ** 2, axis=-1))
                  for m in cfg.prefixes]
    np.testing.assert_allclose(loss, np.mean(per_prefix), rtol=1e-5)
    assert len(set(np.round(per_prefix, 6))) == len(cfg.prefixes)
    # One prefix covering the whole dictionary is BatchTopK.
    single = make_cfg("matryoshka", matryoshka_prefixes=(N,))
    reference, _ = base.build(make_cfg("batchtopk")).loss(params, buffers, x, hp, ctx)
    np.testing.assert_allclose(base.build(single).loss(params, buffers, x, hp, ctx)[0], reference, rtol=1e-6)


@pytest.mark.parametrize("ste_to_input", [False, True])
def test_jumprelu_pseudo_derivatives(ste_to_input):
    """Rectangle-kernel STE (Rajamanoharan et al. 2024, eq. 11-12) on hand-made pre-activations."""
    from jaxsae.sae.jumprelu import heaviside, jump_relu

    z = jnp.array([[0.1, 0.5, 0.52, 0.9], [0.45, 0.51, 0.7, -0.2]])
    theta = jnp.full((1, 4), 0.5)
    eps = jnp.asarray(0.1)
    in_window = (jnp.abs(z - theta) < eps / 2).astype(jnp.float32)  # 0.5, 0.52, 0.51 (0.45 is on the edge)
    dz, dtheta, deps = jax.grad(lambda *a: jump_relu(*a).sum(), argnums=(0, 1, 2))(z, theta, eps)
    np.testing.assert_allclose(dz, (z > theta).astype(jnp.float32))
    np.testing.assert_allclose(dtheta, -jnp.sum(in_window * theta / eps, axis=0, keepdims=True), rtol=1e-6)
    assert float(deps) == 0.0
    dz, dtheta = jax.grad(lambda z, t: heaviside(z, t, eps, ste_to_input).sum(), argnums=(0, 1))(z, theta)
    np.testing.assert_allclose(dtheta, -jnp.sum(in_window / eps, axis=0, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(dz, in_window / eps if ste_to_input else 0.0, rtol=1e-6)


@pytest.mark.parametrize("arch,overrides,decoder_norm,encoder_norm", [
    ("topk", {}, 1.0, 3 ** -0.5),  # OpenAI's TopK code and sparsify start the encoder at nn.Linear's scale
    ("batchtopk", {}, 1.0, 3 ** -0.5),
    ("matryoshka", {}, 1.0, 3 ** -0.5),
    ("relu", {}, 0.1, 0.1),  # W_enc = W_dec^T
    ("topk", {"encoder_init_norm": 2.0}, 1.0, 2.0),
    ("relu", {"encoder_init_norm": 0.5, "decoder_init_norm": 0.2}, 0.2, 0.5),
])
def test_tied_init_scales_the_encoder_columns_along_the_decoder_rows(arch, overrides, decoder_norm, encoder_norm):
    params = bundle(arch, **overrides).init(jax.random.key(0), jnp.zeros(D))
    W_enc, W_dec = np.asarray(params["W_enc"]), np.asarray(params["W_dec"])
    np.testing.assert_allclose(np.linalg.norm(W_dec, axis=1), decoder_norm, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(W_enc, axis=0), encoder_norm, rtol=1e-5)
    np.testing.assert_allclose(W_enc.T * (decoder_norm / encoder_norm), W_dec, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["encoder_init_norm", "decoder_init_norm"])
def test_non_positive_init_norms_are_refused(name):
    with pytest.raises(ConfigError, match=f"sae.{name}: must be > 0"):
        make_cfg("topk", **{name: 0.0})
