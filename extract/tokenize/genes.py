"""Gene identifiers and count matrices shared by the tokenisers: ID resolution, column plans, count checks."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from extract.config import DUPLICATE_POLICIES
from extract.errors import ExtractError

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def looks_like_ensembl(names) -> bool:
    """True when most of `names` are Ensembl gene IDs (ENSG..., ENSMUSG..., optional .version)."""
    names = [str(n) for n in names]
    if not names:
        return False
    hits = sum(bool(_ENSEMBL.match(n)) for n in names)
    return hits >= 0.5 * len(names)


def strip_version(gene_id: str) -> str:
    """'ENSG00000141510.17' -> 'ENSG00000141510'."""
    return gene_id.split(".", 1)[0] if _ENSEMBL.match(gene_id) else gene_id


def var_column(var: pd.DataFrame, gene_column: str | None) -> tuple[list[str], str]:
    """The gene names in `var[gene_column]` (or the index for None / "index") and a label for messages."""
    if gene_column is None or gene_column == "index":
        return [str(g) for g in var.index], "var.index"
    if gene_column not in var.columns:
        raise ExtractError(
            f"gene_column={gene_column!r} is not a column of var (columns: {list(var.columns)}); "
            "pass one of those or 'index'"
        )
    return [str(g) for g in var[gene_column]], f"var[{gene_column!r}]"


def ensembl_ids(var: pd.DataFrame, gene_column: str | None, symbol_to_id: dict[str, str] | None) -> list[str | None]:
    """Ensembl ID per var row (None where a symbol has no mapping).

    Source: `gene_column` if given, else a var column named 'ensembl_id', else the index. Values that are
    not Ensembl IDs are treated as gene symbols and mapped through `symbol_to_id` (the model's own
    gene-name dictionary); without one, that is an error.
    """
    if gene_column is None and "ensembl_id" in var.columns:
        gene_column = "ensembl_id"
    names, label = var_column(var, gene_column)
    if looks_like_ensembl(names):
        return [strip_version(n) for n in names]
    if symbol_to_id is None:
        raise ExtractError(
            f"{label} holds gene symbols (e.g. {names[:3]}), not Ensembl IDs, and the model folder has no "
            "gene-name dictionary (gene_name_id_dict*.pkl) to map them; add an 'ensembl_id' column to var, "
            "pass gene_column=<column with Ensembl IDs>, or pass gene_name_dictionary=<path> (CLI: --gene_column, "
            "--gene_name_dictionary)"
        )
    return [symbol_to_id.get(n) for n in names]


@dataclass(frozen=True)
class GenePlan:
    """How the AnnData's columns map onto model genes.

    `select`: [n_var, n_genes] 0/1 sparse matrix; `counts @ select` keeps model genes (and, with
    duplicate_genes="sum", adds the columns that map to the same gene). `token_ids`: [n_genes] int64 model
    token id per kept gene, in order of first appearance in var. `var_index`: [n_genes] int64 first var row
    of each kept gene. `n_duplicated`: model genes found in more than one var column.
    """

    select: sp.csr_matrix
    token_ids: np.ndarray
    var_index: np.ndarray
    duplicate_genes: str = "sum"
    n_duplicated: int = 0

    def settings(self) -> dict:
        """What the manifest records about the gene plan."""
        return {"n_genes_used": self.n_genes, "duplicate_genes": self.duplicate_genes,
                "n_duplicate_genes": self.n_duplicated}

    @property
    def n_genes(self) -> int:
        return len(self.token_ids)

    def n_expressed(self, counts: sp.csr_matrix) -> np.ndarray:
        """[n_cells] int64 number of model genes with a non-zero count in each row."""
        kept = (counts @ self.select).tocsr()
        kept.eliminate_zeros()
        return np.diff(kept.indptr).astype(np.int64)


log = logging.getLogger("jaxsae.extract")


def plan_genes(keys: list[str | None], vocab: dict[str, int], what: str, duplicate_genes: str = "sum") -> GenePlan:
    """Keep var rows whose key is in `vocab`. Refuses when none is in the vocabulary.

    duplicate_genes: what to do with var rows that map to the same model gene: "sum" their counts (logged),
    keep the "first" one (logged), or "error" (ExtractError naming them).
    """
    if duplicate_genes not in DUPLICATE_POLICIES:
        raise ExtractError(f"duplicate_genes is {duplicate_genes!r}; expected one of {DUPLICATE_POLICIES}")
    first_col: dict[str, int] = {}
    duplicated: dict[str, int] = {}
    rows, cols, first_rows = [], [], []
    for j, key in enumerate(keys):
        if key is None or key not in vocab:
            continue
        if key in first_col:
            duplicated[key] = duplicated.get(key, 1) + 1
            if duplicate_genes != "sum":
                continue
        else:
            first_col[key] = len(first_col)
            first_rows.append(j)
        rows.append(j)
        cols.append(first_col[key])
    if not first_col:
        sample = [k for k in keys if k is not None][:3]
        raise ExtractError(
            f"none of the {len(keys)} genes in the AnnData is in the model's {what} (e.g. {sample}); "
            "check that var holds the identifiers the model was trained on (gene_column=...)"
        )
    if duplicated:
        examples = ", ".join(f"{k} x{n}" for k, n in list(duplicated.items())[:5])
        found = f"{len(duplicated)} model genes appear in more than one var column (e.g. {examples})"
        if duplicate_genes == "error":
            raise ExtractError(
                f"{found}; expected each gene once (duplicate_genes='error'); make the names unique with "
                "adata.var_names_make_unique(), choose another gene_column, or pass duplicate_genes='sum' "
                "(add their counts) or 'first' (keep the first column)"
            )
        action = "their counts are summed" if duplicate_genes == "sum" else "only the first column of each is used"
        log.warning(f"{found}: {action} (duplicate_genes={duplicate_genes!r}; 'error' refuses instead)")
    select = sp.csr_matrix(
        (np.ones(len(rows), np.float64), (np.asarray(rows), np.asarray(cols))), shape=(len(keys), len(first_col))
    )
    ordered = list(first_col)
    token_ids = np.asarray([vocab[k] for k in ordered], dtype=np.int64)
    var_index = np.asarray(first_rows, dtype=np.int64)
    return GenePlan(select=select, token_ids=token_ids, var_index=var_index, duplicate_genes=duplicate_genes,
                    n_duplicated=len(duplicated))


def as_count_rows(block, first_row: int = 0) -> sp.csr_matrix:
    """A block of rows of the count matrix as float64 CSR without explicit zeros; refuses non-counts.

    `first_row` is the AnnData row of the block's first row (for error messages).
    """
    matrix = sp.csr_matrix(block, dtype=np.float64) if not sp.issparse(block) else block.tocsr().astype(np.float64)
    matrix.eliminate_zeros()
    data = matrix.data
    if data.size:
        if not np.all(np.isfinite(data)):
            raise ExtractError(f"count matrix has NaN/inf values (rows from {first_row}); expected raw counts")
        if data.min() < 0:
            raise ExtractError(
                f"count matrix has negative values (min {data.min():g}, rows from {first_row}); expected raw "
                "counts; pass counts_layer=<layer with raw counts> (CLI: --counts_layer)"
            )
        off = np.abs(data - np.round(data))
        if off.max() > 1e-6:
            bad = data[np.argmax(off)]
            raise ExtractError(
                f"count matrix has non-integer values (e.g. {bad:g}, rows from {first_row}): it looks "
                "normalised or log-transformed; extraction needs raw integer counts; pass "
                "counts_layer=<layer with raw counts> (or 'raw' for adata.raw.X; CLI: --counts_layer)"
            )
    matrix.sort_indices()
    return matrix


@dataclass(frozen=True)
class TokenizedCells:
    """Tokenised cells of one block.

    input_ids: per cell, int64 [L_i], special tokens included. values: per cell float32 [L_i] expression
    values fed next to the tokens (scGPT), None for Geneformer. Gene tokens sit at positions
    n_prefix .. L_i - n_suffix - 1 (n_prefix = 1 for a leading <cls>, n_suffix = 1 for a trailing <eos>).
    """

    input_ids: list[np.ndarray]
    values: list[np.ndarray] | None
    n_prefix: int
    n_suffix: int

    def n_genes(self, i: int) -> int:
        return len(self.input_ids[i]) - self.n_prefix - self.n_suffix
