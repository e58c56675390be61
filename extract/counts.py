"""Raw counts from an .h5ad file, read in row blocks without loading the matrix (backed access via h5py)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from extract.errors import ExtractError
from extract.tokenize.genes import as_count_rows
from jaxsae.store.manifest import sha256_file  # noqa: F401 - re-exported: extract.run and tests import it here


class CountSource:
    """Row blocks of the raw-count matrix of an .h5ad file.

    counts_layer: None or "X" for adata.X, "raw" for adata.raw.X, any other name for adata.layers[name].
    Only var (and the matrix's shape) is read up front; `rows(a, b)` reads cells [a, b) from disk, so files
    larger than RAM work (CSR or dense on disk; CSC works but reads slowly).
    """

    def __init__(self, path: str | Path, counts_layer: str | None = None):
        from anndata.io import read_elem, sparse_dataset

        self.path = Path(path)
        if not self.path.is_file():
            raise ExtractError(f"AnnData file {self.path} does not exist (or is not a file); expected an .h5ad of raw "
                               "counts; check the path")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as err:
            raise ExtractError(f"{self.path} cannot be read as an .h5ad (HDF5) file ({err}); expected an AnnData "
                               "written by anndata.write_h5ad; check the file (a partial download?)") from None
        self.counts_layer = counts_layer or "X"
        if self.counts_layer == "X":
            key, var_key = "X", "var"
        elif self.counts_layer == "raw":
            key, var_key = "raw/X", "raw/var"
        else:
            key, var_key = f"layers/{self.counts_layer}", "var"
        if key not in self._file:
            layers = list(self._file["layers"].keys()) if "layers" in self._file else []
            raise ExtractError(
                f"{self.path} has no count matrix at {key} (counts_layer={counts_layer!r}); layers present: "
                f"{layers}, raw: {'raw' in self._file}; pass counts_layer=<where the raw counts are> (CLI: --counts_layer)"
            )
        element = self._file[key]
        self._matrix = sparse_dataset(element) if isinstance(element, h5py.Group) else element
        self.var: pd.DataFrame = read_elem(self._file[var_key])
        self.n_cells, n_var = (int(n) for n in self._matrix.shape)
        if self.n_cells == 0 or n_var == 0:
            raise ExtractError(f"{self.path}: the count matrix is empty ({self.n_cells} cells x {n_var} genes)")
        if n_var != len(self.var):
            raise ExtractError(f"{self.path}: {key} has {n_var} columns but {var_key} has {len(self.var)} rows")

    def obs_names(self) -> pd.Index:
        """The AnnData's obs_names (read from disk on each call)."""
        from anndata.io import read_elem

        obs = self._file["obs"]
        return pd.Index(read_elem(obs[obs.attrs["_index"]]))

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """[stop - start, n_var] float64 CSR counts of cells [start, stop); refuses values that are not counts."""
        block = self._matrix[start:stop]
        return as_count_rows(block if sp.issparse(block) else np.asarray(block), start)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> CountSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
