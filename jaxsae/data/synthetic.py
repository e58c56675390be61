"""Synthetic activations with a known sparse dictionary, and the feature-recovery score against it."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Literal

import numpy as np

from jaxsae.atomic import atomic_path
from jaxsae.errors import ConfigError
from jaxsae.validation import checks_deferred

TRUTH_FILE = "ground_truth.npz"


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """What `synthesize` makes: rows of a known sparse dictionary in superposition, plus noise."""

    rows: int = 200_000
    """Activation rows to write."""
    d_model: int = 64
    """Width of each row."""
    n_features: int = 512
    """True dictionary size (unit-norm directions, in superposition when > d_model)."""
    active_per_row: float = 4.0
    """Mean number of active features per row (each fires with probability active_per_row / n_features)."""
    noise_std: float = 0.01
    """Std of isotropic Gaussian noise added to every coordinate."""
    offset_norm: float = 0.5
    """Norm of a constant vector added to every row (real activations are not centred)."""
    seed: int = 0
    """Seed of all randomness."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Stored dtype."""

    def __post_init__(self):
        if checks_deferred():
            return
        for name in ("rows", "d_model", "n_features"):
            if getattr(self, name) < 1:
                flag = "--" + name
                raise ConfigError(f"synth.{name}: must be >= 1, got {getattr(self, name)} (CLI: {flag})")
        if not 0 < self.active_per_row <= self.n_features:
            raise ConfigError(f"synth.active_per_row: must be in (0, n_features={self.n_features}], got "
                              f"{self.active_per_row} (CLI: --active_per_row)")
        if self.dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"synth.dtype: must be 'float32' or 'bfloat16', got {self.dtype!r} (CLI: --dtype)")


def _truth(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([cfg.seed, 1])
    directions = rng.standard_normal((cfg.n_features, cfg.d_model))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    offset = rng.standard_normal(cfg.d_model)
    offset *= cfg.offset_norm / max(np.linalg.norm(offset), 1e-12)
    return directions.astype(np.float32), offset.astype(np.float32)


def synth_rows(cfg: SynthConfig, start: int, stop: int) -> np.ndarray:
    """[stop-start, d] rows start..stop of the synthetic data (pure function of cfg and the range)."""
    directions, offset = _truth(cfg)
    rng = np.random.default_rng([cfg.seed, 2, start])
    n = stop - start
    p = cfg.active_per_row / cfg.n_features
    active = rng.random((n, cfg.n_features)) < p
    coeffs = np.where(active, rng.uniform(0.5, 1.5, (n, cfg.n_features)), 0.0).astype(np.float32)
    noise = rng.standard_normal((n, cfg.d_model)).astype(np.float32) * cfg.noise_std
    return coeffs @ directions + offset + noise


def synthesize(path: str | os.PathLike, cfg: SynthConfig = SynthConfig(), *, overwrite: bool = False,
               chunk: int = 16_384) -> str:
    """Write a synthetic activation store at `path` (with the true dictionary beside it); returns the path."""
    from jaxsae.store import StoreWriter

    path = os.fspath(path)
    writer = StoreWriter.create(
        path, d_model=cfg.d_model, dtype=cfg.dtype, overwrite=overwrite,
        source={"model": "synthetic", "layer": None, "kind": "synthetic", "synth": dataclasses.asdict(cfg)},
    )
    directions, offset = _truth(cfg)
    with atomic_path(os.path.join(path, TRUTH_FILE)) as tmp, open(tmp, "wb") as f:
        np.savez(f, directions=directions, offset=offset, config=json.dumps(dataclasses.asdict(cfg)))
    with writer:
        for start in range(0, cfg.rows, chunk):
            stop = min(cfg.rows, start + chunk)
            writer.append(synth_rows(cfg, start, stop), cell_index=np.arange(start, stop))
    return path


def load_truth(store_path: str | os.PathLike) -> np.ndarray:
    """[n_features, d] the true unit-norm directions of a synthetic store."""
    with np.load(os.path.join(os.fspath(store_path), TRUTH_FILE)) as f:
        return f["directions"]


def feature_recovery(true_directions: np.ndarray, decoder_rows: np.ndarray, threshold: float = 0.9) -> dict:
    """How well decoder rows recover the true directions.

    true_directions: [F, d]; decoder_rows: [n, d] (any norm).
    Returns mean over true features of the max cosine similarity to any decoder row, and the fraction of true
    features whose max cosine exceeds `threshold`.
    """
    t = true_directions / np.linalg.norm(true_directions, axis=1, keepdims=True)
    norms = np.linalg.norm(decoder_rows, axis=1, keepdims=True)
    w = decoder_rows / np.maximum(norms, 1e-12)
    best = (t @ w.T).max(axis=1)
    return {"mean_max_cos": float(best.mean()), "frac_recovered": float((best > threshold).mean())}
