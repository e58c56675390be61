"""What every format module returns when it reads a folder, and the checks they share."""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import numpy as np

from jaxsae.sae.portable import PortableForm
from jaxsae.errors import DictionaryError


class Imported(NamedTuple):
    """A foreign dictionary read from disk.

    form: its inference rule and float32 tensors (jaxsae.sae.portable.PortableForm).
    provenance: the jaxsae config sections an export carried (sae, hparams, source, metrics, ...), or what the
    foreign config says of the source (model, hook) when jaxsae did not write it.
    foreign_config: the format's own config file as read.
    """

    form: PortableForm
    provenance: dict
    foreign_config: dict


def read_json(path: str) -> dict:
    """A JSON object from `path`; a malformed file is a DictionaryError naming it."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DictionaryError(f"{path}: cannot read it as JSON ({e}); is the export complete?") from e
    if not isinstance(value, dict):
        raise DictionaryError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def write_json(path: str, value: dict) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2)


def field(config: dict, name: str, path: str, kind: type | tuple[type, ...] = int):
    """config[name], refused (naming the file and field) when missing or not of `kind`."""
    if name not in config:
        raise DictionaryError(f"{path}: field {name!r} is missing")
    value = config[name]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise DictionaryError(f"{path}: field {name!r} should be {getattr(kind, '__name__', kind)}, found {value!r}")
    return value


def checked_form(activation: str, tensors: dict[str, np.ndarray], d: int, n: int, path: str,
                 k: int | None = None) -> PortableForm:
    """A PortableForm after checking that every tensor the activation needs is there with its shape for
    d_model `d` and `n` latents (the shapes the config promises)."""
    shapes = {"W_enc": (d, n), "W_dec": (n, d), "b_dec": (d,)}
    extra = {"gated": ("b_gate", "r_mag", "b_mag"), "jumprelu": ("b_enc", "threshold")}.get(activation, ("b_enc",))
    shapes.update({name: (n,) for name in extra})
    for name, shape in shapes.items():
        if name not in tensors:
            raise DictionaryError(f"{path}: tensor {name!r} is missing (found {sorted(tensors)})")
        if tuple(tensors[name].shape) != shape:
            raise DictionaryError(f"{path}: tensor {name!r} has shape {list(tensors[name].shape)}, but the config's "
                                  f"sizes (d_model {d}, {n} latents) need {list(shape)}; the weights and the config "
                                  f"do not belong together")
    if k is not None and not 1 <= k <= n:
        raise DictionaryError(f"{path}: k = {k} must be between 1 and the number of latents ({n})")
    return PortableForm(activation, {name: np.asarray(tensors[name], np.float32) for name in shapes}, k)


def source_folder(path: str) -> str:
    """`path` when it is a folder; a DictionaryError otherwise."""
    if not os.path.isdir(path):
        raise DictionaryError(f"{path}: no such folder; pass the folder that holds the dictionary's files")
    return path
