"""On-disk layout: the four zarr3 arrays of a store, their TensorStore specs, contexts, and checked opens.

Every array uses the zarr3 `sharding_indexed` codec with the same row geometry: one shard (one file, the
write unit) holds `shard_rows` rows, split into inner chunks (the read unit) of `chunk_rows` rows; a chunk
spans the full activation width, so reading `chunk_rows` aligned rows touches exactly one inner chunk.
Chunks are stored raw (little-endian bytes, no compression): activations compress poorly and raw chunks
keep reads at memory-copy speed. The shard index carries a crc32c so a torn index is detected.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import tensorstore as ts

from jaxsae.errors import StoreError
from jaxsae.store.manifest import Manifest

ACTS = "acts"
METADATA_DTYPES = {"cell_index": "int64", "token_id": "int32", "position": "int32"}
ARRAY_NAMES = (ACTS, *METADATA_DTYPES)
METADATA_FILL = -1  # metadata value of rows appended without it
READ_CACHE_BYTES = 256 << 20  # decoded chunks + shard indices kept by readers in one process
FILE_IO_CONCURRENCY = 32  # concurrent file reads/writes; reads are small (one inner chunk each)


@functools.cache
def read_context() -> ts.Context:
    """The process-wide context shared by every read-only store (one cache, one thread budget)."""
    return ts.Context(
        {
            "cache_pool": {"total_bytes_limit": READ_CACHE_BYTES},
            "data_copy_concurrency": {"limit": os.cpu_count() or 1},
            "file_io_concurrency": {"limit": FILE_IO_CONCURRENCY},
        }
    )


@functools.cache
def write_context() -> ts.Context:
    """The context of writers: no data cache (written shards are not read back), fsync on every write."""
    return ts.Context(
        {
            "cache_pool": {"total_bytes_limit": 0},
            "data_copy_concurrency": {"limit": os.cpu_count() or 1},
            "file_io_concurrency": {"limit": FILE_IO_CONCURRENCY},
            "file_io_sync": True,
        }
    )


def _kvstore_spec(store_path: Path, name: str) -> dict:
    # absolute: TensorStore's file driver refuses paths with ".." segments (e.g. out_dir="../out")
    return {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.abspath(store_path / name)}}


def _array_metadata(name: str, manifest: Manifest) -> dict:
    """zarr3 metadata of array `name`: acts [0, d] or metadata [0], sharded by rows."""
    width = [manifest.d_model] if name == ACTS else []
    raw_bytes = [{"name": "bytes", "configuration": {"endian": "little"}}]
    return {
        "shape": [0, *width],
        "data_type": manifest.dtype if name == ACTS else METADATA_DTYPES[name],
        "fill_value": 0 if name == ACTS else METADATA_FILL,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [manifest.shard_rows, *width]}},
        "codecs": [
            {
                "name": "sharding_indexed",
                "configuration": {
                    "chunk_shape": [manifest.chunk_rows, *width],
                    "codecs": raw_bytes,
                    "index_codecs": [*raw_bytes, {"name": "crc32c"}],
                    "index_location": "end",
                },
            }
        ],
    }


def create_arrays(store_path: Path, manifest: Manifest) -> dict[str, ts.TensorStore]:
    """Create the four empty arrays (replacing any existing ones), opened for writing."""
    futures = {
        name: ts.open(
            {**_kvstore_spec(store_path, name), "metadata": _array_metadata(name, manifest)},
            create=True,
            delete_existing=True,
            context=write_context(),
        )
        for name in ARRAY_NAMES
    }
    return {name: future.result() for name, future in futures.items()}


def open_arrays(store_path: Path, manifest: Manifest, *, writable: bool) -> dict[str, ts.TensorStore]:
    """Open the four arrays of a store and check them against its manifest.

    Returns full (unsliced) arrays: acts [capacity, d], metadata [capacity], capacity >= rows_committed.
    Raises StoreError naming the array, what was found, what was expected and the fix.
    """
    context = write_context() if writable else read_context()
    futures = {
        name: ts.open(_kvstore_spec(store_path, name), read=True, write=writable, context=context)
        for name in ARRAY_NAMES
    }
    arrays = {}
    for name, future in futures.items():
        try:
            arrays[name] = future.result()
        except ValueError as err:
            raise StoreError(
                f"store {store_path}: array '{name}' cannot be opened ({str(err).split(' [')[0]}); expected a "
                f"zarr3 array in {store_path / name}; the store is incomplete or damaged: re-run the extraction"
            ) from None
        _check_array(store_path, name, arrays[name], manifest)
    return arrays


def _check_array(store_path: Path, name: str, array: ts.TensorStore, manifest: Manifest) -> None:
    where = f"store {store_path}: array '{name}'"
    fix = "the array does not belong to this manifest or was damaged: re-run the extraction into a fresh store"
    width = (manifest.d_model,) if name == ACTS else ()
    expected_dtype = manifest.dtype if name == ACTS else METADATA_DTYPES[name]
    if array.dtype.name != expected_dtype:
        raise StoreError(f"{where} has dtype {array.dtype.name}; the manifest expects {expected_dtype}; {fix}")
    if tuple(array.shape[1:]) != width:
        raise StoreError(
            f"{where} has shape {tuple(array.shape)}, i.e. width {tuple(array.shape[1:])}; the manifest expects "
            f"rows of width {width} (d_model={manifest.d_model}); {fix}"
        )
    if array.shape[0] < manifest.rows_committed:
        raise StoreError(
            f"{where} holds {array.shape[0]} rows but the manifest has rows_committed={manifest.rows_committed}; "
            f"expected at least that many; {fix}"
        )
    layout = array.chunk_layout
    shard, chunk = tuple(layout.write_chunk.shape), tuple(layout.read_chunk.shape)
    if shard != (manifest.shard_rows, *width) or chunk != (manifest.chunk_rows, *width):
        raise StoreError(
            f"{where} has shards {shard} and inner chunks {chunk}; the manifest expects shards "
            f"{(manifest.shard_rows, *width)} and inner chunks {(manifest.chunk_rows, *width)}; {fix}"
        )
