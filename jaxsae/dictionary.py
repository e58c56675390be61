"""Trained dictionaries as users keep them: a folder with `dictionary.safetensors` + `config.json`.

The weights work on RAW activations (input normalisation is folded in), so `load(path).encode(acts)` needs
nothing but the folder. Encoding runs the same JAX functions the trainer used, on whatever device JAX has.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxsae.atomic import atomic_folder
from jaxsae.codes import SparseCodesBuilder, default_batch_rows, padded_rows
from jaxsae.errors import DictionaryError
from jaxsae.sae.base import Axes, SAEConfig, build, check_hparams, hparam_fields, hparams_as_arrays
from jaxsae.sae.fold import fold_input_scale
from jaxsae.sae.portable import PortableForm

FORMAT = "jaxsae.dictionary"
FORMAT_VERSION = 1
WEIGHTS_FILE = "dictionary.safetensors"
CONFIG_FILE = "config.json"
BUFFER_PREFIX = "buffer."
RUN_COMPLETE_FILE = "run.json"  # the trainer's "finished" marker (jaxsae.train.run_folder writes it)
SPARSE_DEFAULT_ROWS = 4096  # encode(x) of more rows than this returns a sparse matrix unless sparse=False


def save_dictionary(path: str | os.PathLike, *, sae: SAEConfig, params: dict[str, np.ndarray],
                    buffers: dict[str, np.ndarray], hparams: dict[str, Any], scale: float,
                    source: dict | None = None, metrics: dict | None = None, extra: dict | None = None) -> str:
    """Write one member's dictionary (params in NORMALISED units, folded here) atomically to `path`.

    params: per-member arrays (W_enc [d, n], b_enc [n], W_dec [n, d], b_dec [d], extras).
    buffers: the architecture's buffers, kept with the weights (e.g. the BatchTopK threshold).
    scale: the input normalisation used in training (x_normalised = scale * x).
    """
    path = os.fspath(path)
    folded = fold_input_scale({k: np.asarray(v) for k, v in params.items()}, sae, scale)
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32)) for k, v in folded.items()}
    for k, v in buffers.items():
        tensors[BUFFER_PREFIX + k] = np.ascontiguousarray(np.asarray(v, np.float32))
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "architecture": sae.architecture, "d_model": sae.d_model, "n_latents": sae.n_latents,
        "sae": dataclasses.asdict(sae),
        "hparams": {k: (v.item() if hasattr(v, "item") else v) for k, v in hparams.items()},
        "normalisation": {"training_scale": float(scale), "folded_into_weights": True},
        "source": source or {}, "metrics": metrics or {}, **(extra or {}),
    }
    with atomic_folder(path) as tmp:
        save_file(tensors, os.path.join(tmp, WEIGHTS_FILE), metadata={"format": FORMAT})
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(config, f, indent=2, default=_json_default)
    return path


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


@dataclasses.dataclass
class Dictionary:
    """A trained sparse dictionary over raw activations.

    sae:     static architecture config; params/buffers: numpy arrays (raw-activation units).
    hparams: the member's hyperparameters (k, thresholds' bandwidth, ...); config: the whole config.json.
    path:    the folder it was loaded from (None for one built in memory).
    """

    sae: SAEConfig
    params: dict[str, np.ndarray]
    buffers: dict[str, np.ndarray]
    hparams: dict[str, Any]
    config: dict
    path: str | None = None
    _device: tuple | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def d_model(self) -> int:
        return self.sae.d_model

    @property
    def n_latents(self) -> int:
        return self.sae.n_latents

    @property
    def decoder(self) -> np.ndarray:
        """[n, d] decoder rows (feature directions in activation space)."""
        return self.params["W_dec"]

    def _on_device(self) -> tuple[dict, dict, dict]:
        """(params, buffers, hparams) as JAX arrays, copied to the device once per Dictionary."""
        if self._device is None:
            self._device = ({k: jnp.asarray(v) for k, v in self.params.items()},
                            {k: jnp.asarray(v) for k, v in self.buffers.items()}, self._hp())
        return self._device

    def _hp(self):
        """The architecture's hyperparameter NamedTuple of scalar arrays (saved values over its defaults; lr and
        seed, saved too, are training settings and left out)."""
        arch = build(self.sae)
        fields = hparam_fields(arch.hparams)
        hp = check_hparams(arch, self.sae, {k: v for k, v in self.hparams.items() if k in fields}, "hparams")
        return jax.tree.map(lambda v: v[0], hparams_as_arrays(arch, [hp], jnp))

    def encode(self, x, *, sparse: bool | None = None, batch_rows: int | None = None):
        """x: [B, d] raw activations -> [B, n] float32 latents (inference mode).

        sparse: True returns a `scipy.sparse.csr_matrix` [B, n] float32 holding only the non-zero latents
        (sorted column indices); False a dense np.ndarray; None (default) sparse when B > SPARSE_DEFAULT_ROWS
        (4,096), dense otherwise. Both hold exactly the same values: the sparse path selects each row's
        non-zeros on the device from the same dense latents (see jaxsae.codes), so only the non-zeros are
        copied to the host.
        batch_rows: rows per device batch; default: as many as keep a batch's dense latents under 256 MiB.
        """
        x = self._check(x, self.d_model, "x")
        batch_rows = self._batch_rows(batch_rows)
        if sparse is None:
            sparse = x.shape[0] > SPARSE_DEFAULT_ROWS
        if sparse:
            builder = self.sparse_builder(batch_rows)
            builder.add(x)
            return builder.result()
        parts = [np.asarray(self._latents_on_device(x[i:i + batch_rows], batch_rows))[: len(x[i:i + batch_rows])]
                 for i in range(0, x.shape[0], batch_rows)]
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, self.n_latents), np.float32)

    def sparse_builder(self, batch_rows: int | None = None) -> SparseCodesBuilder:
        """A builder that takes checked [m, d] float32 rows in pieces (`add`) and returns their CSR latents
        (`result`), batched exactly as `encode(all_rows, sparse=True)` would be."""
        batch_rows = self._batch_rows(batch_rows)
        arch = build(self.sae)
        return SparseCodesBuilder(functools.partial(self._latents_on_device, batch_rows=batch_rows),
                                  self.n_latents, batch_rows, arch.max_active_per_row,
                                  nonnegative_latents=arch.nonnegative_latents)

    def _batch_rows(self, batch_rows: int | None) -> int:
        if batch_rows is None:
            return default_batch_rows(self.n_latents)
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise DictionaryError(f"batch_rows: expected a positive integer, got {batch_rows!r}")
        return batch_rows

    def _latents_on_device(self, x: np.ndarray, batch_rows: int) -> jax.Array:
        """x: [m, d] float32, m <= batch_rows -> [padded_rows(m, batch_rows), n] latents on the device (rows
        past m encode zero padding: a fixed set of shapes compiles once)."""
        rows = padded_rows(len(x), batch_rows)
        if rows > len(x):
            x = np.concatenate([x, np.zeros((rows - len(x), self.d_model), np.float32)])
        params, buffers, hp = self._on_device()
        return _encode_fn(self.sae)(params, buffers, jnp.asarray(x), hp)

    def portable(self) -> PortableForm:
        """This dictionary's inference as one of the rules other tools share (SAELens, sparsify, PyTorch), as its
        architecture declares it (`Architecture.portable`; e.g. BatchTopK's scalar inference threshold is a
        JumpReLU with that threshold in every latent). Exact: the same latents up to float rounding."""
        arch = build(self.sae)
        if arch.portable is None:
            raise DictionaryError(
                f"architecture: {arch.name!r} declares no portable form (Architecture.portable), so it cannot "
                f"leave jaxsae; the built-in relu, topk, batchtopk, jumprelu, gated and matryoshka can"
            )
        return arch.portable(self.params, self.buffers, self._hp())

    def decode(self, latents) -> np.ndarray:
        """latents: [B, n] (dense, or a scipy.sparse matrix from `encode`) -> [B, d] reconstruction in raw
        activation units."""
        if hasattr(latents, "toarray"):
            latents = latents.toarray()
        latents = self._check(latents, self.n_latents, "latents")
        return np.asarray(_decode_fn(self.sae)(self._on_device()[0], jnp.asarray(latents)))

    def reconstruct(self, x) -> np.ndarray:
        return self.decode(self.encode(x, sparse=False))

    @staticmethod
    def _check(a, width: int, name: str) -> np.ndarray:
        a = np.asarray(a, np.float32)
        if a.ndim != 2 or a.shape[1] != width:
            raise DictionaryError(f"{name}: expected shape [rows, {width}], got {list(a.shape)}; pass a 2-D array "
                                  f"with {width} columns")
        return a


def _enclosing_run(path: str) -> str | None:
    """The run folder `path` is, or whose `dictionaries/<member>` it is; None for a stand-alone dictionary.

    A run folder is recognised by what the trainer writes before any dictionary: checkpoints/ or metrics.jsonl.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    for candidate in (path, os.path.dirname(parent) if os.path.basename(parent) == "dictionaries" else None):
        if candidate is not None and any(os.path.exists(os.path.join(candidate, name))
                                         for name in ("checkpoints", "metrics.jsonl")):
            return candidate
    return None


@functools.lru_cache(maxsize=16)
def _encode_fn(sae: SAEConfig):
    arch = build(sae)
    return jax.jit(lambda p, b, x, hp: arch.encode(p, b, x, hp, Axes()))


@functools.lru_cache(maxsize=16)
def _decode_fn(sae: SAEConfig):
    arch = build(sae)
    return jax.jit(lambda p, f: arch.decode(p, f, Axes()))


def sae_config_from_json(sae: dict) -> SAEConfig:
    """The SAEConfig that config.json's "sae" section (`dataclasses.asdict` through JSON) describes; keys this
    version does not know are ignored."""
    sae_fields = {f.name for f in dataclasses.fields(SAEConfig)}
    return SAEConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in sae.items() if k in sae_fields})


def load(path: str | os.PathLike, member: int | str | None = None, **settings) -> Dictionary:
    """Load a dictionary folder written by the trainer (`<run>/dictionaries/member_000`); or one member of a run
    folder (`load(run_dir, member=2)`) or of a sweep folder, by name (`load(sweep_dir, member="k16_lr0.001")`)
    or by its settings (`load(sweep_dir, k=16, lr=1e-3)`, see `jaxsae.sweep.members`)."""
    path = os.fspath(path)
    if os.path.isfile(os.path.join(path, "sweep.json")):
        from jaxsae.sweep.members import member_dictionary

        return load(member_dictionary(path, member, **settings))
    if settings:
        raise DictionaryError(f"{path}: settings {sorted(settings)} select a member of a sweep folder; this is not "
                              f"one (no sweep.json)")
    if member is not None:
        if not isinstance(member, int) or not os.path.isdir(os.path.join(path, "dictionaries")):
            raise DictionaryError(f"{path}: member={member!r} selects a member of a run folder (an int) or of a "
                                  f"sweep folder (a name); this is neither")
        return load(os.path.join(path, "dictionaries", f"member_{member:03d}"))
    cfg_path, weights_path = os.path.join(path, CONFIG_FILE), os.path.join(path, WEIGHTS_FILE)
    run_dir = _enclosing_run(path)
    if run_dir is not None and not os.path.isfile(os.path.join(run_dir, RUN_COMPLETE_FILE)):
        raise DictionaryError(
            f"{path}: this run has not finished (no {RUN_COMPLETE_FILE}); resume it with "
            f"jaxsae train {os.path.join(run_dir, CONFIG_FILE)}"
        )
    if os.path.isdir(os.path.join(path, "dictionaries")):
        raise DictionaryError(
            f"{path} is a run folder; load one of its dictionaries, e.g. {os.path.join(path, 'dictionaries', 'member_000')}"
        )
    for p in (cfg_path, weights_path):
        if not os.path.isfile(p):
            raise DictionaryError(f"{path}: missing {os.path.basename(p)}; is this a jaxsae dictionary folder?")
    with open(cfg_path) as f:
        config = json.load(f)
    if config.get("format") != FORMAT:
        raise DictionaryError(f"{cfg_path}: not a jaxsae dictionary (format={config.get('format')!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise DictionaryError(
            f"{cfg_path}: format_version {config['format_version']} is newer than this jaxsae reads "
            f"({FORMAT_VERSION}); upgrade jaxsae"
        )
    sae = sae_config_from_json(config["sae"])
    tensors = load_file(weights_path)
    params = {k: v for k, v in tensors.items() if not k.startswith(BUFFER_PREFIX)}
    # Buffers keep the shapes the architecture gives them (safetensors stores scalars as [1]).
    buffer_shapes = {k: v.shape for k, v in jax.eval_shape(build(sae).init_buffers).items()}
    buffers = {k[len(BUFFER_PREFIX):]: v for k, v in tensors.items() if k.startswith(BUFFER_PREFIX)}
    buffers = {k: v.reshape(buffer_shapes[k]) if k in buffer_shapes else v for k, v in buffers.items()}
    for name, shape in (("W_enc", (sae.d_model, sae.n_latents)), ("W_dec", (sae.n_latents, sae.d_model))):
        if name not in params or params[name].shape != shape:
            got = None if name not in params else list(params[name].shape)
            raise DictionaryError(f"{weights_path}: {name} should have shape {list(shape)}, found {got}")
    return Dictionary(sae=sae, params=params, buffers=buffers, hparams=config.get("hparams", {}), config=config,
                      path=os.path.abspath(path))
