"""Activation store: TensorStore zarr3 arrays of model activations plus a manifest, written crash-safely.

A store is one folder per (model, layer, kind):
    manifest.json   schema, d_model, dtype, rows_committed, shard/chunk rows, source, norm stats, progress
    acts/           zarr3 [N, d_model] float32 | bfloat16, sharding_indexed (shard_rows x d, chunk_rows x d)
    cell_index/     zarr3 [N] int64
    token_id/       zarr3 [N] int32
    position/       zarr3 [N] int32
    genes.tsv       token id -> Ensembl id, symbol (extraction stores; `load_genes`, jaxsae.store.genes)
Only rows [0, rows_committed) are valid; `StoreWriter` writes them, `open_store` reads them, `verify_store`
checks them all. `open_store` also reads a dataset (extraction workers' part stores, or a comma-separated list
of stores) as one store (jaxsae.store.dataset); `describe_store` and `verify_store` also take a dataset folder
whose parts are missing or unfinished, and say which. `FolderLock` keeps one writer per folder (extractions,
trainers).
"""

from __future__ import annotations

from jaxsae.errors import StoreError, StoreWriteError
from jaxsae.store.lock import FolderLock, FolderLockedError
from jaxsae.store.manifest import SCHEMA_VERSION, Manifest, NormStats
from jaxsae.store.reader import ActivationStore, describe_store, open_store
from jaxsae.store.verify import VerifyReport, verify_store
from jaxsae.store.writer import StoreWriter

__all__ = [
    "SCHEMA_VERSION",
    "ActivationStore",
    "FolderLock",
    "FolderLockedError",
    "Manifest",
    "NormStats",
    "StoreError",
    "StoreWriteError",
    "StoreWriter",
    "VerifyReport",
    "describe_store",
    "open_store",
    "verify_store",
]
