"""The dictionary outside jaxsae: the PyTorch module, and SAELens / sparsify export and import, checked against
the real sae-lens and sparsify packages: every route encodes and decodes as jaxsae does."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from extract.torch_dictionary import to_torch
from jaxsae.dictionary import load, save_dictionary
from jaxsae.errors import ConfigError, DictionaryError
from jaxsae.interop import export_dictionary, import_dictionary
from jaxsae.sae import base, builtin_names
from jaxsae.sae.base import SAEConfig

D, N, K = 12, 48, 6
ATOL = 2e-5
SOURCE = {"model": "geneformer", "layer": 2, "kind": "tokens", "store": "/data/stores/layer_2/tokens"}
METRICS = {"fvu": 0.05, "l0": 5.9}


def rows(n=64, seed=0):
    return (np.random.default_rng(seed).standard_normal((n, D)) * 2 + 0.5).astype(np.float32)


def random_dictionary(arch, folder, seed=0, hparams=None):
    """A dictionary of `arch` with every parameter random (biases, thresholds and gates included), saved by
    the real writer with a training scale to fold, so every term of each encoder matters."""
    cfg = SAEConfig(architecture=arch, d_model=D, n_latents=N, k=K)
    module = base.build(cfg)
    params = module.init(jax.random.key(seed), jnp.zeros(D))
    rng = np.random.default_rng(seed)
    params = {k: np.asarray(v) + rng.normal(scale=0.3, size=np.shape(v)).astype(np.float32)
              for k, v in params.items()}
    if "threshold" in params:
        params["threshold"] = rng.uniform(0.0, 0.6, N).astype(np.float32)
    buffers = {k: np.float32(0.25) for k in module.init_buffers()}
    return load(save_dictionary(folder / arch, sae=cfg, params=params, buffers=buffers, hparams=hparams or {},
                                scale=1.3, source=SOURCE, metrics=METRICS))


def assert_same(reference, latents, recon, x):
    """reference: a jaxsae Dictionary; latents / recon: another route's encode(x) and decode(latents)."""
    expected = reference.encode(x, sparse=False)
    assert (expected > 0).sum() > 0 and (expected == 0).sum() > 0  # some latents fire and some do not
    np.testing.assert_allclose(np.asarray(latents), expected, atol=ATOL, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(recon), reference.decode(expected), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("arch", builtin_names())
def test_torch_module_encodes_and_decodes_as_jaxsae(arch, tmp_path):
    d = random_dictionary(arch, tmp_path)
    module = to_torch(d)
    x = rows()
    with torch.no_grad():
        latents = module.encode(torch.from_numpy(x))
        assert_same(d, latents, module.decode(latents), x)
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), d.reconstruct(x), atol=ATOL, rtol=1e-5)
    assert to_torch(d.path).state_dict().keys() == module.state_dict().keys()  # a folder works too


def test_torch_topk_uses_the_members_k(tmp_path):
    d = random_dictionary("topk", tmp_path, hparams={"k": 3})
    latents = to_torch(d).encode(torch.from_numpy(rows())).numpy()
    assert ((latents > 0).sum(axis=1) <= 3).all() and ((latents > 0).sum(axis=1) == 3).any()
    assert_same(d, latents, d.decode(latents), rows())


@pytest.mark.parametrize("arch", builtin_names())
def test_saelens_round_trip_and_sae_lens_itself(arch, tmp_path):
    from sae_lens import SAE

    d = random_dictionary(arch, tmp_path)
    folder = export_dictionary(d.path, tmp_path / "saelens", format="saelens")
    sae = SAE.load_from_disk(folder)
    x = rows()
    with torch.no_grad():
        latents = sae.encode(torch.from_numpy(x))
        assert_same(d, latents.numpy(), sae.decode(latents).numpy(), x)
    cfg = json.loads((tmp_path / "saelens" / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "batchtopk": "jumprelu", "matryoshka": "jumprelu"}.get(arch, arch)
    assert cfg["metadata"]["model_name"] == "geneformer" and cfg["metadata"]["hook_name"] == "layer_2.tokens"
    back = load(import_dictionary(folder, tmp_path / "back"))
    assert back.sae == d.sae  # the architecture, k and prefixes come back from the metadata
    assert back.config["source"] == SOURCE and back.config["metrics"] == METRICS
    assert back.config["imported_from"]["format"] == "saelens"
    assert_same(d, back.encode(x, sparse=False), back.decode(back.encode(x, sparse=False)), x)


def test_sparsify_round_trip_and_sparsify_itself(tmp_path):
    from sparsify import SparseCoder

    d = random_dictionary("topk", tmp_path, hparams={"k": 4})
    folder = export_dictionary(d.path, tmp_path / "sparsify", format="sparsify")
    assert folder == str(tmp_path / "sparsify" / "layers.2")
    coder = SparseCoder.load_from_disk(folder)
    assert SparseCoder.load_many(str(tmp_path / "sparsify"), local=True).keys() == {"layers.2"}
    x = rows()
    with torch.no_grad():
        out = coder.encode(torch.from_numpy(x))
        latents = torch.zeros(len(x), N).scatter_(-1, out.top_indices, out.top_acts)
        assert_same(d, latents.numpy(), coder.decode(out.top_acts, out.top_indices).numpy(), x)
    for path in (folder, tmp_path / "sparsify"):  # the hookpoint, or the run folder holding only it
        back = load(import_dictionary(path, tmp_path / "back", overwrite=True))
        assert back.sae == d.sae and back.hparams == d.hparams and back.config["source"] == SOURCE
        assert_same(d, back.encode(x, sparse=False), back.decode(back.encode(x, sparse=False)), x)


def test_a_saelens_sae_saved_by_sae_lens_imports(tmp_path):
    """SAELens's own training SAEs, a few training steps each, saved by its own save_inference_model."""
    from sae_lens import SAE
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(0)
    x = torch.from_numpy(rows(256))
    for i, sae in enumerate([
        TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=N, k=K)),  # rescale_acts_by_decoder_norm by default
        BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=N, k=K)),
        GatedTrainingSAE(GatedTrainingSAEConfig(d_in=D, d_sae=N, apply_b_dec_to_input=False)),
    ]):
        optimiser = torch.optim.Adam(sae.parameters(), lr=1e-2)
        for _ in range(5):
            out = sae.training_forward_pass(TrainStepInput(x, {"l1": 1.0, "auxk": 1.0}, None, 1, False))
            optimiser.zero_grad()
            out.loss.backward()
            optimiser.step()
        folder = tmp_path / f"sae{i}"
        sae.save_inference_model(folder)
        reference = SAE.load_from_disk(folder)
        back = load(import_dictionary(folder, tmp_path / f"jaxsae{i}"))
        with torch.no_grad():
            expected = reference.encode(x).numpy()
            assert (expected > 0).any()
            np.testing.assert_allclose(back.encode(x.numpy(), sparse=False), expected, atol=ATOL, rtol=1e-4)
            np.testing.assert_allclose(back.decode(expected), reference.decode(torch.from_numpy(expected)).numpy(),
                                       atol=ATOL, rtol=1e-4)


def test_a_sparse_coder_trained_by_sparsify_imports(tmp_path):
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(0)
    coder = SparseCoder(D, SparseCoderConfig(num_latents=N, k=K))
    x = torch.from_numpy(rows(256))
    optimiser = torch.optim.Adam(coder.parameters(), lr=1e-2)
    for _ in range(5):
        loss = coder(x).fvu
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    coder.save_to_disk(tmp_path / "run" / "layers.3")
    back = load(import_dictionary(tmp_path / "run", tmp_path / "jaxsae"))
    assert back.sae.architecture == "topk" and back.portable().k == K
    assert back.config["source"] == {"hook": "layers.3"}
    with torch.no_grad():
        out = coder.encode(x)
        expected = torch.zeros(len(x), N).scatter_(-1, out.top_indices, out.top_acts).numpy()
        np.testing.assert_allclose(back.encode(x.numpy(), sparse=False), expected, atol=ATOL, rtol=1e-4)
        np.testing.assert_allclose(back.decode(expected), coder.decode(out.top_acts, out.top_indices).numpy(),
                                   atol=ATOL, rtol=1e-4)


def test_bad_input_is_refused_with_one_clear_error(tmp_path):
    relu = random_dictionary("relu", tmp_path)
    with pytest.raises(DictionaryError, match="sparsify holds TopK dictionaries only.*format saelens"):
        export_dictionary(relu.path, tmp_path / "out", format="sparsify")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="format: 'onnx' is not one of"):
        export_dictionary(relu.path, tmp_path / "out", format="onnx")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("")
    with pytest.raises(DictionaryError, match="not a dictionary jaxsae can import.*sae_weights.safetensors"):
        import_dictionary(tmp_path / "junk", tmp_path / "x")
    with pytest.raises(DictionaryError, match="already a jaxsae dictionary"):
        import_dictionary(relu.path, tmp_path / "x")
    folder = export_dictionary(relu.path, tmp_path / "saelens")
    with pytest.raises(DictionaryError, match="already exists"):
        export_dictionary(relu.path, folder)
    cfg = json.loads((tmp_path / "saelens" / "cfg.json").read_text())
    (tmp_path / "saelens" / "cfg.json").write_text(json.dumps({**cfg, "d_in": D + 1}))
    with pytest.raises(DictionaryError, match=r"'W_enc' has shape \[12, 48\], but the config's sizes \(d_model 13"):
        import_dictionary(folder, tmp_path / "x")
    (tmp_path / "saelens" / "cfg.json").write_text(json.dumps({**cfg, "architecture": "matching_pursuit"}))
    with pytest.raises(DictionaryError, match="architecture 'matching_pursuit' has no jaxsae equivalent"):
        import_dictionary(folder, tmp_path / "x")
    (tmp_path / "saelens" / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(DictionaryError, match="normalize_activations = 'layer_norm'"):
        import_dictionary(folder, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_and_import_verbs(tmp_path, capsys):
    from jaxsae.cli import main

    d = random_dictionary("topk", tmp_path)
    assert main(["export", d.path, "--format", "sparsify", str(tmp_path / "sp")]) == 0
    assert main(["import", str(tmp_path / "sp"), str(tmp_path / "back")]) == 0
    assert capsys.readouterr().out.splitlines() == [f"sparsify: {tmp_path / 'sp' / 'layers.2'}",
                                                    f"dictionary: {tmp_path / 'back'}"]
    np.testing.assert_allclose(load(tmp_path / "back").encode(rows(), sparse=False), d.encode(rows(), sparse=False),
                               atol=ATOL)
    gated = random_dictionary("gated", tmp_path)
    assert main(["export", gated.path, "--format", "sparsify", str(tmp_path / "sp2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "sparsify holds TopK dictionaries only" in err and "\n" not in err
