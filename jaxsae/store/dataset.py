"""Several stores read as one: a dataset folder (extraction workers' parts, listed by dataset.json) or a list.

The rows of part 0, then of part 1, ...: global row r of the dataset is row r - (rows before its part) of its
part, so a dataset whose parts were cut from one extraction at commit windows reads row for row like the
single-process store, and its statistics are bitwise that store's (`NormStats.combined`). The arrays are
TensorStore `concat` views of the parts' arrays, so reads that straddle a part boundary are one request and
the training stream's block-shuffled order (a pure function of seed and position over n_rows) is unchanged.

dataset.json (written by `extract.parts`): {"format": "jaxsae dataset", "complete", "n_parts",
"parts": [{"path": folder name, "cells": [first, stop)}], "source": the parts' shared source}.
"""

from __future__ import annotations

import json
from pathlib import Path

import tensorstore as ts

from jaxsae.errors import StoreError
from jaxsae.store.layout import ARRAY_NAMES
from jaxsae.store.manifest import SCHEMA_VERSION, Manifest, NormStats

DATASET_FILE = "dataset.json"
LIST_SEPARATOR = ","  # data.store "a,b,c": stores a, b and c read as one


def is_dataset(path: str | Path) -> bool:
    """Whether `path` names several stores: a dataset folder, or a comma-separated list of store folders."""
    return (Path(path) / DATASET_FILE).is_file() or (LIST_SEPARATOR in str(path) and not Path(path).exists())


def dataset_parts(path: str | Path) -> tuple[list[Path], dict | None]:
    """(part store folders in order, the dataset's shared source or None for a plain list).

    Raises StoreError naming a part that is missing or whose extraction has not finished, with the command
    that finishes it."""
    if LIST_SEPARATOR in str(path) and not Path(path).exists():
        return [Path(p) for p in str(path).split(LIST_SEPARATOR) if p], None
    folder = Path(path)
    try:
        record = json.loads((folder / DATASET_FILE).read_text())
        parts, n_parts = record["parts"], record["n_parts"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StoreError(f"dataset {folder}: {DATASET_FILE} cannot be read ({err}); expected the record written by "
                         "jaxsae extract --worker; rerun one worker to rewrite it") from None
    for i, part in enumerate(parts):
        part_path = folder / part["path"]
        rerun = (f"run (or rerun) worker {i}: the same jaxsae extract command with --worker {i}/{n_parts}, or the "
                 f"array task that is worker {i}")
        if not (part_path / "manifest.json").is_file():
            raise StoreError(f"dataset {folder}: part {part['path']} (cells {part['cells'][0]:,} to "
                             f"{part['cells'][1]:,}) is missing; expected all {n_parts} parts; {rerun}")
        manifest = Manifest.from_json((part_path / "manifest.json").read_text(), where=str(part_path))
        if not manifest.is_complete:
            done, total = manifest.extraction_progress
            raise StoreError(f"dataset {folder}: part {part['path']} is incomplete (its extraction stopped at cell "
                             f"{done:,} of {part['cells'][0]:,} to {total:,}); expected all {n_parts} parts "
                             f"complete; {rerun}: it resumes")
    return [folder / part["path"] for part in parts], record.get("source")


def concatenated(stores: list, source: dict | None) -> tuple[Manifest, dict]:
    """(manifest, arrays) of the opened `stores` (ActivationStores) read one after the other.

    The manifest sums rows and combines the statistics; the arrays are TensorStore concat views. Raises
    StoreError naming the first store whose width, dtype or chunk rows differ from the first one's."""
    first = stores[0]
    for store in stores[1:]:
        for name in ("d_model", "dtype", "chunk_rows"):
            if getattr(store, name) != getattr(first, name):
                raise StoreError(
                    f"store {store.path} has {name}={getattr(store, name)}, but {first.path} has "
                    f"{getattr(first, name)}; expected every store of a dataset to share d_model, dtype and "
                    "chunk_rows; read them separately or re-extract with the same settings")
    manifests = [store.manifest for store in stores]
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, d_model=first.d_model, dtype=first.dtype,
        rows_committed=sum(m.rows_committed for m in manifests), shard_rows=first.shard_rows,
        chunk_rows=first.chunk_rows,
        source=dict(source if source is not None else {"stores": [str(store.path) for store in stores]}),
        norm=NormStats.combined([m.norm for m in manifests]), progress={"parts": len(stores)},
        created=min(m.created for m in manifests), updated=max(m.updated for m in manifests),
    )
    arrays = {name: ts.concat([store.arrays[name] for store in stores], axis=0) for name in ARRAY_NAMES}
    return manifest, arrays
