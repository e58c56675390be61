"""The gene table next to a store (`genes.tsv`): model token id -> Ensembl gene id and gene symbol.

Extraction writes it into every store folder before the store can look complete; `jaxsae store add-genes`
adds it to stores written before gene tables existed. Columns (tab-separated, header row):

    token_id   every token id of the model's vocabulary, special tokens included
    gene_id    Ensembl gene id; empty where the model's files give none (special tokens, scGPT)
    symbol     gene symbol; the token's name for special tokens (<pad>, <cls>, ...); empty where unknown

Reading needs pandas only (no torch), so analysis code can name the genes of token rows anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from jaxsae.atomic import write_atomic
from jaxsae.errors import StoreError

GENES_FILE = "genes.tsv"
COLUMNS = ("token_id", "gene_id", "symbol")


def _store_folder(store) -> Path:
    """A store path or an ActivationStore (anything with a `.path`) as a folder Path."""
    return Path(getattr(store, "path", store))


def write_genes(store_path: str | os.PathLike, table: pd.DataFrame) -> Path:
    """Atomically write `table` (columns token_id, gene_id, symbol; one row per token) as `store_path/genes.tsv`.

    Written atomically (jaxsae.atomic), so a reader never sees half a table. Raises
    StoreError when the table lacks a column or repeats a token id.
    """
    folder = Path(store_path)
    table = _checked(table.reset_index() if table.index.name == "token_id" else table, folder / GENES_FILE)
    text = table.sort_values("token_id").to_csv(sep="\t", index=False, columns=list(COLUMNS), lineterminator="\n")
    return write_atomic(folder / GENES_FILE, text)


def load_genes(store) -> pd.DataFrame:
    """The gene table of a store (a path or an ActivationStore): a DataFrame indexed by token_id (int64) with
    string columns gene_id and symbol ("" where unknown).

    Raises StoreError for a store without genes.tsv (written before gene tables existed), with the command
    that adds one, and for a malformed file.
    """
    folder = _store_folder(store)
    path = folder / GENES_FILE
    if not path.is_file():
        raise StoreError(
            f"store {folder}: no {GENES_FILE}; the store predates gene tables (extractions now write one); add it "
            f"with: jaxsae store add-genes {folder} --model MODEL_DIR (the model folder the store was extracted "
            "with)"
        )
    try:
        table = pd.read_csv(path, sep="\t", dtype={"gene_id": str, "symbol": str}, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise StoreError(f"{path}: cannot be read as a gene table ({err}); rerun jaxsae store add-genes") from None
    return _checked(table, path).set_index("token_id")


def _checked(table: pd.DataFrame, where: Path) -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in table.columns]
    fix = f"rerun jaxsae store add-genes {where.parent} --model MODEL_DIR"
    if missing:
        raise StoreError(f"{where}: gene table lacks columns {missing}; expected {list(COLUMNS)}; {fix}")
    table = table.loc[:, list(COLUMNS)].copy()
    if table["token_id"].dtype.kind not in "iu":
        raise StoreError(f"{where}: token_id holds non-integers ({table['token_id'].dtype}); expected integers; {fix}")
    table["token_id"] = table["token_id"].astype(np.int64)
    duplicated = table["token_id"][table["token_id"].duplicated()]
    if len(duplicated):
        raise StoreError(f"{where}: token ids {duplicated.tolist()[:5]} appear more than once; expected one row per "
                         f"token; {fix}")
    for column in ("gene_id", "symbol"):
        table[column] = table[column].fillna("").astype(str)
    return table
