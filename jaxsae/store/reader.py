"""ActivationStore: validated, read-only access to the committed rows of a store."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxsae.errors import StoreError
from jaxsae.store.dataset import (concatenated, dataset_parts, dataset_state, describe_unfinished, is_dataset,
                                  is_dataset_folder)
from jaxsae.store.layout import ACTS, METADATA_DTYPES, open_arrays
from jaxsae.store.manifest import Manifest, NormStats, read_manifest


def open_store(path: str | Path) -> ActivationStore:
    """Open and validate the store folder `path` for reading; every failure is a StoreError with the fix.

    `path` may also name several stores read as one (jaxsae.store.dataset): a dataset folder (dataset.json and
    its parts, each complete, or a StoreError naming the part) or a comma-separated list of store folders.
    """
    if is_dataset(path):
        parts, source = dataset_parts(path)
        manifest, arrays = concatenated([open_store(part) for part in parts], source)
        return ActivationStore(Path(path), manifest, arrays)
    path = Path(path)
    manifest = read_manifest(path)
    arrays = open_arrays(path, manifest, writable=False)
    return ActivationStore(path, manifest, arrays)


def describe_store(path: str | Path) -> str:
    """The human summary of the store at `path` (what `jaxsae store info` prints). A dataset folder lists its
    parts too; one with a missing or incomplete part is described part by part, with what is left to run,
    instead of refused."""
    if not is_dataset_folder(path):
        return open_store(path).describe()
    parts, _ = dataset_state(path)
    if not all(part.is_complete for part in parts):
        return describe_unfinished(path, parts)
    return "\n".join([open_store(path).describe(), *(part.line() for part in parts)])


class ActivationStore:
    """The committed rows [0, n_rows) of a store, as of when it was opened.

    Reads return float32 whatever the stored dtype (bfloat16 is widened exactly). A store opened while a
    writer appends keeps seeing the rows committed at open time; open it again to see more.
    """

    def __init__(self, path: Path, manifest: Manifest, arrays: dict):
        self.path = path
        self.manifest = manifest
        # Views limited to the committed rows: rows past them are garbage and cannot be read by mistake.
        self._arrays = {name: array[: manifest.rows_committed] for name, array in arrays.items()}

    @property
    def arrays(self) -> dict:
        """The committed rows' TensorStore arrays: acts [n_rows, d_model], cell_index / token_id / position
        [n_rows]."""
        return dict(self._arrays)

    @property
    def n_rows(self) -> int:
        return self.manifest.rows_committed

    @property
    def d_model(self) -> int:
        return self.manifest.d_model

    @property
    def dtype(self) -> str:
        """Stored dtype of the activations: "float32" or "bfloat16"."""
        return self.manifest.dtype

    @property
    def chunk_rows(self) -> int:
        return self.manifest.chunk_rows

    @property
    def shard_rows(self) -> int:
        return self.manifest.shard_rows

    @property
    def norm(self) -> NormStats:
        return self.manifest.norm

    @property
    def source(self) -> dict:
        return dict(self.manifest.source)

    @property
    def progress(self) -> dict:
        return dict(self.manifest.progress)

    @property
    def is_complete(self) -> bool:
        """False for a store whose extraction stopped before its last cell (see `Manifest.is_complete`); stores
        written otherwise (`jaxsae synth`, a direct StoreWriter) are complete."""
        return self.manifest.is_complete

    @property
    def status(self) -> str:
        """"complete" or "INCOMPLETE: extraction stopped at cell k of N; rerun the extract command to finish it"."""
        return self.manifest.status

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as [stop - start, d_model] float32."""
        return self.read_ranges([(start, stop)])[0]

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Rows of every (start, stop) range, each [stop - start, d_model] float32.

        PERFORMANCE: all reads are issued before any is waited on, so TensorStore overlaps the file I/O and
        decoding of every range; ranges aligned to chunk_rows touch exactly one inner chunk per chunk_rows
        rows. This is the hot path of the training data stream.
        """
        for start, stop in ranges:
            self._check_range(start, stop)
        acts = self._arrays[ACTS]
        futures = [acts[start:stop].read() for start, stop in ranges]
        return [np.asarray(future.result(), dtype=np.float32) for future in futures]

    def read_rows_at(self, indices: np.ndarray) -> np.ndarray:
        """Rows at arbitrary `indices: [m] int` (any order, repeats allowed) as [m, d_model] float32."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
            raise StoreError(
                f"store {self.path}: read_rows_at got indices of shape {idx.shape} dtype {idx.dtype}; "
                "expected a 1-D integer array"
            )
        if idx.size == 0:
            return np.zeros((0, self.d_model), np.float32)
        if idx.min() < 0 or idx.max() >= self.n_rows:
            raise StoreError(
                f"store {self.path}: read_rows_at got indices in [{idx.min()}, {idx.max()}]; expected indices in "
                f"[0, {self.n_rows}) (the committed rows); clip or filter the indices"
            )
        rows = self._arrays[ACTS].oindex[idx.astype(np.int64)].read().result()
        return np.asarray(rows, dtype=np.float32)

    def read_metadata(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Row metadata of rows [start, stop): "cell_index" [n] int64, "token_id" and "position" [n] int32
        (-1 where the writer gave none)."""
        self._check_range(start, stop)
        futures = {name: self._arrays[name][start:stop].read() for name in METADATA_DTYPES}
        return {name: future.result() for name, future in futures.items()}

    def describe(self) -> str:
        """A human summary: path, size, completeness, layout, source, norm statistics, bytes on disk."""
        m = self.manifest
        lines = [
            f"store      {self.path}",
            f"rows       {m.rows_committed:,} x d_model {m.d_model} ({m.dtype})",
            f"status     {m.status}",
            f"layout     shards of {m.shard_rows:,} rows, inner chunks of {m.chunk_rows:,} rows",
            f"source     {json.dumps(m.source, sort_keys=True)}",
            f"progress   {json.dumps(m.progress, sort_keys=True)}",
        ]
        if m.norm.count:
            mean_norm = float(np.linalg.norm(m.norm.mean))
            lines.append(
                f"norm       rms row norm {np.sqrt(m.norm.mean_sq_norm):.6g}, norm of mean row {mean_norm:.6g}"
            )
        else:
            lines.append("norm       (no committed rows)")
        lines.append(f"on disk    {_bytes_on_disk(self.path) / 2**20:,.1f} MiB")
        lines.append(f"updated    {m.updated} (created {m.created})")
        return "\n".join(lines)

    def _check_range(self, start: int, stop: int) -> None:
        if not (0 <= start <= stop <= self.n_rows):
            raise StoreError(
                f"store {self.path}: asked for rows [{start}, {stop}); expected 0 <= start <= stop <= {self.n_rows} "
                "(the committed rows); fix the range"
            )

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, n_rows={self.n_rows}, d_model={self.d_model}, "
            f"dtype={self.dtype!r})"
        )


def _bytes_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
