"""Per-feature tables: the genes whose tokens activate a feature, and the one-row-per-feature summary."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from jaxsae.analysis.cells import cells_matrix
from jaxsae.errors import AnalysisError

TOP_GENE_COLUMNS = ["feature", "rank", "token_id", "gene_id", "symbol", "mean_activation", "fire_rate", "n_rows",
                    "n_fired"]


def top_per_column(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, top: int):
    """The `top` largest entries of every column of a sparse matrix given as COO (rows, cols, values), ties
    by ascending row -> (rows, cols, values, rank) sorted by column then rank (1 = largest)."""
    order = np.lexsort((rows, -values, cols))
    rows, cols, values = rows[order], cols[order], values[order]
    first = np.r_[True, cols[1:] != cols[:-1]] if len(cols) else np.zeros(0, bool)
    starts = np.maximum.accumulate(np.where(first, np.arange(len(cols)), 0))
    rank = np.arange(len(cols)) - starts + 1
    keep = rank <= top
    return rows[keep], cols[keep], values[keep], rank[keep]


def gene_labels(table: pd.DataFrame) -> pd.Series:
    """A readable name per row of a gene table: symbol, else gene_id, else the token id."""
    symbol = table["symbol"].fillna("").astype(str)
    gene_id = table["gene_id"].fillna("").astype(str)
    return symbol.where(symbol != "", gene_id.where(gene_id != "", table["token_id"].astype(str)))


def top_genes(codes, genes: pd.DataFrame | None = None, *, top: int = 10, min_rows: int = 5) -> pd.DataFrame:
    """The genes whose token positions activate each feature most.

    codes: TokenCodes of a token store (.codes CSR [rows, n_latents], .token_id [rows]); genes: the store's
    gene table (load_genes: indexed by token_id, columns gene_id, symbol) or None (ids only).
    Ranking: per feature, genes by mean activation over ALL of the gene's token rows (rows where the feature
    is 0 count, so a gene ranks high when the feature fires often AND strongly on it); genes with fewer than
    `min_rows` rows in the store are left out (a gene seen in 2 cells is no evidence), and genes the feature
    never fires on are not listed. Ties go to the smaller token id.
    Returns a long table, sorted by feature then rank (1 = best), with columns TOP_GENE_COLUMNS; fire_rate =
    n_fired / n_rows (rows of that gene where the feature is > 0).
    PERFORMANCE: two sparse products with the one-hot token matrix T [genes, rows]: T @ codes and
    T @ (codes > 0); memory is O(nnz of codes).
    """
    matrix, token_id = sp.csr_matrix(codes.codes, dtype=np.float32), np.asarray(codes.token_id, np.int64)
    if top < 1 or min_rows < 1:
        raise AnalysisError(f"top={top}, min_rows={min_rows}; both must be at least 1")
    gene_rows = np.flatnonzero(token_id >= 0)
    if len(gene_rows) == 0:
        raise AnalysisError(f"store {getattr(codes, 'store', '')} has no gene token rows (token_id = -1: a "
                            "cell-level store); top_genes needs the codes of a token store (OUT/layer_L/tokens)")
    tokens, gene_of_row = np.unique(token_id[gene_rows], return_inverse=True)
    one_hot = sp.csr_matrix((np.ones(len(gene_rows)), (gene_of_row, gene_rows)),
                            shape=(len(tokens), matrix.shape[0]))
    n_rows = np.bincount(gene_of_row, minlength=len(tokens))
    mean = sp.coo_matrix(sp.diags(1.0 / n_rows) @ (one_hot @ matrix))
    fired = sp.csr_matrix(one_hot @ sp.csr_matrix(matrix > 0, dtype=np.float32))
    keep = (n_rows[mean.row] >= min_rows) & (mean.data > 0)
    gene, feature, value, rank = top_per_column(mean.row[keep], mean.col[keep], mean.data[keep], top)
    n_fired = np.asarray(fired[gene, feature]).ravel().astype(np.int64)
    table = pd.DataFrame({
        "feature": feature.astype(np.int64), "rank": rank.astype(np.int64), "token_id": tokens[gene],
        "mean_activation": value.astype(np.float32), "fire_rate": (n_fired / n_rows[gene]).astype(np.float32),
        "n_rows": n_rows[gene].astype(np.int64), "n_fired": n_fired,
    })
    annotation = _annotation(genes, table["token_id"].to_numpy())
    table["gene_id"], table["symbol"] = annotation["gene_id"], annotation["symbol"]
    return table[TOP_GENE_COLUMNS].reset_index(drop=True)


def _annotation(genes: pd.DataFrame | None, token_ids: np.ndarray) -> dict[str, np.ndarray]:
    if genes is None:
        empty = np.full(len(token_ids), "", dtype=object)
        return {"gene_id": empty, "symbol": empty.copy()}
    missing = {"gene_id", "symbol"} - set(genes.columns)
    if missing:
        raise AnalysisError(f"the gene table lacks columns {sorted(missing)}; expected load_genes(store)'s "
                            "table (index token_id; columns gene_id, symbol)")
    found = genes.reindex(token_ids)
    return {column: found[column].fillna("").astype(str).to_numpy(dtype=object) for column in ("gene_id", "symbol")}


def feature_table(adata, *, name: str = "sae", codes=None, genes: pd.DataFrame | None = None,
                  promoted: pd.DataFrame | None = None, top: int = 5) -> pd.DataFrame:
    """One row per feature of adata.obsm[f"X_{name}"] (index "feature").

    freq_cells: fraction of cells where the cell value is > 0; mean_activation / max_activation: mean and
    max of the cell values (aggregated as encode_cells' agg says); top_cells: the `top` cells with the
    largest values (obs_names, "; "-joined, best first). With codes (TokenCodes of the store): freq_tokens,
    the fraction of store rows where the feature fires; with codes of a token store and genes: top_genes
    (names from `top_genes`, best first). With promoted (`extract.heads.promoted_genes`' table):
    promoted_genes (its top `top`, best first).
    """
    matrix = cells_matrix(adata, name)
    n_cells, n_latents = matrix.shape
    matrix.eliminate_zeros()
    table = pd.DataFrame(index=pd.RangeIndex(n_latents, name="feature"))
    table["freq_cells"] = np.bincount(matrix.indices[matrix.data > 0], minlength=n_latents) / max(n_cells, 1)
    table["mean_activation"] = np.asarray(matrix.sum(axis=0)).ravel() / max(n_cells, 1)
    table["max_activation"] = matrix.max(axis=0).toarray().ravel() if n_cells else 0.0
    coo = matrix.tocoo()
    positive = coo.data > 0
    cells, feature, _, _ = top_per_column(coo.row[positive], coo.col[positive], coo.data[positive], top)
    table["top_cells"] = _joined(feature, np.asarray(adata.obs_names)[cells], n_latents)
    if codes is not None:
        code_matrix = sp.csr_matrix(codes.codes)
        fires = code_matrix.indices[code_matrix.data > 0]
        table["freq_tokens"] = np.bincount(fires, minlength=n_latents) / max(code_matrix.shape[0], 1)
        if genes is not None and (np.asarray(codes.token_id) >= 0).any():
            genes_table = top_genes(codes, genes, top=top)
            table["top_genes"] = _joined(genes_table["feature"].to_numpy(), gene_labels(genes_table).to_numpy(),
                                         n_latents)
    if promoted is not None:
        best = promoted[promoted["rank"] <= top].sort_values(["feature", "rank"])
        table["promoted_genes"] = _joined(best["feature"].to_numpy(), gene_labels(best).to_numpy(), n_latents)
    return table


def _joined(feature: np.ndarray, names: np.ndarray, n_latents: int) -> np.ndarray:
    """[n_latents] strings: the names of each feature, in the order given, "; "-joined ("" for none)."""
    joined = pd.Series(names, dtype=object).groupby(feature, sort=False).agg("; ".join)
    return joined.reindex(range(n_latents), fill_value="").to_numpy(dtype=object)


def feature_enrichment(codes, genes: pd.DataFrame, gene_sets, *, top: int = 20, min_rows: int = 5,
                       max_fdr: float = 0.05) -> pd.DataFrame:
    """Gene-set over-representation of each feature's top genes (`enrich` on `top_genes`' symbols).

    codes: TokenCodes of a token store; genes: its gene table (load_genes); gene_sets: a GeneSets / mapping of
    symbol sets (go_gene_sets(), read_gmt(path)). Feature genes: the feature's `top` genes by top_genes'
    ranking. Universe: every gene with at least `min_rows` token rows in the store, i.e. exactly the genes
    that could have been a feature's top gene (a vocabulary-wide universe would overstate enrichment for
    the genes this data expresses). Returns enrich's table (rows with fdr <= max_fdr; global BH FDR).
    """
    from jaxsae.analysis.enrichment import enrich

    table = top_genes(codes, genes, top=top, min_rows=min_rows)
    token_id = np.asarray(codes.token_id, np.int64)
    tokens, n_rows = np.unique(token_id[token_id >= 0], return_counts=True)
    universe = _annotation(genes, tokens[n_rows >= min_rows])["symbol"]
    universe = [s for s in universe if s]
    named = table[table["symbol"] != ""]
    if not universe or named.empty:
        raise AnalysisError(f"store {getattr(codes, 'store', '')}: its gene table has no symbols for the genes "
                            "in the store; gene sets are matched by symbol (write genes.tsv with symbols: "
                            "jaxsae store add-genes STORE --model MODEL_DIR)")
    feature_genes = named.groupby("feature", sort=True)["symbol"].agg(list).to_dict()
    return enrich(feature_genes, gene_sets, universe, max_fdr=max_fdr)
