"""Encode every row of an activation store with a dictionary: sparse codes plus each row's cell and token."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from jaxsae.errors import AnalysisError
from jaxsae.dictionary import Dictionary, load
from jaxsae.store import ActivationStore, open_store


@dataclasses.dataclass(frozen=True)
class TokenCodes:
    """The dictionary's codes of a store's rows.

    codes:      [rows, n_latents] float32 CSR, the dictionary's non-zero activations of every store row.
    cell_index: [rows] int64, AnnData row of each store row.
    token_id:   [rows] int32, model token of each row (-1 for cell-level stores; <cls> for cell_cls stores).
    store:      absolute store path.
    dictionary: the dictionary folder, when known.
    """

    codes: sp.csr_matrix
    cell_index: np.ndarray
    token_id: np.ndarray
    store: str
    dictionary: str | None


def encode_store(store: str | os.PathLike | ActivationStore, dictionary: str | os.PathLike | Dictionary, *,
                 chunk_rows: int = 16384, progress: bool = True, rows: slice | None = None) -> TokenCodes:
    """Encode the store's rows (all, or `rows`, a slice with step 1) with `dictionary`, on the device.

    store: a store path or an ActivationStore; dictionary: a dictionary folder or a Dictionary.
    chunk_rows: store rows read at a time (host memory holds one chunk being read and one being encoded, plus
    the growing CSR result); the device works in the dictionary's own batches, so the result is identical
    whatever chunk_rows is. progress: a tqdm bar on stderr.
    Raises AnalysisError for a dictionary of another width than the store, an incomplete store (its
    extraction stopped early), a bad `rows` or chunk_rows; StoreError / DictionaryError for paths that are not
    a store / dictionary.

    PERFORMANCE: the next chunk is read from disk (TensorStore, GIL released) while the current one is
    encoded, and only each row's non-zero latents are copied back from the device.
    """
    from tqdm.auto import tqdm

    store = store if isinstance(store, ActivationStore) else open_store(store)
    dictionary = dictionary if isinstance(dictionary, Dictionary) else load(dictionary)
    where = f"store {Path(store.path).resolve()}"
    if dictionary.d_model != store.d_model:
        raise AnalysisError(
            f"dictionary {dictionary.path or '(in memory)'} encodes d_model={dictionary.d_model} activations but "
            f"{where} holds rows of d_model={store.d_model}; use a dictionary trained on this store's model "
            "and layer"
        )
    if not store.is_complete:
        raise AnalysisError(
            f"{where} is {store.status}; encode_store reads only complete stores: finish the extraction first"
        )
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise AnalysisError(f"chunk_rows: expected a positive integer, got {chunk_rows!r}")
    start, stop = _row_range(rows, store.n_rows)
    builder = dictionary.sparse_builder()
    cell_index = np.empty(stop - start, np.int64)
    token_id = np.empty(stop - start, np.int32)

    def read(lo: int) -> tuple[int, np.ndarray, dict]:
        hi = min(lo + chunk_rows, stop)
        return lo, store.read_rows(lo, hi), store.read_metadata(lo, hi)

    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode-read") as pool, \
            tqdm(total=stop - start, unit="row", unit_scale=True, desc="encode", disable=not progress,
                 dynamic_ncols=True) as bar:
        starts = range(start, stop, chunk_rows)
        pending = pool.submit(read, starts[0]) if len(starts) else None
        for i in range(len(starts)):
            lo, acts, meta = pending.result()
            pending = pool.submit(read, starts[i + 1]) if i + 1 < len(starts) else None
            cell_index[lo - start : lo - start + len(acts)] = meta["cell_index"]
            token_id[lo - start : lo - start + len(acts)] = meta["token_id"]
            builder.add(acts)
            bar.update(len(acts))
        codes = builder.result()
    return TokenCodes(codes=codes, cell_index=cell_index, token_id=token_id, store=str(Path(store.path).resolve()),
                      dictionary=dictionary.path)


def _row_range(rows: slice | None, n_rows: int) -> tuple[int, int]:
    if rows is None:
        return 0, n_rows
    if not isinstance(rows, slice) or rows.step not in (None, 1):
        raise AnalysisError(f"rows: expected a slice with step 1 (e.g. slice(0, 10_000)), got {rows!r}")
    start, stop, _ = rows.indices(n_rows)
    return start, max(start, stop)
