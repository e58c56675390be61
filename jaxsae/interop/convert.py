"""export_dictionary / import_dictionary: a jaxsae dictionary folder to and from SAELens and sparsify.

Both go through the dictionary's portable form (`jaxsae.Dictionary.portable`), so what comes back encodes and
decodes as what went out. Provenance travels in the exported config (SAELens: metadata.jaxsae; sparsify:
cfg.json's `jaxsae`): jaxsae's sae, hparams, normalisation, source (model, layer, store) and metrics sections.
Import restores them, and the original architecture where the files still describe it exactly (a BatchTopK
or Matryoshka dictionary comes back as itself from SAELens's jumprelu when its threshold is uniform).
"""

from __future__ import annotations

import os

import numpy as np

from jaxsae.atomic import atomic_folder
from jaxsae.dictionary import CONFIG_FILE, WEIGHTS_FILE, Dictionary, load, sae_config_from_json, save_dictionary
from jaxsae.errors import ConfigError, DictionaryError
from jaxsae.interop import saelens, sparsify
from jaxsae.interop.formats import Imported, source_folder
from jaxsae.sae.base import SAEConfig

FORMATS = ("saelens", "sparsify")
PROVENANCE_KEYS = ("architecture", "sae", "hparams", "normalisation", "source", "metrics", "run_dir", "member",
                   "steps")


def export_dictionary(dictionary_path: str | os.PathLike, out: str | os.PathLike, format: str = "saelens",
                      overwrite: bool = False) -> str:
    """Write the jaxsae dictionary at `dictionary_path` in `format`; returns the folder to hand to the other tool.

    saelens:  OUT/ with cfg.json + sae_weights.safetensors   (SAE.load_from_disk(OUT))
    sparsify: OUT/<hookpoint>/ with cfg.json + sae.safetensors, hookpoint `layers.<layer>` of the dictionary's
              store (SparseCoder.load_from_disk(OUT/layers.2), or SparseCoder.load_many(OUT, local=True));
              TopK dictionaries only.
    overwrite: replace an existing OUT (refused otherwise).
    """
    if format not in FORMATS:
        raise ConfigError(f"format: {format!r} is not one of {list(FORMATS)}")
    dictionary = load(dictionary_path)
    form = dictionary.portable()
    provenance = {k: dictionary.config[k] for k in PROVENANCE_KEYS if k in dictionary.config}
    if format == "sparsify" and form.activation != "topk":
        raise DictionaryError(
            f"{dictionary_path}: sparsify holds TopK dictionaries only, and this one is "
            f"{dictionary.sae.architecture!r}; export it with format saelens (it takes relu, topk, batchtopk, "
            f"jumprelu, gated and matryoshka)"
        )
    _check_out(out, overwrite)
    with atomic_folder(out) as tmp:
        if format == "saelens":
            saelens.write(form, provenance, str(tmp))
            inner = ""
        else:
            inner = sparsify.hookpoint(provenance)
            os.mkdir(tmp / inner)
            sparsify.write(form, provenance, str(tmp / inner))
    return os.path.join(os.fspath(out), inner) if inner else os.fspath(out)


def import_dictionary(path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> str:
    """Read the SAELens or sparsify dictionary at `path` (format detected from its files) and save it as a
    jaxsae dictionary folder `out`; returns `out`. A sparsify run with one folder per hookpoint: pass the
    hookpoint's folder (or the run folder when it holds a single one)."""
    path = source_folder(os.fspath(path))
    fmt, folder = detect_format(path)
    imported = (saelens.read if fmt == "saelens" else sparsify.read)(folder)
    sae, params, buffers, hparams = _as_jaxsae(imported)
    _check_out(out, overwrite)
    prov = imported.provenance
    foreign = {k: v for k, v in imported.foreign_config.items() if k != "jaxsae"}
    if isinstance(foreign.get("metadata"), dict):  # SAELens: its metadata, less the jaxsae sections restored above
        foreign["metadata"] = {k: v for k, v in foreign["metadata"].items() if k != "jaxsae"}
    return save_dictionary(out, sae=sae, params=params, buffers=buffers, hparams=hparams, scale=1.0,
                           source=prov.get("source"), metrics=prov.get("metrics"),
                           extra={"imported_from": {"format": fmt, "path": os.path.abspath(folder),
                                                    "config": foreign}})


def detect_format(path: str) -> tuple[str, str]:
    """(format, the folder holding its files) for a folder `path`; anything else is a DictionaryError that
    says what each format looks like."""
    if saelens.is_saelens(path):
        return "saelens", path
    if sparsify.is_sparsify(path):
        return "sparsify", path
    if all(os.path.isfile(os.path.join(path, name)) for name in (CONFIG_FILE, WEIGHTS_FILE)):
        raise DictionaryError(f"{path} is already a jaxsae dictionary; jaxsae.load({path!r}) reads it as it is")
    hookpoints = sparsify.hookpoint_folders(path)
    if len(hookpoints) == 1:
        return "sparsify", hookpoints[0]
    if hookpoints:
        raise DictionaryError(f"{path} holds {len(hookpoints)} sparsify hookpoints; import one at a time: "
                              + ", ".join(hookpoints))
    raise DictionaryError(
        f"{path}: not a dictionary jaxsae can import (found {sorted(os.listdir(path))}); expected SAELens's "
        f"{saelens.CONFIG_FILE} + {saelens.WEIGHTS_FILE}, or sparsify's {sparsify.CONFIG_FILE} + "
        f"{sparsify.WEIGHTS_FILE} (in the folder or in one hookpoint sub-folder)"
    )


def _as_jaxsae(imported: Imported) -> tuple[SAEConfig, dict, dict, dict]:
    """(sae, params, buffers, hparams) for save_dictionary: the architecture the export came from when the
    provenance names it and that architecture's own portable form (`Architecture.portable`) of the files'
    tensors is exactly the imported form; else the form's native architecture (relu, topk, jumprelu, gated).
    An inference threshold the same in every latent may be the original's scalar "threshold" buffer."""
    form, prov = imported.form, imported.provenance
    d, n = form.tensors["W_enc"].shape
    original = _original_config(prov, d, n)
    if original is not None:
        hparams = prov.get("hparams", {})
        candidates = [(dict(form.tensors), {})]
        threshold = form.tensors.get("threshold")
        if threshold is not None and np.all(threshold == threshold[0]):
            candidates.append(({k: v for k, v in form.tensors.items() if k != "threshold"},
                               {"threshold": np.float32(threshold[0])}))
        for params, buffers in candidates:
            if _same_form(Dictionary(original, params, buffers, hparams, {}), form):
                return original, params, buffers, hparams
    k = {"k": form.k} if form.k is not None else {}
    return (SAEConfig(architecture=form.activation, d_model=int(d), n_latents=int(n), **k), dict(form.tensors), {},
            k)


def _same_form(dictionary: Dictionary, form) -> bool:
    try:
        back = dictionary.portable()
    except (ConfigError, DictionaryError, KeyError):
        return False
    return (back.activation, back.k, sorted(back.tensors)) == (form.activation, form.k, sorted(form.tensors)) and all(
        np.array_equal(back.tensors[name], form.tensors[name]) for name in form.tensors)


def _original_config(provenance: dict, d: int, n: int) -> SAEConfig | None:
    """The SAEConfig an export carried, if any and if its sizes are the files' (else the files win)."""
    if not isinstance(provenance.get("sae"), dict):
        return None
    try:
        sae = sae_config_from_json(provenance["sae"])
    except (TypeError, ConfigError):
        return None
    return sae if (sae.d_model, sae.n_latents) == (d, n) else None


def _check_out(out: str | os.PathLike, overwrite: bool) -> None:
    if os.path.exists(out) and not overwrite and (not os.path.isdir(out) or os.listdir(out)):
        raise DictionaryError(f"{os.fspath(out)} already exists; choose another folder or pass overwrite=True "
                              f"(--overwrite)")

