"""Expression behind a feature: scanpy Wilcoxon on the AnnData's own expression, counts normalised on a copy."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from jaxsae.analysis import AnalysisError, differential_expression

MONOCYTE_MARKERS = {"AIF1", "FCN1", "TYROBP", "LST1", "FCER1G", "CTSS", "PSAP"}


def with_feature(adata, active: np.ndarray):
    """adata with obsm X_sae: feature 0 = 1 on `active` cells, feature 1 never fires."""
    adata.obsm["X_sae"] = sp.csr_matrix(np.c_[active.astype(np.float32), np.zeros(adata.n_obs, np.float32)])
    return adata


def test_raw_counts_are_normalised_on_a_copy_and_the_markers_come_out(pbmc_cells):
    import scanpy as sc

    adata = pbmc_cells.copy()
    monocyte = (adata.obs["bulk_labels"] == "CD14+ Monocyte").to_numpy()
    with_feature(adata, monocyte)
    counts_before = adata.X.copy()
    table = differential_expression(adata, 0, n_genes=20)
    assert list(table.columns) == ["gene", "score", "logfoldchange", "pval", "pval_adj"] and len(table) == 20
    assert len(MONOCYTE_MARKERS & set(table["gene"].head(10))) >= 5, table
    assert (table["score"].diff().dropna() <= 0).all() and (table["pval_adj"] < 1e-20).all()
    assert (adata.X != counts_before).nnz == 0 and "rank_genes_groups" not in adata.uns and "log1p" not in adata.uns
    reference = adata.copy()  # the same test by hand on log1p(counts per 10,000)
    sc.pp.normalize_total(reference, target_sum=1e4)
    sc.pp.log1p(reference)
    reference.obs["group"] = pd.Categorical(np.where(monocyte, "active", "inactive"))
    sc.tl.rank_genes_groups(reference, "group", groups=["active"], reference="inactive", method="wilcoxon",
                            n_genes=20)
    expected = sc.get.rank_genes_groups_df(reference, group="active")
    assert table["gene"].tolist() == expected["names"].tolist()
    np.testing.assert_allclose(table["logfoldchange"], expected["logfoldchanges"], rtol=1e-5)


def test_log_expression_in_raw_is_used_as_is():
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()  # X: scaled; raw.X: log1p(counts per 10,000)
    active = (adata.obs["bulk_labels"] == "CD19+ B").to_numpy()
    with_feature(adata, active)
    table = differential_expression(adata, 0, n_genes=10)
    reference = adata.copy()
    reference.obs["group"] = pd.Categorical(np.where(active, "active", "inactive"))
    sc.tl.rank_genes_groups(reference, "group", groups=["active"], reference="inactive", method="wilcoxon",
                            n_genes=10, use_raw=True)
    assert table["gene"].tolist() == sc.get.rank_genes_groups_df(reference, group="active")["names"].tolist()
    assert {"CD79A", "CD79B", "MS4A1"} & set(table["gene"])


def test_too_few_active_cells_and_bad_features_are_refused():
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced()
    with_feature(adata, np.arange(adata.n_obs) == 3)
    with pytest.raises(AnalysisError, match=r"feature 0 is > 0.0 in 1 of 700 cells; the test needs at least 2 "
                                            r"active and 2 inactive cells"):
        differential_expression(adata, 0)
    with pytest.raises(AnalysisError, match=r"feature 1 is > 0.0 in 0 of 700 cells"):
        differential_expression(adata, 1)
    with pytest.raises(AnalysisError, match=r"feature=2; expected a feature number in 0..1"):
        differential_expression(adata, 2)
