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

import dataclasses
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
    return is_dataset_folder(path) or (LIST_SEPARATOR in str(path) and not Path(path).exists())


def is_dataset_folder(path: str | Path) -> bool:
    """Whether `path` is a dataset folder (holds dataset.json)."""
    return (Path(path) / DATASET_FILE).is_file()


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of a dataset as found on disk: its folder, global cells [first, stop), its manifest (None when
    the part is missing or its manifest cannot be read), its position among n_parts, and why its manifest
    cannot be read (None when it can, or when there is none)."""

    path: Path
    cells: tuple[int, int]
    manifest: Manifest | None
    index: int
    n_parts: int
    corrupt: str | None = None

    @property
    def is_complete(self) -> bool:
        return self.manifest is not None and self.manifest.is_complete

    @property
    def rerun(self) -> str:
        """How to finish this part."""
        return ((f"delete {self.path}, then " if self.corrupt else "") + f"run (or rerun) worker {self.index}: the same jaxsae extract command with --worker "
                f"{self.index}/{self.n_parts}, or the array task that is worker {self.index}")

    def state(self) -> str:
        """"missing", "CORRUPT: why", "complete" or "INCOMPLETE: cell k of first to stop" (one word or phrase, for
        tables)."""
        if self.corrupt:
            return f"CORRUPT: {self.corrupt}"
        if self.manifest is None:
            return "missing"
        if self.is_complete:
            return "complete"
        done, total = self.manifest.extraction_progress
        return f"INCOMPLETE: stopped at cell {done:,} of {self.cells[0]:,} to {total:,}"

    def line(self) -> str:
        """One row of `jaxsae store info` on a dataset: name, cells, state, rows."""
        rows = "-" if self.manifest is None else f"{self.manifest.rows_committed:,} rows"
        return (f"part       {self.path.name}  cells {self.cells[0]:,} to {self.cells[1]:,}  {rows}  "
                f"{self.state()}")


def dataset_state(path: str | Path) -> tuple[list[Part], dict]:
    """(every part of the dataset folder `path`, as found, in order; the dataset.json record). Reads only;
    raises StoreError only when dataset.json cannot be read (a part whose manifest cannot be is `corrupt`)."""
    folder = Path(path)
    try:
        record = json.loads((folder / DATASET_FILE).read_text())
        entries, n_parts = record["parts"], record["n_parts"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StoreError(f"dataset {folder}: {DATASET_FILE} cannot be read ({err}); expected the record written by "
                         "jaxsae extract --worker; rerun one worker to rewrite it") from None
    parts = []
    for i, entry in enumerate(entries):
        part_path = folder / entry["path"]
        manifest_file = part_path / "manifest.json"
        manifest, corrupt = None, None
        if manifest_file.is_file():
            try:
                manifest = Manifest.from_json(manifest_file.read_text(), where=str(part_path))
            except (OSError, UnicodeDecodeError, StoreError) as err:
                corrupt = str(err)
        parts.append(Part(part_path, (int(entry["cells"][0]), int(entry["cells"][1])), manifest, i, n_parts,
                          corrupt))
    return parts, record


def dataset_parts(path: str | Path) -> tuple[list[Path], dict | None]:
    """(part store folders in order, the dataset's shared source or None for a plain list).

    Raises StoreError naming a part that is missing or whose extraction has not finished, with the command
    that finishes it."""
    if LIST_SEPARATOR in str(path) and not Path(path).exists():
        return [Path(p) for p in str(path).split(LIST_SEPARATOR) if p], None
    parts, record = dataset_state(path)
    for part in parts:
        name, (first, stop) = part.path.name, part.cells
        if part.corrupt:
            raise StoreError(f"dataset {path}: part {name} (cells {first:,} to {stop:,}) has a manifest that cannot "
                             f"be read ({part.corrupt}); expected all {part.n_parts} parts complete; {part.rerun}")
        if part.manifest is None:
            raise StoreError(f"dataset {path}: part {name} (cells {first:,} to {stop:,}) is missing; expected all "
                             f"{part.n_parts} parts; {part.rerun}")
        if not part.is_complete:
            done, total = part.manifest.extraction_progress
            raise StoreError(f"dataset {path}: part {name} is incomplete (its extraction stopped at cell "
                             f"{done:,} of {first:,} to {total:,}); expected all {part.n_parts} parts "
                             f"complete; {part.rerun}: it resumes")
    return [part.path for part in parts], record.get("source")


def describe_unfinished(path: str | Path, parts: list[Part]) -> str:
    """What `jaxsae store info` prints for a dataset with a missing or incomplete part: every part (cells,
    rows, state) and what is left to run."""
    complete = sum(part.is_complete for part in parts)
    rows = sum(part.manifest.rows_committed for part in parts if part.manifest is not None)
    todo = [part for part in parts if not part.is_complete]
    lines = [f"dataset    {path}",
             f"status     INCOMPLETE: {complete} of {len(parts)} parts complete; {rows:,} rows committed so far",
             *(part.line() for part in parts)]
    lines += [f"to do      {part.path.name}: {part.rerun}" for part in todo]
    return "\n".join(lines)


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
