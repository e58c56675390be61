"""`verify_store`: read every committed row of a store and check it against its manifest (`jaxsae store verify`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from jaxsae.errors import StoreError
from jaxsae.store.dataset import Part, dataset_state, is_dataset_folder
from jaxsae.store.layout import ACTS, METADATA_DTYPES, METADATA_FILL, open_arrays
from jaxsae.store.manifest import Manifest, read_manifest

NORM_RTOL = 1e-6  # recomputed float64 sums differ from the writer's by summation order only (~1e-12)
SCAN_BYTES = 64 << 20  # activation bytes read per block (a whole number of inner chunks)
SHOW_ROWS = 5  # non-finite rows named in the problem line


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """What `verify_store` found.

    rows_checked: committed rows scanned (0 when the arrays could not be opened).
    nonfinite_rows: [m] int64 store rows holding a NaN or Inf; nonfinite_cells: [m] int64 their cell_index.
    problems: one line per problem found (empty when the store is sound).
    """

    path: Path
    manifest: Manifest
    rows_checked: int
    block_rows: int
    nonfinite_rows: np.ndarray
    nonfinite_cells: np.ndarray
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """What `jaxsae store verify` prints: a header, one line per problem, then a summary line."""
        m = self.manifest
        head = [f"store      {self.path}",
                f"rows       {m.rows_committed:,} x d_model {m.d_model} ({m.dtype}); {self.rows_checked:,} read in "
                f"blocks of {self.block_rows:,} rows",
                f"status     {m.status}"]
        problems = [f"problem: {p}" for p in self.problems]
        summary = (f"verify: OK: {self.rows_checked:,} committed rows finite, norm statistics and metadata "
                   "match the manifest" if self.ok else
                   f"verify: {len(self.problems)} problem(s) found in {self.path}")
        return head + problems + [summary]


@dataclasses.dataclass(frozen=True)
class DatasetVerifyReport:
    """What `verify_store` found in a dataset folder: every part as found, and the report of each part present
    (None for a missing part)."""

    path: Path
    parts: list[Part]
    reports: list[VerifyReport | None]

    @property
    def problems(self) -> list[str]:
        """One line per problem: a missing or incomplete part (with the worker that finishes it), then every
        problem of a part's rows."""
        problems = []
        for part, report in zip(self.parts, self.reports):
            if not part.is_complete:
                problems.append(f"{part.path.name} (cells {part.cells[0]:,} to {part.cells[1]:,}) is "
                                f"{part.state()}; {part.rerun}")
            if report is not None:
                problems += [f"{part.path.name}: {p}" for p in report.problems if p != report.manifest.status]
        return problems

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        """What `jaxsae store verify` prints for a dataset: a header, one line per part, one per problem, then
        a summary line."""
        rows = sum(report.rows_checked for report in self.reports if report is not None)
        complete = sum(part.is_complete for part in self.parts)
        head = [f"dataset    {self.path}", f"parts      {complete} of {len(self.parts)} complete; {rows:,} committed "
                "rows read", *(part.line() for part in self.parts)]
        summary = (f"verify: OK: {len(self.parts)} parts complete, {rows:,} committed rows finite, norm statistics "
                   "and metadata match each part's manifest" if self.ok else
                   f"verify: {len(self.problems)} problem(s) found in {self.path}")
        return head + [f"problem: {p}" for p in self.problems] + [summary]


def verify_store(path: str | Path) -> VerifyReport | DatasetVerifyReport:
    """Check the store at `path`: manifest (schema, sizes), arrays covering rows_committed, every committed row
    finite (scanned in whole inner chunks), norm statistics recomputed and compared with the manifest's
    (relative tolerance NORM_RTOL), metadata sanity, and completeness. Problems are reported, not raised;
    raises StoreError only when `path` is no usable store (no folder, no or unreadable manifest.json). A dataset
    folder (jaxsae.store.dataset) is checked part by part: a missing or incomplete part is a problem."""
    path = Path(path)
    if is_dataset_folder(path):
        parts, _ = dataset_state(path)
        return DatasetVerifyReport(path, parts, [None if p.manifest is None else verify_store(p.path) for p in parts])
    manifest = read_manifest(path)
    block_rows = max(1, SCAN_BYTES // (manifest.chunk_rows * manifest.d_model * 4)) * manifest.chunk_rows
    empty = np.zeros(0, np.int64)
    problems: list[str] = []
    if not manifest.is_complete:
        problems.append(manifest.status)
    try:
        arrays = open_arrays(path, manifest, writable=False)
    except StoreError as err:
        problems.append(str(err))
        return VerifyReport(path, manifest, 0, block_rows, empty, empty, problems)
    n = manifest.rows_committed
    row_sum = np.zeros(manifest.d_model, np.float64)
    sum_sq_norm = 0.0
    bad_rows, bad_cells = [], []
    metadata_bad = {name: 0 for name in METADATA_DTYPES}
    n_cells = (manifest.source.get("adata") or {}).get("n_cells")
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        acts = arrays[ACTS][start:stop].read()
        meta = {name: arrays[name][start:stop].read() for name in METADATA_DTYPES}
        block = np.asarray(acts.result(), dtype=np.float32)
        meta = {name: future.result() for name, future in meta.items()}
        row_sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        finite = np.isfinite(row_sq)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            bad_rows.append(start + bad)
            bad_cells.append(meta["cell_index"][bad].astype(np.int64))
            block = block[finite]
            row_sq = row_sq[finite]
        row_sum += block.sum(axis=0, dtype=np.float64)
        sum_sq_norm += float(row_sq.sum())
        for name, values in meta.items():
            invalid = values < METADATA_FILL
            if name == "cell_index" and isinstance(n_cells, int):  # an extraction store: every row names its cell
                invalid |= (values == METADATA_FILL) | (values >= n_cells)
            metadata_bad[name] += int(invalid.sum())
    nonfinite_rows = np.concatenate(bad_rows) if bad_rows else empty
    nonfinite_cells = np.concatenate(bad_cells) if bad_cells else empty
    if len(nonfinite_rows):
        shown = ", ".join(f"{r} (cell_index {c})" for r, c in zip(nonfinite_rows[:SHOW_ROWS], nonfinite_cells))
        more = f", ... ({len(nonfinite_rows) - SHOW_ROWS} more)" if len(nonfinite_rows) > SHOW_ROWS else ""
        problems.append(
            f"{len(nonfinite_rows):,} of {n:,} committed rows hold NaN or Inf: rows {shown}{more}; expected finite "
            "activations (the writer refuses non-finite rows, so the files were changed or damaged afterwards): "
            "re-run the extraction into a fresh store"
        )
    problems += _norm_problems(manifest, row_sum, sum_sq_norm, len(nonfinite_rows))
    for name, count in metadata_bad.items():
        if count:
            expected = (f"0 <= cell_index < {n_cells} (the AnnData's cells)" if name == "cell_index" and
                        isinstance(n_cells, int) else f"{name} >= 0, or -1 where not written")
            problems.append(f"{count:,} rows have an invalid {name}; expected {expected}; the metadata arrays are "
                            "damaged: re-run the extraction into a fresh store")
    return VerifyReport(path, manifest, n, block_rows, nonfinite_rows, nonfinite_cells, problems)


def _norm_problems(manifest: Manifest, row_sum: np.ndarray, sum_sq_norm: float, n_nonfinite: int) -> list[str]:
    """A problem line when the recomputed sums (finite rows only) differ from the manifest's."""
    norm = manifest.norm
    recorded_sum = np.asarray(norm.sum, np.float64)
    scale = max(np.sqrt(norm.sum_sq_norm * max(norm.count, 1)), np.finfo(np.float64).tiny)  # bounds ||sum||
    sum_error = float(np.linalg.norm(row_sum - recorded_sum)) / scale
    sq_error = abs(sum_sq_norm - norm.sum_sq_norm) / max(norm.sum_sq_norm, np.finfo(np.float64).tiny)
    if sum_error <= NORM_RTOL and sq_error <= NORM_RTOL:
        return []
    over = " (over the finite rows)" if n_nonfinite else ""
    return [f"norm statistics recomputed from the rows{over} differ from the manifest's: sum_sq_norm "
            f"{sum_sq_norm:.9g} vs {norm.sum_sq_norm:.9g} (relative {sq_error:.2g}), per-dimension sum off by "
            f"{sum_error:.2g} relative; expected agreement within {NORM_RTOL:g}; the rows were changed after they "
            "were committed: re-run the extraction into a fresh store"]
