"""Cell-type association: AUROC equals sklearn's (ties included), tables and heatmap, refused columns."""

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from jaxsae.analysis import AnalysisError, associate, best_features, plot_association_heatmap


def cells(values: np.ndarray, labels, **obs) -> anndata.AnnData:
    adata = anndata.AnnData(X=np.zeros((len(values), 1), np.float32),
                            obs=pd.DataFrame({"label": labels, **obs}, index=[f"c{i}" for i in range(len(values))]))
    adata.obsm["X_sae"] = sp.csr_matrix(values.astype(np.float32))
    return adata


def test_auroc_matches_sklearn_with_ties_missing_labels_and_unused_categories():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    values = rng.integers(0, 4, size=(300, 40)).astype(np.float32)
    values[values < 2] = 0  # mostly ties: many zeros, few distinct values
    values[:, 5] = 0  # a feature that never fires
    labels = pd.Categorical(rng.choice(["a", "b", "c", None], 300), categories=["a", "b", "unused", "c"])
    assoc = associate(cells(values, labels), "label")
    assert assoc["label"].unique().tolist() == ["a", "b", "c"]  # unused category dropped, order kept
    labelled = ~pd.isna(labels)
    for label in ("a", "b", "c"):
        expected = [roc_auc_score(labels[labelled] == label, values[labelled, j]) for j in range(40)]
        rows = assoc[assoc["label"] == label]
        np.testing.assert_allclose(rows["auroc"], expected, rtol=1e-12)
        inside = labelled & (labels == label)
        np.testing.assert_allclose(rows["mean_in"], values[inside].mean(0), rtol=1e-6)
        np.testing.assert_allclose(rows["mean_out"], values[labelled & ~inside].mean(0), rtol=1e-6)
        assert (rows["n_in"] == inside.sum()).all()
    specificity = assoc.pivot(index="label", columns="feature", values="specificity")
    np.testing.assert_allclose(specificity.drop(columns=5).sum(0), 1.0)  # shares over labels sum to 1
    assert (specificity[5] == 0).all() and (assoc.loc[assoc["feature"] == 5, "auroc"] == 0.5).all()


def test_best_features_per_label_and_the_heatmap(tmp_path):
    import matplotlib.image

    rng = np.random.default_rng(1)
    labels = np.repeat(["x", "y", "z"], 40)
    values = rng.exponential(size=(120, 10)) * (rng.random((120, 10)) < 0.3)
    values[labels == "y", 4] += 5.0  # feature 4 marks y, feature 8 marks z (less cleanly)
    values[(labels == "z") & (rng.random(120) < 0.8), 8] += 5.0
    assoc = associate(cells(values, pd.Categorical(labels)), "label")
    best = best_features(assoc, n=2)
    assert best["label"].tolist() == ["x", "x", "y", "y", "z", "z"]
    assert best.groupby("label")["auroc"].apply(lambda a: a.is_monotonic_decreasing).all()
    first = best.groupby("label").head(1).set_index("label")["feature"]
    assert first["y"] == 4 and first["z"] == 8
    by_diff = best_features(assoc, by="mean_diff")
    assert by_diff.set_index("label").loc["y", "feature"] == 4
    with pytest.raises(AnalysisError, match=r"by='recall'; expected one of \['auroc', 'mean_in'"):
        best_features(assoc, by="recall")
    path = plot_association_heatmap(assoc, tmp_path / "heatmap.png")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert plot_association_heatmap(assoc, tmp_path / "two.png", features=[4, 8, 1, 2], max_features=2)
    with pytest.raises(AnalysisError, match=r"features \[99\] are not in the association table"):
        plot_association_heatmap(assoc, tmp_path / "bad.png", features=[4, 99])


@pytest.mark.parametrize("column, message", [
    ("n_genes", r"adata.obs\['n_genes'\] has dtype int64, not categorical.*pd.cut\(adata.obs\['n_genes'\], 5\)"),
    ("name", r"adata.obs\['name'\] has dtype object, not categorical.*adata.obs\['name'\] = "
             r"adata.obs\['name'\].astype\('category'\)"),
    ("cell_type", r"adata.obs has no column 'cell_type'; columns: \['label', 'n_genes', 'name', 'one'\]"),
    ("one", r"adata.obs\['one'\] has 1 label\(s\) among the cells.*needs at least 2"),
])
def test_columns_that_are_not_cell_labels_are_refused(column, message):
    values = np.ones((6, 2))
    adata = cells(values, pd.Categorical(list("aabbcc")), n_genes=np.arange(6), name=list("uvwxyz"),
                  one=pd.Categorical(["only"] * 6))
    with pytest.raises(AnalysisError, match=message):
        associate(adata, column)
