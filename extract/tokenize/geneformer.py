"""Geneformer rank-value encoding, as Geneformer's own `TranscriptomeTokenizer` does it.

Per cell: counts / total counts x 10,000 (total over all genes of the matrix), divided by each gene's
non-zero median from the model's gene-median dictionary; genes ranked by that value, descending (ties keep
var order: a stable sort, where Geneformer's `np.argsort` leaves ties unspecified); truncated to the model's
input size. Only genes present in both the token and the median dictionary are used; var columns that map
to the same Ensembl ID are summed first (as Geneformer V2 does). V1 layout: 2,048 inputs, no special
tokens. V2 layout: 4,096 inputs including `<cls>` first and `<eos>` last.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from extract.errors import ExtractError
from extract.safe_pickle import load_plain_dict
from extract.tokenize.genes import TokenizedCells, ensembl_ids, plan_genes

PAD, MASK, CLS, EOS = "<pad>", "<mask>", "<cls>", "<eos>"
TOKEN_DICTIONARY_GLOB = "token_dictionary*.pkl"
MEDIAN_DICTIONARY_GLOB = "gene_median_dictionary*.pkl"
NAME_DICTIONARY_GLOB = "gene_name_id_dict*.pkl"


def find_dictionary(folder: Path, pattern: str, explicit: str | Path | None, required: bool) -> Path | None:
    """The one file in `folder` matching `pattern`, or `explicit` when given."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ExtractError(f"dictionary file {path} does not exist")
        return path
    found = sorted(folder.glob(pattern))
    if len(found) > 1:
        raise ExtractError(
            f"{folder} has several files matching {pattern}: {[p.name for p in found]}; pass the one the "
            "model was trained with explicitly"
        )
    if not found:
        if required:
            raise ExtractError(
                f"{folder} has no {pattern}; a Geneformer model folder needs its token dictionary and gene "
                "median dictionary next to config.json (copy them from the Geneformer repository) or pass "
                "their paths explicitly"
            )
        return None
    return found[0]


@dataclass(frozen=True)
class GeneformerDictionaries:
    """The model's token dictionary {ensembl_id: token}, gene medians {ensembl_id: float} and optional
    symbol mapping {symbol: ensembl_id}, loaded with the restricted unpickler."""

    token_ids: dict[str, int]
    medians: dict[str, float]
    symbol_to_id: dict[str, str] | None
    files: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def from_dir(
        cls,
        folder: str | Path,
        *,
        token_dictionary: str | Path | None = None,
        gene_median_dictionary: str | Path | None = None,
        gene_name_dictionary: str | Path | None = None,
    ) -> GeneformerDictionaries:
        folder = Path(folder)
        token_path = find_dictionary(folder, TOKEN_DICTIONARY_GLOB, token_dictionary, required=True)
        median_path = find_dictionary(folder, MEDIAN_DICTIONARY_GLOB, gene_median_dictionary, required=True)
        name_path = find_dictionary(folder, NAME_DICTIONARY_GLOB, gene_name_dictionary, required=False)
        token_ids = load_plain_dict(token_path, (int,), "token dictionary")
        medians = load_plain_dict(median_path, (int, float), "gene median dictionary")
        bad = [g for g, m in medians.items() if not m > 0]
        if bad:
            raise ExtractError(f"{median_path}: gene medians must be > 0; {bad[:3]} are not")
        for token in (PAD, MASK):
            if token not in token_ids:
                raise ExtractError(f"{token_path}: token dictionary has no {token} token")
        symbol_to_id = load_plain_dict(name_path, (str,), "gene name dictionary") if name_path else None
        files = {"token_dictionary": token_path, "gene_median_dictionary": median_path}
        if name_path:
            files["gene_name_dictionary"] = name_path
        return cls(token_ids, {g: float(m) for g, m in medians.items()}, symbol_to_id, files)

    @property
    def has_special_tokens(self) -> bool:
        return CLS in self.token_ids and EOS in self.token_ids

    def gene_table(self) -> pd.DataFrame:
        """Every token of the token dictionary: token_id, gene_id (Ensembl; "" for special tokens such as
        <pad>), symbol (from the gene name dictionary; the token's name for special tokens; "" when the
        folder has no name dictionary or it lacks the gene). Several symbols naming one Ensembl id: the first
        in the name dictionary's order."""
        symbols: dict[str, str] = {}
        for symbol, ensembl in (self.symbol_to_id or {}).items():
            symbols.setdefault(ensembl, symbol)
        rows = [(token, "", name) if is_special_token(name) else (token, name, symbols.get(name, ""))
                for name, token in self.token_ids.items()]
        return pd.DataFrame(rows, columns=["token_id", "gene_id", "symbol"])


def is_special_token(name: str) -> bool:
    """<pad>, <mask>, <cls>, <eos>, ...: names in angle brackets, never gene ids or symbols."""
    return name.startswith("<") and name.endswith(">")


class GeneformerTokenizer:
    """Rank-value encoding of count rows for one AnnData's var.

    model_input_size: total sequence length including special tokens (2,048 for V1, 4,096 for V2).
    special_tokens: V2 layout (`<cls>` + genes + `<eos>`); needs both tokens in the dictionary.
    duplicate_genes: var rows naming the same gene: "sum" (Geneformer's collapse_gene_ids), "first" or "error".
    """

    kind = "geneformer"

    def __init__(
        self,
        dictionaries: GeneformerDictionaries,
        var: pd.DataFrame,
        *,
        model_input_size: int,
        special_tokens: bool,
        gene_column: str | None = None,
        target_sum: float = 10_000.0,
        duplicate_genes: str = "sum",
    ):
        if special_tokens and not dictionaries.has_special_tokens:
            raise ExtractError("special_tokens=True (V2 layout) needs <cls> and <eos> in the token dictionary")
        n_special = 2 if special_tokens else 0
        if model_input_size <= n_special:
            raise ExtractError(f"model_input_size must exceed {n_special}, found {model_input_size}")
        self.dictionaries = dictionaries
        self.model_input_size = int(model_input_size)
        self.special_tokens = bool(special_tokens)
        self.gene_column = gene_column
        self.target_sum = float(target_sum)
        self.max_genes = self.model_input_size - n_special
        ids = ensembl_ids(var, gene_column, dictionaries.symbol_to_id)
        usable = {g: t for g, t in dictionaries.token_ids.items() if g in dictionaries.medians}
        self.plan = plan_genes(ids, usable, "token + gene median dictionaries", duplicate_genes)
        kept_ids = [ids[j] for j in self.plan.var_index]
        self.medians = np.asarray([dictionaries.medians[g] for g in kept_ids], dtype=np.float64)
        self.pad_token_id = dictionaries.token_ids[PAD]
        self.cls_token_id = dictionaries.token_ids[CLS] if special_tokens else None
        self.eos_token_id = dictionaries.token_ids[EOS] if special_tokens else None

    def settings(self) -> dict:
        """What the manifest records about tokenisation."""
        return {
            "tokenizer": self.kind,
            "model_input_size": self.model_input_size,
            "special_tokens": self.special_tokens,
            "gene_column": self.gene_column,
            "target_sum": self.target_sum,
            "tie_break": "var order (stable sort)",
            **self.plan.settings(),
        }

    def n_genes(self, counts: sp.csr_matrix) -> np.ndarray:
        """[n_cells] int64 number of gene tokens each row will get (after truncation)."""
        return np.minimum(self.plan.n_expressed(counts), self.max_genes)

    def __call__(self, counts: sp.csr_matrix, cell_index: np.ndarray | None = None) -> TokenizedCells:
        """counts: [n_cells, n_var] CSR raw counts (see `as_count_rows`). cell_index is unused (deterministic)."""
        totals = np.asarray(counts.sum(axis=1)).ravel()
        kept = (counts @ self.plan.select).tocsr()
        kept.eliminate_zeros()
        kept.sort_indices()
        prefix = [self.cls_token_id] if self.special_tokens else []
        suffix = [self.eos_token_id] if self.special_tokens else []
        input_ids = []
        for i in range(kept.shape[0]):
            lo, hi = kept.indptr[i], kept.indptr[i + 1]
            cols = kept.indices[lo:hi]
            scaled = kept.data[lo:hi] / totals[i] * self.target_sum / self.medians[cols]
            order = np.argsort(-scaled, kind="stable")[: self.max_genes]
            genes = self.plan.token_ids[cols[order]]
            input_ids.append(np.concatenate([prefix, genes, suffix]).astype(np.int64))
        return TokenizedCells(input_ids, None, len(prefix), len(suffix))
