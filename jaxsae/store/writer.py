"""StoreWriter: append activation rows, write whole shards as they fill, commit rows with a manifest rewrite.

Write protocol (crash safety):
  * Rows are copied (cast to the storage dtype) into a preallocated one-shard buffer that starts at a
    shard-aligned row. When it fills, the whole shard is written (asynchronously, at most
    `MAX_SHARDS_IN_FLIGHT` shards in flight) and a fresh buffer replaces it.
  * `commit` writes the buffered partial shard too (the whole shard prefix, committed rows included, so the
    shard file is rewritten in one piece), waits for every write to land (the writer's context fsyncs),
    and only then atomically replaces manifest.json with the new `rows_committed`.
  * The partial shard stays in the buffer after a commit, so the next write of that shard is again a
    single aligned write. `StoreWriter.open` reloads it from disk for the same reason.
  * TensorStore may keep referencing what it was given (`can_reference_source_data_indefinitely`, which
    saves its own copy of every shard): a buffer's rows are never modified once written, since appends only
    fill rows after them and a full buffer is handed over and replaced, never reused.
  * Arrays grow in whole-shard capacity steps (shape[0] is a multiple of shard_rows) just before a shard
    is written. Rows in [rows_committed, shape[0]) are garbage: never read, overwritten by the next writer.
A process killed at any point therefore leaves the previous manifest and every row it covers intact.

PERFORMANCE: the writer copies each row once between the caller's array and TensorStore (into the shard
buffer; float32 rows need no cast copy first), and TensorStore may reference the buffer instead of copying it
into its cache. The lists of per-append arrays joined at each shard write that this replaced made two more
copies (a cast copy and the join); on the extraction bench the write path went 0.87 -> 0.52 CPU-s
(experiments/RESULTS.md, "Extraction overhead, round 2").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxsae.errors import StoreError, StoreWriteError
from jaxsae.store.layout import ACTS, ARRAY_NAMES, METADATA_DTYPES, METADATA_FILL, create_arrays, open_arrays
from jaxsae.store.manifest import (
    MANIFEST_NAME,
    Manifest,
    check_json_object,
    read_manifest,
    utc_now,
    write_manifest,
)

MAX_SHARDS_IN_FLIGHT = 2  # bounds the RAM held by shard writes that have not landed yet
STATS_BLOCK_ROWS = 4096  # rows converted to float64 at a time for the norm sums
_INPUT_FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
_STORAGE_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


class StoreWriter:
    """Appends rows to one store; build it with `StoreWriter.create` or `StoreWriter.open`.

    One writer per store at a time (there is no lock file). Used as a context manager, a clean exit
    commits; an exception leaves the store at its last commit, as a crash would.
    """

    def __init__(self, path: Path, manifest: Manifest, arrays: dict, carried: dict[str, np.ndarray]):
        self._path = path
        self._manifest = manifest
        self._arrays = arrays
        self._storage_dtype = _STORAGE_DTYPES[manifest.dtype]
        carried_rows = len(carried[ACTS])
        self._buffer_start = manifest.rows_committed - carried_rows
        self._buffer = self._new_buffer()  # {name: [shard_rows, ...]}, rows [0, rows_appended - buffer_start) set
        for name in ARRAY_NAMES:
            self._buffer[name][:carried_rows] = carried[name]
        self._rows_appended = manifest.rows_committed
        self._pending_sum = np.zeros(manifest.d_model, np.float64)
        self._pending_sq_norm = 0.0
        self._in_flight: list = []
        self._closed = False

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        d_model: int,
        dtype: str = "float32",
        shard_rows: int = 16384,
        chunk_rows: int = 1024,
        source: dict | None = None,
        progress: dict | None = None,
        overwrite: bool = False,
    ) -> StoreWriter:
        """Create an empty store at `path` (committed with 0 rows and `progress`); refuse an existing one unless
        `overwrite`."""
        path = Path(path)
        manifest = Manifest.new(
            d_model=d_model, dtype=dtype, shard_rows=shard_rows, chunk_rows=chunk_rows, source=source
        )
        if progress is not None:
            check_json_object("progress", progress)
            manifest = dataclasses.replace(manifest, progress=dict(progress))
        if path.exists() and not path.is_dir():
            raise StoreError(f"store {path}: found a file; expected a folder or nothing; choose another path")
        existing = [name for name in (MANIFEST_NAME, *ARRAY_NAMES) if (path / name).exists()]
        if existing and not overwrite:
            raise StoreError(
                f"store {path}: already holds {existing}; expected a new or empty folder; pass overwrite=True "
                "to replace it, or use StoreWriter.open(path) to append to it"
            )
        path.mkdir(parents=True, exist_ok=True)
        (path / MANIFEST_NAME).unlink(missing_ok=True)  # first: a crash mid-overwrite must not look like a store
        arrays = create_arrays(path, manifest)
        write_manifest(path, manifest)
        empty = {name: np.zeros((0, *arrays[name].shape[1:]), arrays[name].dtype.numpy_dtype) for name in ARRAY_NAMES}
        return cls(path, manifest, arrays, empty)

    @classmethod
    def open(cls, path: str | Path) -> StoreWriter:
        """Re-open an existing store to append after its `rows_committed` (e.g. to resume after a crash)."""
        path = Path(path)
        manifest = read_manifest(path)
        arrays = open_arrays(path, manifest, writable=True)
        shard_start = manifest.rows_committed // manifest.shard_rows * manifest.shard_rows
        reads = {name: arrays[name][shard_start : manifest.rows_committed].read() for name in ARRAY_NAMES}
        return cls(path, manifest, arrays, {name: future.result() for name, future in reads.items()})

    @property
    def path(self) -> Path:
        return self._path

    @property
    def manifest(self) -> Manifest:
        """The last committed manifest."""
        return self._manifest

    @property
    def rows_committed(self) -> int:
        return self._manifest.rows_committed

    @property
    def rows_appended(self) -> int:
        """Rows appended so far, committed or not."""
        return self._rows_appended

    @property
    def progress(self) -> dict:
        """The progress dict of the last commit."""
        return dict(self._manifest.progress)

    def append(
        self,
        acts: np.ndarray,
        *,
        cell_index: np.ndarray | None = None,
        token_id: np.ndarray | None = None,
        position: np.ndarray | None = None,
    ) -> None:
        """Buffer rows and write every shard that fills up.

        acts: [n, d_model] float16/32/64 or bfloat16 activations, stored as the store's dtype.
        cell_index: [n] int (int64 on disk); token_id, position: [n] int (int32 on disk); a missing one
        is stored as -1. Every check runs before anything is buffered; a failure raises StoreError.
        """
        self._require_open()
        rows, row_sum, sq_norm = self._checked_acts(acts)
        n = len(rows)
        given = {"cell_index": cell_index, "token_id": token_id, "position": position}
        metadata = {name: self._checked_metadata(name, value, n) for name, value in given.items()}
        self._pending_sum += row_sum
        self._pending_sq_norm += sq_norm
        shard_rows = self._manifest.shard_rows
        done = 0
        while done < n:
            fill = self._rows_appended - self._buffer_start
            m = min(n - done, shard_rows - fill)
            for name, values in ((ACTS, rows), *metadata.items()):
                self._buffer[name][fill : fill + m] = values[done : done + m]
            self._rows_appended += m
            done += m
            if fill + m == shard_rows:
                self._write(self._buffer_start, self._buffer)
                self._buffer_start += shard_rows
                self._buffer = self._new_buffer()

    def flush(self) -> None:
        """Wait until every whole shard written by `append` has landed; the manifest is not touched."""
        self._require_open()
        self._wait_for_writes(keep=0)

    def commit(self, progress: dict | None = None) -> None:
        """Write every buffered row, wait for the data to land, then atomically rewrite manifest.json.

        progress: free-form JSON-serialisable dict stored with the rows (None keeps the previous one).
        """
        self._require_open()
        if progress is not None:
            try:
                check_json_object("progress", progress)
            except StoreError as err:
                raise StoreError(f"store {self._path}: commit: {err}") from None
        new_rows = self._rows_appended - self._manifest.rows_committed
        if new_rows == 0 and progress is None:
            self._wait_for_writes(keep=0)
            return
        if self._rows_appended > max(self._buffer_start, self._manifest.rows_committed):
            fill = self._rows_appended - self._buffer_start
            self._write(self._buffer_start, {name: buffer[:fill] for name, buffer in self._buffer.items()})
        self._wait_for_writes(keep=0)
        manifest = dataclasses.replace(
            self._manifest,
            rows_committed=self._rows_appended,
            norm=self._manifest.norm.plus(new_rows, self._pending_sum, self._pending_sq_norm),
            progress=dict(self._manifest.progress if progress is None else progress),
            updated=utc_now(),
        )
        write_manifest(self._path, manifest)
        self._manifest = manifest
        self._pending_sum = np.zeros(manifest.d_model, np.float64)
        self._pending_sq_norm = 0.0

    def close(self) -> None:
        """Commit and refuse further appends."""
        if not self._closed:
            self.commit()
            self._closed = True

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True

    def _require_open(self) -> None:
        if self._closed:
            raise StoreError(
                f"store {self._path}: the writer is closed; expected an open writer; use StoreWriter.open(path)"
            )

    def _checked_acts(self, acts: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """acts as the storage dtype: [n, d] (acts itself when it has that dtype: append copies it into the
        buffer), with its float64 row sum [d] and sum of squared norms."""
        x = np.asarray(acts)
        d = self._manifest.d_model
        if x.ndim != 2 or x.shape[1] != d:
            raise StoreError(
                f"store {self._path}: append got acts of shape {x.shape}; expected [n, {d}] (d_model={d}); "
                "pass rows of the store's width, or write them to a store created with their d_model"
            )
        if x.dtype.name not in _INPUT_FLOAT_DTYPES:
            raise StoreError(
                f"store {self._path}: append got acts of dtype {x.dtype}; expected one of {_INPUT_FLOAT_DTYPES}; "
                "convert the activations to float32"
            )
        with np.errstate(over="ignore"):  # an overflow becomes Inf, reported below with its row
            rows = x.astype(self._storage_dtype, copy=False)
        row_sum = np.zeros(d, np.float64)
        sq_norm = 0.0
        for start in range(0, len(rows), STATS_BLOCK_ROWS):
            block = rows[start : start + STATS_BLOCK_ROWS]
            if block.dtype != np.float32:
                block = block.astype(np.float32)  # bfloat16 -> float32 is exact
            # Products and sums in float64 (einsum casts in small buffers, no float64 copy of the block). A
            # float32 row squared in float64 cannot overflow, so its norm is finite iff the row is.
            row_sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
            finite = np.isfinite(row_sq)
            if not finite.all():
                bad_row = start + int(np.argmin(finite))
                raise StoreError(
                    f"store {self._path}: append got a NaN or Inf (after casting to {self._manifest.dtype}) in row "
                    f"{bad_row} of {len(rows)}; expected finite activations; nothing was appended; find where the "
                    "model or its inputs produce non-finite values"
                )
            row_sum += block.sum(axis=0, dtype=np.float64)
            sq_norm += float(row_sq.sum())
        return rows, row_sum, sq_norm

    def _checked_metadata(self, name: str, value: np.ndarray | None, n: int) -> np.ndarray:
        """value as [n] of the on-disk integer dtype; -1 everywhere when None."""
        dtype = np.dtype(METADATA_DTYPES[name])
        if value is None:
            return np.full(n, METADATA_FILL, dtype)
        v = np.asarray(value)
        if v.shape != (n,) or v.dtype.kind not in "iu":
            raise StoreError(
                f"store {self._path}: append got {name} of shape {v.shape} dtype {v.dtype}; expected [{n}] "
                f"integers (one per row of acts); pass one integer per row or leave it out"
            )
        limits = np.iinfo(dtype)
        if n and (v.min() < limits.min or v.max() > limits.max):
            raise StoreError(
                f"store {self._path}: append got {name} values in [{v.min()}, {v.max()}]; expected values that fit "
                f"{dtype}; check the {name} column"
            )
        return v.astype(dtype)

    def _new_buffer(self) -> dict[str, np.ndarray]:
        """One shard of uninitialised rows of every array: acts [shard_rows, d], metadata [shard_rows]."""
        return {name: np.empty((self._manifest.shard_rows, *array.shape[1:]), array.dtype.numpy_dtype)
                for name, array in self._arrays.items()}

    def _write(self, start: int, rows: dict[str, np.ndarray]) -> None:
        """Issue the writes of rows [start, start + n) of every array, growing the arrays first if needed."""
        stop = start + len(rows[ACTS])
        shard_rows = self._manifest.shard_rows
        capacity = -(-stop // shard_rows) * shard_rows
        resizes = {
            name: array.resize(exclusive_max=[capacity, *([None] * (array.rank - 1))], expand_only=True)
            for name, array in self._arrays.items()
            if array.shape[0] < capacity
        }
        for name, future in resizes.items():
            try:
                self._arrays[name] = future.result()
            except ValueError as err:
                raise self._write_error(err) from None
        self._in_flight.extend(self._arrays[name][start:stop].write(rows[name], can_reference_source_data_indefinitely=True)
                               for name in ARRAY_NAMES)
        self._wait_for_writes(keep=MAX_SHARDS_IN_FLIGHT * len(ARRAY_NAMES))

    def _wait_for_writes(self, keep: int) -> None:
        """Block until at most `keep` writes are in flight (oldest first); a failed write raises StoreError."""
        while len(self._in_flight) > keep:
            future = self._in_flight.pop(0)
            try:
                future.result()
            except ValueError as err:
                raise self._write_error(err) from None

    def _write_error(self, err: Exception) -> StoreWriteError:
        return StoreWriteError(
            f"store {self._path}: a data write failed ({err}); expected it to land; the store still holds its last "
            "commit: fix the cause (disk full? permissions?) and rerun what wrote it (StoreWriter.open(path) "
            "appends after the last commit)",
            reason=str(err),
        )
