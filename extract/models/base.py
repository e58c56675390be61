"""What extraction needs from any model: its blocks to hook, an encoder-only forward, a tokeniser, a hash."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from extract.errors import ExtractError


def sha256_files(paths) -> str:
    """sha256 over the bytes of `paths` (sorted by name), each prefixed by its file name."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' -> cuda when available, else cpu."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ExtractError("device='cuda' was asked for but torch sees no CUDA device; pass device='cpu'")
    return device


class StopForward(Exception):
    """Raised by the hook on the deepest requested block to end a forward pass that has all it needs."""


class ExtractModel:
    """A loaded model ready for extraction (subclasses: GeneformerModel, ScGPTModel).

    Attributes: kind, module (the torch module, eval mode), blocks (the transformer blocks, in order;
    layer L is the residual stream after blocks[L]), n_layers, d_model, pad_token_id, device,
    checkpoint_hash, model_dir.
    """

    kind: str
    module: torch.nn.Module
    blocks: list[torch.nn.Module]
    d_model: int
    pad_token_id: int
    device: torch.device
    checkpoint_hash: str
    model_dir: Path

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def gene_table(self) -> pd.DataFrame:
        """Every token of the model's vocabulary: columns token_id, gene_id (Ensembl, "" when the model's files
        give none), symbol ("" when unknown; the name of special tokens). What `genes.tsv` holds."""
        raise NotImplementedError

    def make_tokenizer(self, var, **options):
        """A tokeniser for this model bound to an AnnData's var."""
        raise NotImplementedError

    def encode(self, input_ids: torch.Tensor, values: torch.Tensor | None, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids: [B, L] int64; values: [B, L] float32 or None; attention_mask: [B, L] bool (True = real
        token). Runs the embeddings and transformer blocks only (no prediction heads) -> [B, L, d_model]."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The model part of a store manifest's `source`."""
        return {
            "model": self.kind,
            "model_dir": str(self.model_dir),
            "checkpoint_sha256": self.checkpoint_hash,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
        }

    def check_layers(self, layers) -> list[int]:
        """Normalise layer indices (negative counts from the end) and refuse ones out of range."""
        out = []
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int) or not -self.n_layers <= layer < self.n_layers:
                raise ExtractError(
                    f"layer {layer!r} is out of range: this {self.kind} model has {self.n_layers} blocks; "
                    f"layers are 0..{self.n_layers - 1} (residual stream after that block) or negative from the end"
                )
            out.append(layer % self.n_layers)
        if not out:
            raise ExtractError("layers is empty; pass at least one layer index")
        return sorted(set(out))

    @contextmanager
    def capture(self, layers: list[int], *, stop_after_last: bool = False):
        """Context with forward hooks on `blocks[L]` for L in layers; yields {L: [B, L, d] tensor} filled by
        each forward pass (residual stream after that block). stop_after_last: the hook on the deepest block
        raises `StopForward`, so the blocks after it (and any head) never run."""
        captured: dict[int, torch.Tensor] = {}
        deepest = max(layers)

        def hook_for(layer):
            def hook(_module, _inputs, output):
                captured[layer] = output[0] if isinstance(output, tuple) else output
                if stop_after_last and layer == deepest:
                    raise StopForward

            return hook

        handles = [self.blocks[layer].register_forward_hook(hook_for(layer)) for layer in layers]
        try:
            yield captured
        finally:
            for handle in handles:
                handle.remove()

    def hidden_states(self, input_ids: torch.Tensor, values: torch.Tensor | None, attention_mask: torch.Tensor,
                      layers: list[int]) -> dict[int, torch.Tensor]:
        """{L: [B, L, d_model]} residual stream after each block L in `layers` (arguments as in `encode`).

        PERFORMANCE: the forward pass stops after the deepest requested block; extracting layer 4 of a
        12-block model runs 5 blocks, not 12 (see experiments/RESULTS.md).
        """
        with self.capture(layers, stop_after_last=True) as captured:
            try:
                self.encode(input_ids, values, attention_mask)
            except StopForward:
                pass
        return captured


@dataclass(frozen=True)
class ModelVocabulary:
    """A model folder's vocabulary and checkpoint hash, read without building the network
    (`jaxsae store add-genes`). table: what the loaded model's `gene_table()` returns."""

    kind: str
    model_dir: Path
    checkpoint_hash: str
    table: pd.DataFrame

    def gene_table(self) -> pd.DataFrame:
        return self.table.copy()


def require_files(folder: Path, names: list[str], what: str) -> None:
    if not folder.is_dir():
        raise ExtractError(f"model folder {folder} does not exist")
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise ExtractError(f"{what} folder {folder} is missing {missing}; expected {names}")
