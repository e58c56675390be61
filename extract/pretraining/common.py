"""What both demo pretrainings share: settings, determinism, the cell split, batching, masks, schedule, step."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from extract.demo import check_kind
from extract.errors import ExtractError

MASK_STREAM = 1  # second seed word of the held-out masks
LOG_EVERY = 50
log = logging.getLogger("jaxsae.extract")


@dataclass(frozen=True)
class PretrainConfig:
    """Model and pretraining settings of one demo model (defaults: the committed weights).

    max_length: geneformer max_position_embeddings (the longest pbmc cell, 409 genes, + <cls> + <eos>);
    scgpt max_seq_len (409 genes + <cls>). mask_fraction: geneformer 0.15 (BERT), scgpt 0.4 (scGPT's
    mask_ratio). d_ff: the feed-forward width (geneformer intermediate_size, scgpt d_hid).
    """

    model_kind: str = "geneformer"
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 256
    max_length: int = 411
    n_bins: int = 51
    steps: int = 500
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    mask_fraction: float = 0.15
    heldout_fraction: float = 0.15
    seed: int = 0
    n_threads: int = 1

    def __post_init__(self):
        check_kind(self.model_kind)
        for name in ("n_layers", "d_model", "n_heads", "d_ff", "max_length", "steps", "batch_size", "n_threads"):
            if getattr(self, name) < 1:
                raise ExtractError(f"PretrainConfig.{name} must be >= 1, found {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ExtractError(f"PretrainConfig.d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        for name in ("mask_fraction", "heldout_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ExtractError(f"PretrainConfig.{name} must be in (0, 1), found {getattr(self, name)}")

    @classmethod
    def for_kind(cls, model_kind: str, **overrides) -> PretrainConfig:
        """The committed settings of `model_kind`, with `overrides`."""
        defaults = {"scgpt": {"max_length": 410, "mask_fraction": 0.4}}.get(check_kind(model_kind), {})
        return cls(model_kind=model_kind, **{**defaults, **overrides})


@contextmanager
def deterministic_torch(n_threads: int):
    """Fixed thread count and deterministic algorithms inside the block; the caller's settings after it."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(n_threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict)


def split_cells(n_cells: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, heldout) sorted AnnData rows: a seeded permutation, the first round(f * n) held out."""
    order = np.random.default_rng(seed).permutation(n_cells)
    n_heldout = max(1, round(heldout_fraction * n_cells))
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches (indices into `lengths`): shuffled, sorted by length inside groups of 4 batches
    so padding stays small, batch order shuffled; a last incomplete batch is dropped."""
    order = rng.permutation(len(lengths))
    group = 4 * batch_size
    batches = []
    for start in range(0, len(order) - batch_size + 1, group):
        members = order[start:start + group]
        members = members[np.argsort(lengths[members], kind="stable")]
        batches += [members[i:i + batch_size] for i in range(0, len(members) - batch_size + 1, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def pad(rows: list[np.ndarray], value, dtype) -> torch.Tensor:
    """[B, max length] tensor of `rows`, right-padded with `value`."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.from_numpy(np.asarray(row))
    return out


def heldout_mask(n_tokens: int, first: int, fraction: float, seed: int, cell: int) -> np.ndarray:
    """[first + n_tokens] bool: of the n_tokens gene positions that start at `first`, round(fraction x
    n_tokens) (at least 1) are True, drawn from a generator seeded by (seed, MASK_STREAM, cell)."""
    rng = np.random.default_rng([seed, MASK_STREAM, cell])
    chosen = rng.choice(n_tokens, max(1, round(fraction * n_tokens)), replace=False)
    mask = np.zeros(first + n_tokens, dtype=bool)
    mask[first + chosen] = True
    return mask


def cosine_schedule(config: PretrainConfig):
    """Linear warmup over warmup_steps, then cosine decay to 0 at `steps`."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor



def optimise(loss: torch.Tensor, module, optimizer, schedule, losses: list[float], config: PretrainConfig) -> None:
    """One optimiser step on `loss` (gradients clipped to norm 1), its value appended to `losses`, logged
    every LOG_EVERY steps."""
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    losses.append(loss.item())
    if len(losses) % LOG_EVERY == 0:
        log.info(f"step {len(losses)}/{config.steps}: loss {np.mean(losses[-LOG_EVERY:]):.4f}")
