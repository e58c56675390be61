"""The .h5ad inputs of an extraction: which files (a file, folder, glob or list file), their identity, a cell's file.

Provenance: a file of at most `FULL_HASH_MAX_BYTES` (4 GiB) is identified by the sha256 of its bytes (as
single-file extractions always were); a larger one by `head_tail_sha256`, the sha256 of its size (8 bytes,
little-endian), its first and its last `FINGERPRINT_BYTES` (64 MiB), plus its size in `bytes`. Why: every
worker of a multi-worker extraction identifies every input file (to refuse a dataset whose inputs changed), and
hashing a 50 GB file at disk speed (~0.5-1 GB/s) costs about a minute per file per worker; the fingerprint costs
two 64 MiB reads. An HDF5 file's head holds its superblock and root group and its tail the data and metadata
written last, so a rewritten or truncated file changes the fingerprint; an edit confined to the middle of a
huge file may not (hash such files yourself if that matters).
"""

from __future__ import annotations

import glob
import hashlib
from pathlib import Path

import h5py
import numpy as np

from extract.errors import ExtractError
from jaxsae.store.manifest import sha256_file

FULL_HASH_MAX_BYTES = 4 << 30
FINGERPRINT_BYTES = 64 << 20
LIST_COMMENT = "#"


def resolve_inputs(spec: str | Path | list | tuple) -> list[Path]:
    """The .h5ad files named by `spec`, in global cell order, each checked to be a readable HDF5 file.

    spec: an .h5ad file; a folder (its *.h5ad files, sorted by name); a glob pattern (its matches, sorted);
    a text file listing one .h5ad path per line (relative paths from the list's folder; blank lines and lines
    starting with # skipped), in the listed order; or a list of paths. Raises ExtractError naming the first
    missing or unreadable file (before any work starts), an empty selection, or a file named twice.
    """
    if isinstance(spec, (list, tuple)):
        paths = [Path(p) for p in spec]
    else:
        path = Path(spec)
        if path.is_dir():
            paths = sorted(path.glob("*.h5ad"))
        elif glob.has_magic(str(spec)) and not path.exists():
            paths = sorted(Path(p) for p in glob.glob(str(spec)))
        elif path.is_file() and not h5py.is_hdf5(path) and path.suffix != ".h5ad":
            paths = _listed(path)
        else:
            paths = [path]
    if not paths:
        raise ExtractError(f"AnnData input {spec}: found no .h5ad files; expected an .h5ad file, a folder of them, "
                           "a glob (e.g. 'atlas/*.h5ad') or a text file listing them; check the path")
    seen = set()
    for path in paths:
        if not path.is_file():
            raise ExtractError(f"AnnData file {path} does not exist (or is not a file); expected an .h5ad of raw "
                               "counts; check the path" + (f" (listed by {spec})" if len(paths) > 1 else ""))
        if not h5py.is_hdf5(path):
            raise ExtractError(f"{path} cannot be read as an .h5ad (HDF5) file; expected an AnnData written by "
                               "anndata.write_h5ad; check the file (a partial download?)")
        if path.resolve() in seen:
            raise ExtractError(f"AnnData file {path} is named twice in {spec}; expected each file once; remove the "
                               "repeat")
        seen.add(path.resolve())
    return paths


def _listed(list_file: Path) -> list[Path]:
    try:
        lines = list_file.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ExtractError(f"{list_file} cannot be read as a list of .h5ad files ({err}); expected a text file with "
                           "one path per line, or an .h5ad file") from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith(LIST_COMMENT)]
    return [p if p.is_absolute() else list_file.parent / p for p in map(Path, names)]


def file_identity(path: Path, full_hash_max_bytes: int = FULL_HASH_MAX_BYTES) -> dict:
    """{"sha256": hex} for a file of at most `full_hash_max_bytes`, else {"head_tail_sha256": hex, "bytes":
    size} (see the module docstring for why and what the fingerprint covers)."""
    size = path.stat().st_size
    if size <= full_hash_max_bytes:
        return {"sha256": sha256_file(path)}
    digest = hashlib.sha256(size.to_bytes(8, "little"))
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        f.seek(max(size - FINGERPRINT_BYTES, 0))
        digest.update(f.read(FINGERPRINT_BYTES))
    return {"head_tail_sha256": digest.hexdigest(), "bytes": size}


def locate_cells(adata: dict, cell_index) -> tuple[np.ndarray, np.ndarray]:
    """(file, row) of global cells: adata is a store's source["adata"]; cell_index: [n] int (the rows'
    cell_index). Returns file: [n] int64 index into adata["paths"] (0 for a single-file extraction) and row:
    [n] int64 row within that file."""
    cells = np.asarray(cell_index, dtype=np.int64)
    first = np.array([entry["first_cell"] for entry in adata.get("files", [{"first_cell": 0}])], np.int64)
    file = np.searchsorted(first, cells, side="right") - 1
    return file, cells - first[file]
