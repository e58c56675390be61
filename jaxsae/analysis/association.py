"""Feature <-> cell label association: AUROC, mean difference and specificity per (feature, label)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import scipy.sparse as sp

from jaxsae.analysis.cells import cells_matrix
from jaxsae.errors import AnalysisError

COLUMNS = ["feature", "label", "auroc", "mean_in", "mean_out", "mean_diff", "specificity", "n_in"]


def associate(adata, obs: str, *, name: str = "sae") -> pd.DataFrame:
    """How well each feature of adata.obsm[f"X_{name}"] marks each category of the categorical adata.obs[obs].

    For every (feature, label): auroc, the probability that a random cell of the label has a larger value
    than a random other cell (ties count 1/2; Mann-Whitney U / (n_in * n_out) with average ranks); mean_in /
    mean_out, the feature's mean value in / outside the label's cells, and mean_diff = mean_in - mean_out;
    specificity = mean_in / (sum over labels of their mean_in): the share of the feature's per-label mean
    activation that falls on this label (1: only this label, 1 / n_labels: even; per-label means, so label
    sizes do not matter; 0 for a feature that never fires); n_in, the label's number of cells.
    Cells whose label is missing (NaN) are left out; unused categories are dropped. Long table, labels in
    category order, features ascending within each label.
    PERFORMANCE: ranks come from one sort of the stored (non-zero) values; the zeros of a column share
    one average rank, so time and memory are O(nnz log nnz + n_labels x n_latents), never dense cells x features.
    """
    labels, categories = obs_labels(adata, obs)
    matrix = cells_matrix(adata, name)
    if matrix.data.size and matrix.data.min() < 0:
        raise AnalysisError(f"obsm['X_{name}'] holds negative values; associate ranks non-negative SAE activations "
                            "(encode_cells writes them)")
    has_label = labels >= 0
    matrix, labels = matrix[has_label], labels[has_label]
    used = np.bincount(labels, minlength=len(categories)) > 0
    labels = (np.cumsum(used) - 1)[labels]
    categories = [c for c, u in zip(categories, used) if u]
    if len(categories) < 2:
        raise AnalysisError(f"adata.obs[{obs!r}] has {len(categories)} label(s) among the cells; association "
                            "compares a label's cells with the others, so it needs at least 2")
    matrix.eliminate_zeros()
    n_cells, n_latents = matrix.shape
    n_in = np.bincount(labels, minlength=len(categories))
    one_hot = sp.csr_matrix((np.ones(n_cells), (labels, np.arange(n_cells))), shape=(len(categories), n_cells))
    sums = np.asarray((one_hot @ matrix).todense())  # [n_labels, n_latents]
    mean_in = sums / n_in[:, None]
    mean_out = (sums.sum(0)[None, :] - sums) / (n_cells - n_in)[:, None]
    total_of_means = mean_in.sum(0)
    specificity = np.divide(mean_in, total_of_means, out=np.zeros_like(mean_in), where=total_of_means > 0)
    return pd.DataFrame({
        "feature": np.tile(np.arange(n_latents), len(categories)),
        "label": np.repeat(np.asarray(categories, dtype=object), n_latents),
        "auroc": auroc(matrix, labels, len(categories)).ravel(),
        "mean_in": mean_in.ravel(), "mean_out": mean_out.ravel(), "mean_diff": (mean_in - mean_out).ravel(),
        "specificity": specificity.ravel(), "n_in": np.repeat(n_in, n_latents),
    })[COLUMNS]


def auroc(matrix: sp.csr_matrix, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """[n_labels, n_latents] AUROC of each column of `matrix` (non-negative, explicit zeros removed) for
    label l vs the rest; labels: [n_cells] ints in [0, n_labels), every label present, not all one label."""
    n_cells, n_latents = matrix.shape
    coo = matrix.tocoo()
    order = np.lexsort((coo.data, coo.col))
    col, value, row = coo.col[order], coo.data[order], coo.row[order]
    stored = np.bincount(col, minlength=n_latents)
    zeros = n_cells - stored  # the implicit zeros of each column, ranked 1..zeros (average (zeros + 1) / 2)
    position = np.arange(len(col)) - np.r_[0, np.cumsum(stored)[:-1]][col]  # 0-based position within column
    new_tie = np.r_[True, (col[1:] != col[:-1]) | (value[1:] != value[:-1])] if len(col) else np.zeros(0, bool)
    tie_group = np.cumsum(new_tie) - 1
    first = position[new_tie]
    size = np.bincount(tie_group)
    rank = zeros[col] + first[tie_group] + (size[tie_group] - 1) / 2 + 1
    label = labels[row]
    rank_sum = sp.coo_matrix((rank, (label, col)), shape=(n_labels, n_latents)).toarray()
    stored_in = sp.coo_matrix((np.ones(len(col)), (label, col)), shape=(n_labels, n_latents)).toarray()
    n_in = np.bincount(labels, minlength=n_labels)[:, None].astype(np.float64)
    rank_sum += (n_in - stored_in) * (zeros[None, :] + 1) / 2
    u = rank_sum - n_in * (n_in + 1) / 2
    return u / (n_in * (n_cells - n_in))


def default_label_column(adata) -> str | None:
    """The first categorical obs column with 2-100 categories (a plausible cell-label column), or None."""
    for column in adata.obs:
        values = adata.obs[column]
        if isinstance(values.dtype, pd.CategoricalDtype) and 2 <= values.nunique() <= 100:
            return column
    return None


def obs_labels(adata, obs: str) -> tuple[np.ndarray, list]:
    """([n_obs] category codes, -1 for missing; the categories) of the categorical column adata.obs[obs]."""
    if obs not in adata.obs.columns:
        raise AnalysisError(f"adata.obs has no column {obs!r}; columns: {list(adata.obs.columns)}; pass the "
                            "categorical column that holds the cell labels (e.g. cell type)")
    column = adata.obs[obs]
    if not isinstance(column.dtype, pd.CategoricalDtype):
        numeric = pd.api.types.is_numeric_dtype(column.dtype)
        hint = (f"bin it first, e.g. adata.obs[{obs!r}] = pd.cut(adata.obs[{obs!r}], 5)" if numeric
                else f"adata.obs[{obs!r}] = adata.obs[{obs!r}].astype('category')")
        raise AnalysisError(f"adata.obs[{obs!r}] has dtype {column.dtype}, not categorical; association compares "
                            f"groups of cells by label: {hint}")
    return column.cat.codes.to_numpy().astype(np.int64), list(column.cat.categories)


def best_features(assoc: pd.DataFrame, *, n: int = 1, by: str = "auroc") -> pd.DataFrame:
    """The best `n` features of every label of an `associate` table by column `by` (larger is better; ties
    by mean_diff, then lower feature number); labels in their order in `assoc`, best first."""
    if by not in assoc.columns or by in ("feature", "label"):
        raise AnalysisError(f"by={by!r}; expected one of {[c for c in assoc.columns if c not in ('feature', 'label')]}")
    if n < 1:
        raise AnalysisError(f"n={n}; expected at least 1")
    keys = [by] + (["mean_diff"] if by != "mean_diff" else [])
    label_order = pd.Categorical(assoc["label"], categories=pd.unique(assoc["label"]), ordered=True)
    ranked = assoc.assign(_label=label_order).sort_values(["_label", *keys, "feature"],
                                                          ascending=[True] + [False] * len(keys) + [True])
    best = ranked.groupby("_label", sort=False, observed=True).head(n)
    return best.drop(columns="_label").reset_index(drop=True)


def plot_association_heatmap(assoc: pd.DataFrame, path: str | os.PathLike, *, features=None,
                             max_features: int = 40) -> str:
    """PNG at `path`: labels (rows) x features (columns) coloured by AUROC (0..1, 0.5 white). features:
    which to show (default: the best feature of every label, in label order, without repeats), at most
    `max_features`. Draws with matplotlib's Agg canvas (no pyplot, no GUI, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(pd.unique(assoc["label"]))
    if features is None:
        features = pd.unique(best_features(assoc)["feature"])
    features = [int(f) for f in features][:max_features]
    unknown = sorted(set(features) - set(assoc["feature"].tolist()))
    if unknown or not features:
        raise AnalysisError(f"features {unknown or features} are not in the association table; pass feature "
                            "numbers it holds")
    grid = assoc.pivot(index="label", columns="feature", values="auroc").loc[labels, features].to_numpy(float)
    fig = Figure(figsize=(2.5 + 0.35 * len(features), 1.5 + 0.3 * len(labels)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="RdBu_r", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(features)), [str(f) for f in features], rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), [str(label) for label in labels], fontsize=7)
    ax.set_xlabel("feature")
    fig.colorbar(image, ax=ax, label="AUROC")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    return os.fspath(path)
