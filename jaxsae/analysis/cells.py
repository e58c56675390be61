"""Cells x features: a store's sparse codes aggregated per cell, checked against and written into an AnnData.

A token store holds one row per gene token of every cell; a cell's feature value is an aggregate over its
rows (`agg`): "mean" (sum over the cell's rows / its number of rows, rows where the feature is 0 count),
"max", or "frac" (fraction of the cell's rows where the feature fires, i.e. is > 0). A cell-level store
(cell_mean / cell_cls: one row per cell) passes through whatever `agg` says. Cells without rows (skipped
by the extraction: no expressed model gene) get all-zero rows.

The result lives in `adata.obsm[f"X_{name}"]` (CSR float32 [n_obs, n_latents]) with its provenance in
`adata.uns["jaxsae"][name]`; every other analysis function reads it from there.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from jaxsae.errors import AnalysisError

AGGREGATIONS = ("mean", "max", "frac")


def aggregate_cells(codes, cell_index, n_cells: int, agg: str = "mean") -> sp.csr_matrix:
    """codes: [rows, n_latents] (sparse or dense) activations of store rows; cell_index: [rows] AnnData row of
    each -> [n_cells, n_latents] CSR float32, aggregated per cell with `agg` (see the module docstring)."""
    _check_agg(agg)
    codes = sp.csr_matrix(codes, dtype=np.float32)
    codes.eliminate_zeros()
    cell_index = np.asarray(cell_index, np.int64)
    n_rows_total, n_latents = codes.shape
    if cell_index.shape != (n_rows_total,):
        raise AnalysisError(f"cell_index has shape {cell_index.shape}; expected ({n_rows_total},), one AnnData "
                            "row per code row")
    if n_rows_total and (cell_index.min() < 0 or cell_index.max() >= n_cells):
        raise AnalysisError(
            f"the store's rows name AnnData rows {cell_index.min()}..{cell_index.max()}, but the AnnData has "
            f"{n_cells} cells; pass the AnnData the store was extracted from"
        )
    rows_per_cell = np.bincount(cell_index, minlength=n_cells)
    # to_cell: [n_cells, rows] one-hot; to_cell @ codes sums each cell's rows (and reorders cell-level stores).
    to_cell = sp.csr_matrix((np.ones(n_rows_total), (cell_index, np.arange(n_rows_total))),
                            shape=(n_cells, n_rows_total))
    if rows_per_cell.max(initial=0) <= 1:
        return sp.csr_matrix(to_cell @ codes, dtype=np.float32)
    if agg == "max":
        return _max_per_cell(codes, cell_index, rows_per_cell)
    values = codes if agg == "mean" else sp.csr_matrix((codes > 0), dtype=np.float32)
    per_row = sp.diags(1.0 / np.maximum(rows_per_cell, 1))
    return sp.csr_matrix(per_row @ (to_cell @ values), dtype=np.float32)


def _max_per_cell(codes: sp.csr_matrix, cell_index: np.ndarray, rows_per_cell: np.ndarray) -> sp.csr_matrix:
    """Per (cell, feature) the max over the cell's rows; rows not stored in `codes` count as 0."""
    n_cells, n_latents = len(rows_per_cell), codes.shape[1]
    coo = codes.tocoo()
    key = cell_index[coo.row] * n_latents + coo.col
    order = np.argsort(key, kind="stable")
    key, data = key[order], coo.data[order]
    unique, starts, stored = np.unique(key, return_index=True, return_counts=True)
    best = np.maximum.reduceat(data, starts) if len(data) else data
    cells = unique // n_latents
    best = np.where(stored < rows_per_cell[cells], np.maximum(best, 0.0), best)
    return sp.csr_matrix((best.astype(np.float32), (cells, unique % n_latents)), shape=(n_cells, n_latents))


def _check_agg(agg: str) -> None:
    if agg not in AGGREGATIONS:
        raise AnalysisError(f"agg={agg!r}; expected one of {', '.join(AGGREGATIONS)}")


def resolve_store(path: str | os.PathLike) -> Path:
    """The store folder `path` names: a store itself, or an extraction output / layer folder holding exactly
    one token store. Anything else is an AnalysisError listing what the folder holds."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    if not path.is_dir():
        raise AnalysisError(f"store {path} does not exist; pass a store folder (e.g. OUT/layer_4/tokens) or the "
                            "output folder of jaxsae extract")
    candidates = sorted({p.parent for pattern in ("*/manifest.json", "layer_*/*/manifest.json")
                         for p in path.glob(pattern)})
    tokens = [c for c in candidates if c.name == "tokens"]
    if len(tokens) == 1:
        return tokens[0]
    if not candidates:
        raise AnalysisError(f"{path} holds no activation store (no manifest.json in it, in */ or in layer_*/*/); "
                            "pass a store folder written by jaxsae extract")
    listing = ", ".join(str(c) for c in candidates)
    raise AnalysisError(f"{path} holds {len(tokens)} token stores, so which one to use is ambiguous; pass one "
                        f"store folder: {listing}")


def cells_matrix(adata, name: str = "sae") -> sp.csr_matrix:
    """adata.obsm[f"X_{name}"] as CSR float32 [n_obs, n_latents]; an AnalysisError says how to make it."""
    key = f"X_{name}"
    if key not in adata.obsm:
        raise AnalysisError(f"adata.obsm has no {key!r} (it has {sorted(adata.obsm.keys())}); run "
                            f"encode_cells(store, dictionary, adata, name={name!r}) first")
    return sp.csr_matrix(adata.obsm[key], dtype=np.float32)


def matching_adata(store, adata=None):
    """The AnnData of the cells `store` (an open ActivationStore) was extracted from.

    adata None: the .h5ad recorded in the store's manifest, if it still exists with the recorded sha256.
    adata a path: accepted when its sha256 is the recorded one, otherwise when its cells are (below).
    adata an AnnData: accepted when n_obs and the sha256 of its obs_names are the recorded ones (stores
    extracted before obs_names were recorded: n_obs only). Returns the AnnData (the same object if given).
    """
    import anndata

    from jaxsae.store.manifest import sha256_file

    record = store.source.get("adata") or {}
    recorded_path = record.get("path")
    if adata is None:
        if not recorded_path:
            raise AnalysisError(f"store {store.path} records no AnnData file; pass adata=<the AnnData it was "
                                "extracted from> (CLI: --adata PATH)")
        if not os.path.isfile(recorded_path):
            raise AnalysisError(f"{recorded_path}, the AnnData store {store.path} was extracted from, no longer "
                                "exists; pass adata=<its new path, or the AnnData object> (CLI: --adata PATH)")
        if sha256_file(recorded_path) != record.get("sha256"):
            raise AnalysisError(f"{recorded_path} changed since store {store.path} was extracted from it (its "
                                "sha256 differs from the recorded one); pass adata=<the AnnData of the extracted "
                                "cells> (CLI: --adata PATH)")
        return anndata.read_h5ad(recorded_path)
    if isinstance(adata, str | os.PathLike):
        if not os.path.isfile(adata):
            raise AnalysisError(f"AnnData file {adata} does not exist; pass the .h5ad the store was extracted from")
        same_file = record.get("sha256") is not None and sha256_file(adata) == record["sha256"]
        loaded = anndata.read_h5ad(adata)
        if not same_file:
            _check_cells(loaded, record, store, str(adata), file_differs=True)
        return loaded
    _check_cells(adata, record, store, "the AnnData", file_differs=False)
    return adata


def _check_cells(adata, record: dict, store, where: str, *, file_differs: bool) -> None:
    from jaxsae.store.manifest import obs_names_sha256

    fix = f"pass the AnnData store {store.path} was extracted from ({record.get('path', 'path not recorded')})"
    n_cells, names_hash = record.get("n_cells"), record.get("obs_names_sha256")
    if n_cells is not None and adata.n_obs != n_cells:
        raise AnalysisError(f"{where} has {adata.n_obs} cells but the store was extracted from {n_cells} cells; "
                            f"{fix}, or extract this one with jaxsae extract")
    if names_hash is not None and obs_names_sha256(adata.obs_names) != names_hash:
        raise AnalysisError(f"{where} has the store's number of cells ({adata.n_obs}) but other obs_names (or "
                            f"another order) than the cells the store was extracted from; {fix}, in its original "
                            "cell order")
    if names_hash is None and file_differs:
        raise AnalysisError(f"{where} is not the file the store was extracted from (its sha256 differs), and the "
                            f"store records no obs_names to compare cells by; {fix}")


def attach_codes(adata, codes, *, agg: str = "mean", name: str = "sae", provenance: dict | None = None):
    """Aggregate `codes` (TokenCodes: .codes CSR [rows, n_latents], .cell_index [rows]) per cell into
    adata.obsm[f"X_{name}"] and record `provenance` (plus agg, n_latents, created) in adata.uns["jaxsae"][name]."""
    _check_agg(agg)
    adata.obsm[f"X_{name}"] = aggregate_cells(codes.codes, codes.cell_index, adata.n_obs, agg)
    record = {key: ("" if value is None else value) for key, value in (provenance or {}).items()}
    record.update(agg=agg, n_latents=int(codes.codes.shape[1]),
                  created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    adata.uns.setdefault("jaxsae", {})[name] = record
    return adata


def prepare(store_or_folder, dictionary, adata=None, *, agg: str = "mean", name: str = "sae"):
    """Every check of `encode_cells`, before any encoding: (store, Dictionary, AnnData, provenance dict)."""
    from jaxsae.dictionary import Dictionary, load
    from jaxsae.store import open_store

    _check_agg(agg)
    if not isinstance(name, str) or not name.isidentifier():
        raise AnalysisError(f"name={name!r}; expected an identifier such as 'sae' (it names obsm['X_<name>'])")
    store = open_store(resolve_store(store_or_folder))
    if not store.is_complete:
        raise AnalysisError(f"store {store.path} is {store.status}")
    dictionary = dictionary if isinstance(dictionary, Dictionary) else load(dictionary)
    if dictionary.d_model != store.d_model:
        raise AnalysisError(f"the dictionary reads d_model={dictionary.d_model} activations but store {store.path} "
                            f"holds d_model={store.d_model}; pass the store the dictionary was trained on")
    adata = matching_adata(store, adata)
    source = store.source
    provenance = {
        "dictionary": os.path.abspath(dictionary.path) if dictionary.path else None,
        "store": str(Path(store.path).resolve()), "architecture": dictionary.sae.architecture,
        "layer": source.get("layer"), "model": source.get("model"), "kind": source.get("kind"),
    }
    return store, dictionary, adata, provenance


def encode_cells(store_or_folder, dictionary, adata=None, *, agg: str = "mean", name: str = "sae",
                 chunk_rows: int = 16384, progress: bool = True):
    """Encode every row of a store with a dictionary and aggregate per cell into an AnnData.

    store_or_folder: a store folder (tokens / cell_mean / cell_cls), or an extraction output or layer folder
    holding exactly one token store. dictionary: a dictionary folder or a loaded Dictionary. adata: None (the
    .h5ad recorded by the extraction, if unchanged), a path, or an AnnData object of the same cells (see
    `matching_adata`). Writes obsm[f"X_{name}"] (CSR float32 [n_obs, n_latents]) and uns["jaxsae"][name];
    returns the AnnData (the object passed in, when one was).
    """
    from jaxsae.analysis.encode import encode_store

    store, dictionary, adata, provenance = prepare(store_or_folder, dictionary, adata, agg=agg, name=name)
    codes = encode_store(store, dictionary, chunk_rows=chunk_rows, progress=progress)
    return attach_codes(adata, codes, agg=agg, name=name, provenance=provenance)


def features_to_obs(adata, features, *, name: str = "sae") -> list[str]:
    """Copy features (ints) of obsm[f"X_{name}"] into float32 obs columns f"{name}_{feature}" (for
    `sc.pl.umap(adata, color=columns)`); returns the column names."""
    matrix = cells_matrix(adata, name)
    features = np.atleast_1d(np.asarray(features))
    if features.dtype.kind not in "iu" or features.ndim != 1:
        raise AnalysisError(f"features={features.tolist()!r}; expected feature numbers (ints)")
    bad = features[(features < 0) | (features >= matrix.shape[1])]
    if len(bad):
        raise AnalysisError(f"features {bad.tolist()} are out of range; obsm['X_{name}'] has features "
                            f"0..{matrix.shape[1] - 1}")
    columns = [f"{name}_{f}" for f in features.tolist()]
    values = matrix[:, features].toarray()
    for column, column_values in zip(columns, values.T):
        adata.obs[column] = column_values
    return columns
