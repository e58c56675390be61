"""The SAELens layout: `sae_weights.safetensors` + `cfg.json`, as sae-lens 6.x writes (`SAE.save_model`) and reads
(`SAE.load_from_disk`) them.

Architectures (SAELens's names): "standard" = ReLU, "topk" (field `k`), "jumprelu" (tensor `threshold` [n]),
"gated" (`b_gate`, `r_mag`, `b_mag`). Tensors are named as in jaxsae: W_enc [d_in, d_sae], b_enc [d_sae],
W_dec [d_sae, d_in], b_dec [d_in]. SAELens has no inference class for BatchTopK or Matryoshka: its own
`save_inference_model` writes them as "jumprelu" with the batch threshold in every latent, and so does the
export here (exact: jaxsae's inference rule for both is that JumpReLU).

Read back: `apply_b_dec_to_input = false` and TopK's `rescale_acts_by_decoder_norm = true` are folded into
the weights (exact reparametrisations); a run-time normalisation (`normalize_activations` other than "none")
is refused, with SAELens's own fold as the fix.
"""

from __future__ import annotations

import os

import numpy as np
from safetensors.numpy import load_file, save_file

from jaxsae.sae.portable import PortableForm
from jaxsae.errors import DictionaryError
from jaxsae.interop.formats import Imported, checked_form, field, read_json, write_json

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
# The sae-lens release whose format this writes: its loader treats a config without a version as pre-6.0.
SAELENS_VERSION = "6.54.12"
ARCHITECTURE = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}


def is_saelens(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, name)) for name in (CONFIG_FILE, WEIGHTS_FILE))


def write(form: PortableForm, provenance: dict, folder: str) -> None:
    """Write `form` into `folder` (existing, empty). provenance: jaxsae's config sections, kept under
    metadata.jaxsae; the model and layer also as SAELens's metadata.model_name / hook_name."""
    d, n = form.tensors["W_enc"].shape
    source = provenance.get("source", {})
    metadata = {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": SAELENS_VERSION,
                "model_name": source.get("model"), "hook_name": _hook_name(source), "jaxsae": provenance}
    config = {"architecture": ARCHITECTURE[form.activation], "d_in": int(d), "d_sae": int(n), "dtype": "float32",
              "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
              "reshape_activations": "none", "metadata": metadata}
    if form.activation == "topk":
        config.update(k=int(form.k), rescale_acts_by_decoder_norm=False)
    save_file({k: np.ascontiguousarray(v) for k, v in form.tensors.items()}, os.path.join(folder, WEIGHTS_FILE))
    write_json(os.path.join(folder, CONFIG_FILE), config)


def _hook_name(source: dict) -> str | None:
    """The activations the dictionary reads, as a hook name: `layer_2.tokens` (store layer and kind)."""
    if source.get("layer") is None:
        return None
    return f"layer_{source['layer']}" + (f".{source['kind']}" if source.get("kind") else "")


def read(folder: str) -> Imported:
    """A SAELens folder -> Imported (tensors folded to jaxsae's parametrisation)."""
    cfg_path = os.path.join(folder, CONFIG_FILE)
    config = read_json(cfg_path)
    arch = field(config, "architecture", cfg_path, str)
    activation = {v: k for k, v in ARCHITECTURE.items()}.get(arch)
    if activation is None:
        raise DictionaryError(
            f"{cfg_path}: architecture {arch!r} has no jaxsae equivalent; jaxsae imports SAELens's "
            f"{sorted(ARCHITECTURE.values())} (a training checkpoint of batchtopk or matryoshka_batchtopk: save it "
            f"with SAELens's save_inference_model, which writes it as jumprelu)"
        )
    for name, allowed in (("normalize_activations", "none"), ("reshape_activations", "none")):
        if config.get(name, "none") != allowed:
            raise DictionaryError(
                f"{cfg_path}: {name} = {config[name]!r}: a normalisation applied at run time has no jaxsae "
                f"equivalent; fold it into the weights in SAELens first (e.g. fold_activation_norm_scaling_factor) "
                f"and save again"
            )
    d, n = field(config, "d_in", cfg_path), field(config, "d_sae", cfg_path)
    tensors = {k: np.asarray(v, np.float32) for k, v in load_file(os.path.join(folder, WEIGHTS_FILE)).items()}
    k = field(config, "k", cfg_path) if activation == "topk" else None
    form = checked_form(activation, tensors, d, n, os.path.join(folder, WEIGHTS_FILE), k)
    if not config.get("apply_b_dec_to_input", True):
        form = _centre_encoder(form)
    if activation == "topk" and config.get("rescale_acts_by_decoder_norm", False):
        form = _fold_decoder_norm(form)
    metadata = config.get("metadata") or {}
    provenance = metadata.get("jaxsae") or {"source": {k: v for k, v in (("model", metadata.get("model_name")),
                                                                          ("hook", metadata.get("hook_name"))) if v}}
    return Imported(form, provenance, config)


def _centre_encoder(form: PortableForm) -> PortableForm:
    """An encoder on x (not x - b_dec) rewritten on x - b_dec: each bias gains b_dec @ (its matrix)."""
    t = dict(form.tensors)
    centring = t["b_dec"] @ t["W_enc"]  # [n]
    if form.activation == "gated":
        t["b_gate"] = t["b_gate"] + centring
        t["b_mag"] = t["b_mag"] + centring * np.exp(t["r_mag"])
    else:
        t["b_enc"] = t["b_enc"] + centring
    return PortableForm(form.activation, t, form.k)


def _fold_decoder_norm(form: PortableForm) -> PortableForm:
    """SAELens TopK with rescale_acts_by_decoder_norm: pre-activations times ||W_dec,i||, latents divided by it
    before decoding. Folded: W_enc, b_enc times the norms, W_dec rows divided by them (same latents)."""
    t = dict(form.tensors)
    norms = np.linalg.norm(t["W_dec"], axis=-1)
    t["W_enc"], t["b_enc"], t["W_dec"] = t["W_enc"] * norms[None, :], t["b_enc"] * norms, t["W_dec"] / norms[:, None]
    return PortableForm(form.activation, t, form.k)
