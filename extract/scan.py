"""The cell scan: one pass over the count matrix (per-cell token counts, the non-counts refusal) plus each input
file's identity, shared by the workers of a dataset through the output folder.

Every worker needs the whole scan (the token-balanced cuts of extract.parts are computed from every cell's
token count) and every file's identity (the manifest's provenance). Computed by each worker, that is one full
read of the atlas and one hash of every file per worker. Instead the first worker to arrive scans and writes
`out_dir/cell_scan/{key}.npz` atomically, under an flock on `out_dir/cell_scan/`; the others block on that
flock while it scans, then read the file, and a worker started (or rerun) later reads it at once. A worker
killed mid-scan releases the flock and the next one scans. The key is the sha256 of what determines the scan:
each input file's resolved path, size and mtime (ns), the counts layer, gene column, the tokeniser's settings
and the model's description (checkpoint sha256). Why a stat key and not the files' hashes: hashing is part of
what is shared. A file rewritten in place with the same size and mtime would not be noticed (as by make or
rsync); touch it, or delete cell_scan/, to force a rescan.

PERFORMANCE: with N workers the atlas is read once for the scan instead of N times (the scan reads every
non-zero count: at CELLxGENE scale, minutes per worker at disk speed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from pathlib import Path

import numpy as np

from extract.counts import CountSources
from extract.errors import ExtractError
from extract.inputs import file_identity
from jaxsae.atomic import write_atomic
from jaxsae.store.lock import folder_flock
from jaxsae.store.manifest import obs_names_sha256

SCAN_ROWS = 4096  # cells per block in the scan
SCAN_FOLDER = "cell_scan"
log = logging.getLogger("jaxsae.extract")


@dataclasses.dataclass(frozen=True)
class CellScan:
    """n_tokens: [n_cells] int64 sequence length in gene tokens; n_expressed: [n_cells] int64 expressed model
    genes; files: per input file {**file_identity, "obs_names_sha256"}."""

    n_tokens: np.ndarray
    n_expressed: np.ndarray
    files: list[dict]


def scan_cells(source: CountSources, tokenizer) -> CellScan:
    """One pass over the matrix: refuse non-counts, count each cell's tokens and expressed genes, identify
    each file."""
    n_tokens = np.zeros(source.n_cells, np.int64)
    n_expressed = np.zeros(source.n_cells, np.int64)
    any_counts = False
    for start in range(0, source.n_cells, SCAN_ROWS):
        counts = source.rows(start, min(start + SCAN_ROWS, source.n_cells))
        any_counts |= counts.nnz > 0
        n_tokens[start : start + counts.shape[0]] = tokenizer.n_genes(counts)
        n_expressed[start : start + counts.shape[0]] = tokenizer.plan.n_expressed(counts)
    if not any_counts:
        raise ExtractError(f"{source.name}: the count matrix ({source.counts_layer}) is all zeros: no counts")
    if not n_expressed.any():
        raise ExtractError(
            f"{source.name}: no cell expresses any of the {tokenizer.plan.n_genes} genes the model knows; check "
            "gene_column and counts_layer"
        )
    files = [{**file_identity(path), "obs_names_sha256": obs_names_sha256(source.file(f).obs_names())}
             for f, path in enumerate(source.paths)]
    return CellScan(n_tokens, n_expressed, files)


def scan_key(source: CountSources, gene_column: str | None, tokenizer, model_description: dict) -> str:
    """sha256 (hex) of what determines the scan (see the module docstring)."""
    stats = [(str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns) for path in source.paths]
    fields = {"files": stats, "counts_layer": source.counts_layer, "gene_column": gene_column,
              "tokenizer": tokenizer.settings(), "model": model_description}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def shared_scan(out_dir: Path, source: CountSources, gene_column: str | None, tokenizer,
                model_description: dict) -> CellScan:
    """The scan of `source` from out_dir/cell_scan/{key}.npz, computed and written there first by whichever
    worker holds the flock when it is missing."""
    folder = out_dir / SCAN_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{scan_key(source, gene_column, tokenizer, model_description)}.npz"
    with folder_flock(str(folder)):
        if path.is_file():
            with np.load(path) as saved:
                return CellScan(saved["n_tokens"], saved["n_expressed"], json.loads(str(saved["files"])))
        scan = scan_cells(source, tokenizer)
        buffer = io.BytesIO()
        np.savez(buffer, n_tokens=scan.n_tokens, n_expressed=scan.n_expressed, files=json.dumps(scan.files))
        write_atomic(path, buffer.getvalue())
        log.info(f"cell scan of {source.n_cells:,} cells written to {path} (the other workers reuse it)")
        return scan
