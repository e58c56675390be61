"""The expression behind a feature: genes differentially expressed in the cells where it is active."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from jaxsae.analysis.cells import cells_matrix
from jaxsae.errors import AnalysisError

COUNT_CHECK_VALUES = 1_000_000  # stored values inspected to tell raw counts from normalised data


def differential_expression(adata, feature: int, *, name: str = "sae", threshold: float = 0.0,
                            n_genes: int = 20) -> pd.DataFrame:
    """Genes up in the cells where `feature` of adata.obsm[f"X_{name}"] is > threshold vs all other cells.

    Expression: adata.raw.X when adata.raw is set, else adata.X (scanpy's own default). When that looks like
    raw counts (non-negative integers, checked on up to COUNT_CHECK_VALUES stored values), a copy is
    normalised to 10,000 counts per cell and log1p-transformed first; the user's AnnData is never changed.
    Test: scanpy rank_genes_groups, method="wilcoxon", active vs inactive cells (BH-adjusted p values).
    Returns the top `n_genes` by score: columns gene, score, logfoldchange, pval, pval_adj.
    """
    import anndata
    import scanpy as sc

    matrix = cells_matrix(adata, name)
    if isinstance(feature, bool) or not isinstance(feature, int | np.integer) or not 0 <= feature < matrix.shape[1]:
        raise AnalysisError(f"feature={feature!r}; expected a feature number in 0..{matrix.shape[1] - 1}")
    active = matrix[:, int(feature)].toarray().ravel() > threshold
    n_active = int(active.sum())
    if min(n_active, adata.n_obs - n_active) < 2:
        raise AnalysisError(f"feature {feature} is > {threshold} in {n_active} of {adata.n_obs} cells; the test "
                            "needs at least 2 active and 2 inactive cells: pick another feature or threshold")
    source = adata.raw if adata.raw is not None else adata
    expression = source.X.copy()
    groups = pd.Categorical(np.where(active, "active", "inactive"), categories=["active", "inactive"])
    tested = anndata.AnnData(X=expression, obs=pd.DataFrame({"group": groups}, index=adata.obs_names.copy()),
                             var=pd.DataFrame(index=source.var_names.copy()))
    if looks_like_counts(expression):
        sc.pp.normalize_total(tested, target_sum=1e4)
        sc.pp.log1p(tested)
    sc.tl.rank_genes_groups(tested, "group", groups=["active"], reference="inactive", method="wilcoxon",
                            n_genes=n_genes, use_raw=False)
    table = sc.get.rank_genes_groups_df(tested, group="active")
    renamed = table.rename(columns={"names": "gene", "scores": "score", "logfoldchanges": "logfoldchange",
                                    "pvals": "pval", "pvals_adj": "pval_adj"})
    return renamed[["gene", "score", "logfoldchange", "pval", "pval_adj"]].reset_index(drop=True)


def looks_like_counts(matrix) -> bool:
    """Whether a matrix holds raw counts: non-negative integers (on up to COUNT_CHECK_VALUES stored values)."""
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix).ravel()
    values = values[:COUNT_CHECK_VALUES]
    return bool(values.size) and bool((values >= 0).all()) and bool(np.all(values == np.round(values)))
