"""Highly variable genes computed streaming over row blocks of a count source, as scanpy computes them.

Only one block of cells is in memory at a time; per-gene statistics accumulate in float64.

- 'seurat_v3' (scGPT's choice; on raw counts, one batch, n_top_genes): pass 1 gives each gene's mean and
  variance (ddof=1) of the float32 counts. A loess fit of log10 variance on log10 mean over the non-constant
  genes follows, by scikit-misc's `loess(span=0.3, degree=2)` as scanpy calls it. Pass 2 sums the counts
  clipped at mean + sqrt(n_cells) x the fitted standard deviation, and their squares. scanpy's normalised
  variance formula and its ranking (`argsort(argsort(-norm))`) then choose the genes.
- 'seurat' and 'cell_ranger': each block of counts is normalised to 10,000 per cell and log1p'd with
  scanpy's own functions (both act per cell, so a block gives the values the whole matrix would); 'seurat'
  takes expm1 of that again, as scanpy does. From the mean and variance on, scanpy's binning and dispersion
  statistics (`_get_mean_bins`, `_get_disp_stats`) and `_nth_highest`'s cut-off (the genes whose normalised
  dispersion is >= the n-th highest, NaN treated as -inf).

Squares are taken in float32 before the float64 sum, as scanpy's numba kernel does. tests/test_hvg.py checks
every flavor's mask against scanpy's in-memory `highly_variable_genes` on real counts read in uneven blocks.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp

from extract.config import HVG_FLAVORS as FLAVORS
from extract.errors import ExtractError

# Cells per block. A block holds ~65 bytes per non-zero at once (copies, float64 values, bincount weights): on
# 200,000 x 20,000 counts of ~1,100 genes a cell (experiments/bench_extract_memory.py --hvg) +104 MB at 1,024,
# +305 MB at 4,096, equally fast (18.5 s).
BLOCK_ROWS = 1024
LOESS_SPAN = 0.3


def streamed_hvg(source, n_top_genes: int, flavor: str, block_rows: int | None = None) -> np.ndarray:
    """[n_var] bool mask of the `n_top_genes` most variable genes of `source` (anything with `n_cells` and
    `rows(lo, hi)` -> [hi - lo, n_var] CSR raw counts), reading at most `block_rows` (default BLOCK_ROWS)
    cells at a time."""
    if flavor not in FLAVORS:
        raise ExtractError(f"highly variable genes support flavor {FLAVORS}, found {flavor!r}; pass one of them")
    blocks = functools.partial(_blocks, source, flavor, block_rows or BLOCK_ROWS)  # called again for a second pass
    mean, var = _mean_var(blocks(), source.n_cells)
    if flavor == "seurat_v3":
        return _select_v3(blocks, source.n_cells, mean, var, n_top_genes)
    return _select_dispersion(mean, var, n_top_genes, flavor)


def _blocks(source, flavor: str, block_rows: int) -> Iterator[sp.csr_matrix]:
    """The flavor's values of every cell, [<= block_rows, n_var] float32 CSR blocks in row order."""
    import anndata
    import scanpy as sc

    for lo in range(0, source.n_cells, block_rows):
        counts = source.rows(lo, min(lo + block_rows, source.n_cells)).astype(np.float32)
        if flavor == "seurat_v3":
            yield counts.tocsr()
            continue
        block = anndata.AnnData(X=counts)
        sc.pp.normalize_total(block, target_sum=1e4)
        sc.pp.log1p(block)
        yield block.X.tocsr() if flavor == "cell_ranger" else np.expm1(block.X).tocsr()


def _column_sums(blocks, values=lambda x: x.data) -> tuple[np.ndarray, np.ndarray]:
    """[n_var] float64 sums over all blocks' rows of `values(block)` and of its squares (squared in the values'
    dtype)."""
    sums = squares = None
    for x in blocks:
        v = values(x)
        if sums is None:
            sums, squares = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        sums += np.bincount(x.indices, weights=v, minlength=x.shape[1])
        squares += np.bincount(x.indices, weights=np.square(v), minlength=x.shape[1])
    return sums, squares


def _mean_var(blocks, n: int) -> tuple[np.ndarray, np.ndarray]:
    """[n_var] float64 mean and variance (ddof=1) over n cells, as scanpy's `_get_mean_var`."""
    sums, squares = _column_sums(blocks)
    mean = sums / n
    var = squares / n - mean**2
    if n != 1:
        var *= n / (n - 1)
    return mean, var


def _select_v3(blocks, n: int, mean: np.ndarray, var: np.ndarray, n_top_genes: int) -> np.ndarray:
    """scanpy's `_highly_variable_genes_seurat_v3` for one batch, from the mean and variance onwards; `blocks()`
    reads the counts again for the clipped sums."""
    try:
        from skmisc.loess import loess
    except ImportError as err:
        raise ExtractError(f"highly variable genes with flavor 'seurat_v3' need scikit-misc ({err}); install the "
                           "extract extra (pip install 'jaxsae[extract]') or pass hvg_flavor='seurat'") from err
    not_const = var > 0
    if not not_const.any():
        raise ExtractError("no gene varies across the cells (flavor 'seurat_v3'); expected raw counts with "
                           "varying genes; check the counts")
    fitted = np.zeros(len(mean))
    model = loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=LOESS_SPAN, degree=2)
    model.fit()
    fitted[not_const] = model.outputs.fitted_values
    reg_std = np.sqrt(10**fitted)
    clip_val = reg_std * np.sqrt(n) + mean
    clipped, clipped_squares = _column_sums(
        blocks(), values=lambda x: np.minimum(x.data.astype(np.float64), clip_val[x.indices]))
    norm = (1 / ((n - 1) * np.square(reg_std))) * (n * np.square(mean) + clipped_squares - 2 * clipped * mean)
    ranks = np.argsort(np.argsort(-norm.reshape(1, -1), axis=1), axis=1)[0]
    return ranks < n_top_genes


def _select_dispersion(mean: np.ndarray, var: np.ndarray, n_top_genes: int, flavor: str) -> np.ndarray:
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
