"""Extraction settings (no torch import, so the CLI can build its flags without loading PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass

from extract.errors import ExtractError

_DTYPES = ("float32", "bfloat16")
DUPLICATE_POLICIES = ("sum", "first", "error")


@dataclass(frozen=True)
class ExtractConfig:
    """Extraction settings; every field has a default that works.

    counts_layer: where the raw counts are: None/"X" (adata.X), "raw" (adata.raw.X) or a layers key.
    gene_column: var column with gene identifiers (Ensembl IDs for Geneformer, symbols for scGPT);
        None = Geneformer: var['ensembl_id'] if present else the index; scGPT: the index.
    batch_size: cells per forward pass. cells_per_commit: cells per commit window (resume granularity).
    include_special_tokens: also write <cls>/<eos> rows to the token stores.
    cell_embeddings: also write the cell_mean (and cell_cls) stores.
    store_dtype: dtype of stored activations. compute_dtype: "bfloat16" runs the model under autocast
        (meant for GPUs). device: "auto", "cpu", "cuda", "cuda:1", ...
    model_input_size: Geneformer input length (default: the model's max_position_embeddings).
    max_seq_len, n_hvg (None = all genes, as scGPT's embedding path; N = the N most variable genes; "args" =
        args.json's n_hvg), hvg_flavor, include_zero_genes, seed (subsampling of long cells), binning_seed
        (tie-breaking of scGPT's value binning): scGPT tokenisation.
    duplicate_genes: var rows that name the same model gene: "sum" their counts, keep the "first", or "error".
    token_dictionary, gene_median_dictionary, gene_name_dictionary: Geneformer dictionaries when they are
        not in the model folder.
    """

    counts_layer: str | None = None
    gene_column: str | None = None
    batch_size: int = 16
    cells_per_commit: int = 256
    include_special_tokens: bool = False
    cell_embeddings: bool = True
    store_dtype: str = "float32"
    compute_dtype: str = "float32"
    device: str = "auto"
    shard_rows: int = 16384
    chunk_rows: int = 1024
    overwrite: bool = False
    progress_bar: bool = True
    model_input_size: int | None = None
    max_seq_len: int | None = None
    n_hvg: int | str | None = None
    hvg_flavor: str = "seurat_v3"
    include_zero_genes: bool = False
    seed: int = 0
    binning_seed: int = 0
    duplicate_genes: str = "sum"
    token_dictionary: str | None = None
    gene_median_dictionary: str | None = None
    gene_name_dictionary: str | None = None

    def __post_init__(self):
        for name in ("batch_size", "cells_per_commit", "shard_rows", "chunk_rows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ExtractError(f"{name} must be a positive integer, found {value!r}")
        for name in ("store_dtype", "compute_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ExtractError(f"{name} must be one of {_DTYPES}, found {getattr(self, name)!r}")
        for name in ("seed", "binning_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ExtractError(f"{name} must be an integer >= 0, found {value!r}")
        if self.duplicate_genes not in DUPLICATE_POLICIES:
            raise ExtractError(f"duplicate_genes must be one of {DUPLICATE_POLICIES}, found {self.duplicate_genes!r}")
        if not (self.n_hvg in ("args", None) or (isinstance(self.n_hvg, int) and self.n_hvg > 0)):
            raise ExtractError(f"n_hvg must be 'args', None or a positive integer, found {self.n_hvg!r}")

    def tokenizer_options(self) -> dict:
        return {
            "gene_column": self.gene_column, "model_input_size": self.model_input_size,
            "max_seq_len": self.max_seq_len, "n_hvg": self.n_hvg, "hvg_flavor": self.hvg_flavor,
            "include_zero_genes": self.include_zero_genes, "seed": self.seed, "binning_seed": self.binning_seed,
            "duplicate_genes": self.duplicate_genes,
        }
