"""Extraction settings (no torch import, so the CLI can build its flags without loading PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from extract.errors import ExtractError
from jaxsae.validation import checks_deferred

_DTYPES = ("float32", "bfloat16")
HVG_FLAVORS = ("seurat_v3", "seurat", "cell_ranger")  # scanpy's flavors, streamed in extract.hvg
DUPLICATE_POLICIES = ("sum", "first", "error")


@dataclass(frozen=True)
class ExtractConfig:
    """Extraction settings; every field has a default that works."""

    counts_layer: str | None = None
    """Where the raw counts are: None or "X" (adata.X), "raw" (adata.raw.X) or a layers key."""
    gene_column: str | None = None
    """var column with gene ids (Ensembl for Geneformer, symbols for scGPT); default: Geneformer
    var['ensembl_id'] if present, else the index."""
    tokens_per_batch: int | None = 8192
    """Padded tokens per forward pass: within a commit window (cells sorted longest first) a batch takes cells
    while (cells) x (its longest cell's input length) <= this; a longer cell goes alone. Size it to the device:
    the forward's activation memory grows with it (on a GPU, raise it until memory is nearly full, e.g. 32768+
    for Geneformer-sized models); None: fixed batches of batch_size cells."""
    batch_size: int | None = None
    """Most cells per forward pass (None: only tokens_per_batch limits a batch)."""
    cells_per_commit: int = 256
    """Cells per commit window (resume granularity)."""
    include_special_tokens: bool = False
    """Also write <cls>/<eos> rows to the token stores."""
    cell_embeddings: bool = True
    """Also write the cell_mean (and cell_cls) stores."""
    store_dtype: Literal["float32", "bfloat16"] = "float32"
    """Stored activation dtype."""
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    """bfloat16 runs the model under autocast (meant for GPUs)."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:N."""
    shard_rows: int = 16384
    """Store rows per shard (write unit)."""
    chunk_rows: int = 1024
    """Store rows per chunk (read unit)."""
    overwrite: bool = False
    """Replace stores that hold a different extraction."""
    progress_bar: bool = True
    """Show a progress bar."""
    worker: str | None = None
    """i/N: be worker i (0-based) of N writing one dataset together, each the part of the cells balanced by
    token count (default: from SLURM_ARRAY_TASK_ID/COUNT or torchrun's RANK/WORLD_SIZE when they name more than
    one worker; else one process)."""
    model_input_size: int | None = None
    """Geneformer input length (default: the model's max_position_embeddings)."""
    max_seq_len: int | None = None
    """scGPT max sequence length incl. <cls> (default: args.json)."""
    n_hvg: int | Literal["args"] | None = None
    """scGPT: restrict to the N most variable genes ("args": args.json's n_hvg; default: all genes, as scGPT's
    embedding path)."""
    hvg_flavor: str = "seurat_v3"
    """scanpy HVG flavor, 'seurat_v3' (needs scikit-misc, in the extract extra), 'seurat' or 'cell_ranger'; each is
    computed over row blocks of the counts (extract.hvg) and equals scanpy's in-memory selection."""
    include_zero_genes: bool = False
    """scGPT: feed all kept genes, zeros included."""
    seed: int = 0
    """Seed of scGPT's gene subsampling for cells longer than max_seq_len."""
    binning_seed: int = 0
    """Seed of scGPT's value binning (ties with bin edges get a random bin, as scGPT does); recorded in the
    manifest."""
    duplicate_genes: Literal["sum", "first", "error"] = "sum"
    """var rows naming the same model gene: sum their counts, keep the first, or error."""
    token_dictionary: str | None = None
    """Geneformer token dictionary .pkl, if not in the model folder."""
    gene_median_dictionary: str | None = None
    """Geneformer gene median dictionary .pkl, if not in the model folder."""
    gene_name_dictionary: str | None = None
    """Geneformer gene name -> Ensembl dictionary .pkl, if not in the model folder."""

    def __post_init__(self):
        if checks_deferred():
            return
        for name in ("tokens_per_batch", "batch_size", "cells_per_commit", "shard_rows", "chunk_rows"):
            value = getattr(self, name)
            if value is None and name in ("tokens_per_batch", "batch_size"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ExtractError(f"{name} must be a positive integer, found {value!r}")
        if self.tokens_per_batch is None and self.batch_size is None:
            raise ExtractError("tokens_per_batch and batch_size are both None: nothing bounds a batch; set "
                               "tokens_per_batch (padded tokens per forward pass) or batch_size (cells per pass)")
        for name in ("store_dtype", "compute_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ExtractError(f"{name} must be one of {_DTYPES}, found {getattr(self, name)!r}")
        if self.hvg_flavor not in HVG_FLAVORS:
            raise ExtractError(f"hvg_flavor must be one of {HVG_FLAVORS}, found {self.hvg_flavor!r}")
        for name in ("seed", "binning_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ExtractError(f"{name} must be an integer >= 0, found {value!r}")
        if self.duplicate_genes not in DUPLICATE_POLICIES:
            raise ExtractError(f"duplicate_genes must be one of {DUPLICATE_POLICIES}, found {self.duplicate_genes!r}")
        if self.worker is not None:
            from extract.parts import parse_worker

            parse_worker(self.worker)
        if not (self.n_hvg in ("args", None) or (isinstance(self.n_hvg, int) and self.n_hvg > 0)):
            raise ExtractError(f"n_hvg must be 'args', None or a positive integer, found {self.n_hvg!r}")

    def tokenizer_options(self) -> dict:
        return {
            "gene_column": self.gene_column, "model_input_size": self.model_input_size,
            "max_seq_len": self.max_seq_len, "n_hvg": self.n_hvg, "hvg_flavor": self.hvg_flavor,
            "include_zero_genes": self.include_zero_genes, "seed": self.seed, "binning_seed": self.binning_seed,
            "duplicate_genes": self.duplicate_genes,
        }
