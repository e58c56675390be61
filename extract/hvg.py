"""Highly variable genes computed streaming over row blocks of a count source, as scanpy computes them.

flavor 'seurat' and 'cell_ranger' (one batch, n_top_genes): each block of raw counts is made float32,
normalised to 10,000 per cell and log1p'd with scanpy's own functions (both act per cell, so a block gives
the values the whole matrix would); 'seurat' takes expm1 of that again, as scanpy does. Per-gene sums and
sums of squares accumulate in float64 (each square taken in float32, as scanpy's numba kernel does), giving
scanpy's `_get_mean_var` mean and variance (ddof=1). Binning, per-bin dispersion statistics and the top-n
cut-off are scanpy's (`_get_mean_bins`, `_get_disp_stats`, and `_nth_highest`'s rule: the genes whose
normalised dispersion is >= the n-th highest, NaN treated as -inf). Only one block is in memory at a time.

'seurat_v3' is NOT streamed: its loess fit needs scikit-misc, which this environment lacks, so the streamed
version could not be checked against scanpy; it keeps the in-memory path (`select_hvg`), reading the whole
count matrix.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from extract.errors import ExtractError

STREAMED_FLAVORS = ("seurat", "cell_ranger")
BLOCK_ROWS = 4096


def streamed_hvg(source, n_top_genes: int, flavor: str, block_rows: int | None = None) -> np.ndarray:
    """[n_var] bool mask of the `n_top_genes` most variable genes of `source` (anything with `n_cells` and
    `rows(lo, hi)` -> [hi - lo, n_var] CSR raw counts), reading at most `block_rows` (default BLOCK_ROWS)
    cells at a time."""
    if flavor not in STREAMED_FLAVORS:
        raise ExtractError(f"streamed highly variable genes support flavor {STREAMED_FLAVORS}, found {flavor!r}; "
                           "use select_hvg (in memory) for 'seurat_v3'")
    mean, var = _mean_var(source, flavor, block_rows or BLOCK_ROWS)
    return _select(mean, var, n_top_genes, flavor)


def _mean_var(source, flavor: str, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """[n_var] float64 mean and variance (ddof=1) of the flavor's transformed counts, over all cells."""
    import anndata
    import scanpy as sc

    sums = squares = None
    for lo in range(0, source.n_cells, block_rows):
        block = anndata.AnnData(X=source.rows(lo, min(lo + block_rows, source.n_cells)).astype(np.float32))
        sc.pp.normalize_total(block, target_sum=1e4)
        sc.pp.log1p(block)
        x = block.X.tocsr() if flavor == "cell_ranger" else np.expm1(block.X).tocsr()
        n_var = x.shape[1]
        if sums is None:
            sums, squares = np.zeros(n_var), np.zeros(n_var)
        sums += np.bincount(x.indices, weights=x.data, minlength=n_var)
        squares += np.bincount(x.indices, weights=np.square(x.data), minlength=n_var)  # float32 squares
    n = source.n_cells
    mean = sums / n
    var = squares / n - mean**2
    if n != 1:
        var *= n / (n - 1)
    return mean, var


def _select(mean: np.ndarray, var: np.ndarray, n_top_genes: int, flavor: str) -> np.ndarray:
    """scanpy's `_highly_variable_genes_single_batch` from the per-gene mean and variance onwards."""
    from scanpy.preprocessing._highly_variable_genes import _get_disp_stats, _get_mean_bins

    mean = mean.copy()
    mean[mean == 0] = 1e-12
    dispersion = var / mean
    if flavor == "seurat":
        dispersion[dispersion == 0] = np.nan
        dispersion = np.log(dispersion)
        mean = np.log1p(mean)
    df = pd.DataFrame({"means": mean, "dispersions": dispersion})
    df["mean_bin"] = _get_mean_bins(df["means"], flavor, 20)
    stats = _get_disp_stats(df, flavor)
    norm = ((df["dispersions"] - stats["avg"]) / stats["dev"]).to_numpy()
    finite = np.sort(norm[~np.isnan(norm)])[::-1]
    if not len(finite):
        raise ExtractError(f"no gene has a finite normalised dispersion (flavor {flavor!r}); expected a count "
                           "matrix with varying genes; check the counts")
    cut_off = finite[min(n_top_genes, len(finite)) - 1]
    return np.nan_to_num(norm, nan=-np.inf) >= cut_off
