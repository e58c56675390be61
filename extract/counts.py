"""Raw counts from .h5ad files, read in row blocks without loading a matrix (backed access via h5py)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from extract.errors import ExtractError
from extract.tokenize.genes import as_count_rows, var_column


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


class CountSources:
    """Several .h5ad files read as one count matrix: global cell g is row g - first_cell[f] of file f.

    paths: the files in global cell order (see `extract.inputs.resolve_inputs`). Every file must have the same
    genes (var index, and the gene column the tokeniser reads) in the same order: files that differ are
    REFUSED, not aligned (a silent outer join would feed zeros for genes a file never measured). Each file is
    opened once here (shape, var) and then one at a time as rows are read, so only one block of rows is in
    memory. `var` is the (shared) var of the first file.
    """

    def __init__(self, paths: list[Path], counts_layer: str | None = None, gene_column: str | None = None):
        self.paths = list(paths)
        self.counts_layer = counts_layer or "X"
        n_cells = []
        for path in self.paths:
            with CountSource(path, counts_layer) as source:
                if not n_cells:
                    self.var = source.var
                else:
                    _check_same_genes(self.paths[0], self.var, path, source.var, gene_column)
                n_cells.append(source.n_cells)
        self.first_cell = np.concatenate([[0], np.cumsum(n_cells)]).astype(np.int64)  # [n_files + 1]
        self.n_cells = int(self.first_cell[-1])
        self._open: tuple[int, CountSource] | None = None

    @property
    def name(self) -> str:
        """The file, or "N files (first .. last)", for messages."""
        if len(self.paths) == 1:
            return str(self.paths[0])
        return f"{len(self.paths)} files ({self.paths[0]} .. {self.paths[-1]})"

    def file(self, index: int) -> CountSource:
        """File `index`, opened (the previously opened one is closed)."""
        if self._open is None or self._open[0] != index:
            self.close()
            self._open = (index, CountSource(self.paths[index], self.counts_layer))
        return self._open[1]

    def rows(self, start: int, stop: int) -> sp.csr_matrix:
        """[stop - start, n_var] float64 CSR counts of global cells [start, stop) (across file boundaries)."""
        blocks = []
        first = int(np.searchsorted(self.first_cell, start, side="right")) - 1
        for f in range(first, len(self.paths)):
            lo, hi = max(start, self.first_cell[f]), min(stop, self.first_cell[f + 1])
            if lo >= stop:
                break
            if hi > lo:
                blocks.append(self.file(f).rows(int(lo - self.first_cell[f]), int(hi - self.first_cell[f])))
        return blocks[0] if len(blocks) == 1 else sp.vstack(blocks, format="csr")

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None

    def __enter__(self) -> CountSources:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_same_genes(first: Path, first_var: pd.DataFrame, path: Path, var: pd.DataFrame,
                      gene_column: str | None) -> None:
    """Refuse (ExtractError) a file whose genes differ from the first file's."""
    columns = [None] + [c for c in sorted({gene_column, "ensembl_id"} - {None, "index"}) if c in first_var.columns]
    for column in columns:
        expected, label = var_column(first_var, column)
        found, _ = var_column(var, column) if column is None or column in var.columns else ([], label)
        if found != expected:
            where = next((j for j, (a, b) in enumerate(zip(found, expected)) if a != b), min(len(found),
                                                                                             len(expected)))
            shown = f"{label}[{where}] is {found[where]!r}, {first} has {expected[where]!r}" \
                if where < min(len(found), len(expected)) else f"{len(found)} genes, {first} has {len(expected)}"
            raise ExtractError(
                f"{path}: its genes differ from the first file's ({shown}); files with different gene sets are "
                "refused, not aligned; write every file with the same var (e.g. reindex each AnnData to one "
                "shared gene list, filling zeros, before writing) or extract them separately"
            )
