"""scGPT tokenisation, as scGPT's embedding path (`scgpt.tasks.get_batch_cell_embeddings`) does it.

Per cell: every gene of the AnnData that is in the model's `vocab.json` (no highly-variable-gene restriction,
as the official embedding path; HVG only when asked with n_hvg), the non-zero ones kept (or all kept genes
with `include_zero_genes`), `<cls>` first with value `pad_value`. Values are binned as scGPT's
`preprocess.binning` does, over all of the cell's gene values before any subsampling (the `<cls>` value
excluded), as its DataCollator does: bin edges = `np.quantile(non-zero values, linspace(0, 1, n_bins - 1))`;
each non-zero value gets `_digitize(side="both")`: with left = `np.digitize(x, edges)` and right =
`np.digitize(x, edges, right=True)`, the bin is `ceil(u * (right - left) + left)` for u uniform in [0, 1),
i.e. a value on a bin edge gets a uniformly random bin in right+1..left (left when no edge is hit); zeros stay
0. scGPT draws u from the global `np.random`; here u comes from a generator seeded by (binning_seed, cell's
AnnData row, 1), so reruns and resumes reproduce the same bins and the distribution is scGPT's. Cells longer
than `max_seq_len` keep `<cls>` and a random subset of genes, as scGPT's collator does, drawn from a
generator seeded by (seed, cell's AnnData row). scGPT has no positional embeddings, so kept genes stay in
var order (the collator's random order would change only the `position` metadata, not the activations).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from extract.errors import ExtractError
from extract.tokenize.genes import TokenizedCells, plan_genes, var_column

CLS = "<cls>"


def load_vocab(path: str | Path) -> dict[str, int]:
    """scGPT `vocab.json`: {gene symbol or special token: id}."""
    path = Path(path)
    try:
        vocab = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExtractError(f"cannot read scGPT vocabulary {path}: {err}") from err
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and type(v) is int for k, v in vocab.items()):
        raise ExtractError(f"{path} must be a JSON object mapping gene names to integer ids")
    return vocab


def vocab_gene_table(vocab: dict[str, int]) -> pd.DataFrame:
    """Every token of an scGPT vocabulary: token_id, gene_id ("" : scGPT's files name no Ensembl ids), symbol
    (the vocabulary's name: a gene symbol, or a special token such as <pad>). An id named twice keeps its
    first name."""
    first = {}
    for name, token in vocab.items():
        first.setdefault(token, name)
    return pd.DataFrame([(token, "", name) for token, name in first.items()],
                        columns=["token_id", "gene_id", "symbol"])


BINNING_STREAM = 1  # third seed word: the binning generator differs from the subsampling one at equal seeds
BINNING = ("scGPT preprocess.binning: per cell, edges = quantiles linspace(0, 1, n_bins - 1) of the non-zero "
           "values (before subsampling, <cls> excluded); non-zero value -> _digitize(side='both'): "
           "ceil(u * (right - left) + left), left/right = np.digitize(x, edges, right=False/True), "
           "u ~ U[0, 1) from default_rng([binning_seed, AnnData row, 1]); zeros -> 0")


def bin_values(values: np.ndarray, n_bins: int, rng: np.random.Generator) -> np.ndarray:
    """values: [L] non-negative expression of one cell -> [L] float32 bins, as scGPT's `binning`.

    0 stays 0; non-zero values get 1..n_bins-1, a value on a bin edge a uniformly random bin between its
    right and left digitisation (scGPT's `_digitize(side="both")`), with the uniforms drawn from `rng`.
    """
    values = np.asarray(values, dtype=np.float32)  # scGPT bins the float32 tensor values
    binned = np.zeros(len(values), dtype=np.float32)
    nonzero = values > 0
    if not nonzero.any():
        return binned
    x = values[nonzero]
    edges = np.quantile(x, np.linspace(0, 1, n_bins - 1))
    left = np.digitize(x, edges)
    right = np.digitize(x, edges, right=True)
    binned[nonzero] = np.ceil(rng.random(len(x)) * (right - left) + left)
    return binned


class ScGPTTokenizer:
    """Gene tokens + binned values for one AnnData's var.

    max_seq_len: total length including `<cls>`. gene_mask: [n_var] bool, e.g. highly variable genes, and
    hvg_flavor the scanpy flavor that chose them (recorded in `settings()`, so a resume with another is refused).
    seed: seeds the subsampling of cells longer than max_seq_len; binning_seed: the binning's tie-breaking.
    duplicate_genes: "sum", "first" or "error" for var rows naming the same gene (see `plan_genes`).
    """

    kind = "scgpt"

    def __init__(
        self,
        vocab: dict[str, int],
        var: pd.DataFrame,
        *,
        n_bins: int,
        max_seq_len: int,
        pad_token: str = "<pad>",
        pad_value: float = -2.0,
        gene_column: str | None = None,
        gene_mask: np.ndarray | None = None,
        hvg_flavor: str | None = None,
        include_zero_genes: bool = False,
        seed: int = 0,
        binning_seed: int = 0,
        duplicate_genes: str = "sum",
    ):
        for token in (pad_token, CLS):
            if token not in vocab:
                raise ExtractError(f"scGPT vocabulary has no {token} token")
        if n_bins < 3:
            raise ExtractError(f"n_bins must be >= 3, found {n_bins}")
        if max_seq_len < 2:
            raise ExtractError(f"max_seq_len must be >= 2 (<cls> + one gene), found {max_seq_len}")
        names, _ = var_column(var, gene_column)
        keys = [n if gene_mask is None or gene_mask[j] else None for j, n in enumerate(names)]
        self.plan = plan_genes(keys, vocab, "vocab.json", duplicate_genes)
        self.n_bins = int(n_bins)
        self.max_seq_len = int(max_seq_len)
        self.max_genes = self.max_seq_len - 1
        self.pad_token_id = vocab[pad_token]
        self.cls_token_id = vocab[CLS]
        self.pad_value = float(pad_value)
        self.gene_column = gene_column
        self.n_hvg = None if gene_mask is None else int(np.sum(gene_mask))
        self.hvg_flavor = None if gene_mask is None else hvg_flavor  # how gene_mask was chosen, when it was
        self.include_zero_genes = bool(include_zero_genes)
        self.seed = int(seed)
        self.binning_seed = int(binning_seed)

    def settings(self) -> dict:
        return {
            "tokenizer": self.kind,
            "n_bins": self.n_bins,
            "max_seq_len": self.max_seq_len,
            "pad_value": self.pad_value,
            "gene_column": self.gene_column,
            "n_hvg": self.n_hvg,
            **({"hvg_flavor": self.hvg_flavor} if self.hvg_flavor is not None else {}),
            "include_zero_genes": self.include_zero_genes,
            "seed": self.seed,
            "binning_seed": self.binning_seed,
            "binning": BINNING,
            **self.plan.settings(),
        }

    def n_genes(self, counts: sp.csr_matrix) -> np.ndarray:
        if self.include_zero_genes:
            return np.full(counts.shape[0], min(self.plan.n_genes, self.max_genes), dtype=np.int64)
        return np.minimum(self.plan.n_expressed(counts), self.max_genes)

    def __call__(self, counts: sp.csr_matrix, cell_index: np.ndarray) -> TokenizedCells:
        """counts: [n_cells, n_var] CSR raw counts; cell_index: [n_cells] AnnData rows (seed the binning and the
        subsampling)."""
        kept = (counts @ self.plan.select).tocsr()
        kept.eliminate_zeros()
        kept.sort_indices()
        input_ids, values = [], []
        for i in range(kept.shape[0]):
            if self.include_zero_genes:
                cols = np.arange(self.plan.n_genes)
                expr = kept[i].toarray().ravel()
            else:
                lo, hi = kept.indptr[i], kept.indptr[i + 1]
                cols, expr = kept.indices[lo:hi], kept.data[lo:hi]
            binned = bin_values(expr, self.n_bins, np.random.default_rng([self.binning_seed, int(cell_index[i]),
                                                                         BINNING_STREAM]))
            if len(cols) > self.max_genes:
                rng = np.random.default_rng([self.seed, int(cell_index[i])])
                keep = np.sort(rng.choice(len(cols), self.max_genes, replace=False))
                cols, binned = cols[keep], binned[keep]
            input_ids.append(np.concatenate([[self.cls_token_id], self.plan.token_ids[cols]]).astype(np.int64))
            values.append(np.concatenate([[self.pad_value], binned]).astype(np.float32))
        return TokenizedCells(input_ids, values, 1, 0)
