"""EleutherAI sparsify's layout: one folder per hookpoint, each `cfg.json` + `sae.safetensors`, as
`SparseCoder.save_to_disk` writes and `SparseCoder.load_from_disk` reads them (eai-sparsify 1.x).

TopK only (sparsify's one autoencoder): encoder.weight [n, d] (= W_enc^T), encoder.bias [n], W_dec [n, d],
b_dec [d]; the encoder is ReLU((x - b_dec) W_enc + b_enc), then each row's k largest, the same latents as
jaxsae's TopK. cfg.json: sparsify's SparseCoderConfig fields plus `d_in`; an export also carries jaxsae's
config sections under `jaxsae` (sparsify drops fields it does not know when it loads).
"""

from __future__ import annotations

import os

import numpy as np
from safetensors.numpy import load_file, save_file

from jaxsae.sae.portable import PortableForm
from jaxsae.errors import DictionaryError
from jaxsae.interop.formats import Imported, checked_form, field, read_json, write_json

WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "cfg.json"
SPARSIFY_NAMES = {"encoder.weight": "W_enc", "encoder.bias": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"}


def is_sparsify(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, name)) for name in (CONFIG_FILE, WEIGHTS_FILE))


def hookpoint(provenance: dict) -> str:
    """The folder name of the dictionary's hookpoint: sparsify's `layers.<i>` for a store of layer i."""
    layer = provenance.get("source", {}).get("layer")
    return f"layers.{layer}" if layer is not None else "dictionary"


def write(form: PortableForm, provenance: dict, folder: str) -> None:
    """Write a TopK `form` into `folder` (existing, empty: one hookpoint's folder)."""
    t = form.tensors
    d, n = t["W_enc"].shape
    tensors = {theirs: t[ours] for theirs, ours in SPARSIFY_NAMES.items()}
    tensors["encoder.weight"] = t["W_enc"].T
    config = {"activation": "topk", "expansion_factor": max(1, int(n) // int(d)), "normalize_decoder": False,
              "num_latents": int(n), "k": int(form.k), "multi_topk": False, "skip_connection": False,
              "transcode": False, "d_in": int(d), "jaxsae": provenance}
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(folder, WEIGHTS_FILE))
    write_json(os.path.join(folder, CONFIG_FILE), config)


def read(folder: str) -> Imported:
    """One hookpoint's folder -> Imported."""
    cfg_path = os.path.join(folder, CONFIG_FILE)
    config = read_json(cfg_path)
    refused = {"activation": ("topk", "groupmax latents have no jaxsae architecture"),
               "transcode": (False, "a transcoder maps one module's input to its output, not an autoencoder"),
               "skip_connection": (False, "the W_skip term has no jaxsae equivalent")}
    for name, (allowed, why) in refused.items():
        if config.get(name, allowed) != allowed:
            raise DictionaryError(f"{cfg_path}: {name} = {config[name]!r} cannot be imported: {why}; jaxsae "
                                  f"imports sparsify's TopK autoencoders ({name} = {allowed!r})")
    d = field(config, "d_in", cfg_path)
    n = config.get("num_latents") or d * field(config, "expansion_factor", cfg_path)
    raw = load_file(os.path.join(folder, WEIGHTS_FILE))
    tensors = {ours: raw[theirs] for theirs, ours in SPARSIFY_NAMES.items() if theirs in raw}
    if "W_enc" in tensors:
        tensors["W_enc"] = tensors["W_enc"].T  # nn.Linear's [out, in]
    form = checked_form("topk", tensors, d, n, os.path.join(folder, WEIGHTS_FILE), field(config, "k", cfg_path))
    provenance = config.get("jaxsae") or {"source": {"hook": os.path.basename(os.path.abspath(folder))}}
    return Imported(form, provenance, config)


def hookpoint_folders(path: str) -> list[str]:
    """The sub-folders of `path` that are sparsify hookpoints (a `save_to_disk` per hookpoint, as sparsify's
    trainer writes a run), sorted."""
    return sorted(os.path.join(path, name) for name in os.listdir(path)
                  if os.path.isdir(os.path.join(path, name)) and is_sparsify(os.path.join(path, name)))
