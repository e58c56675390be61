"""Extraction: AnnData of raw counts + model folder -> activation stores (one per layer and kind).

Output folder:
    out_dir/layer_{L}/tokens/      one row per gene token of every cell (plus <cls>/<eos> rows with
                                   include_special_tokens): the residual stream after block L at that position
    out_dir/layer_{L}/cell_mean/   one row per cell: the unweighted mean over the cell's gene-token positions
                                   of that residual stream (special tokens and padding excluded, whatever
                                   include_special_tokens says; token_id = position = -1)
    out_dir/layer_{L}/cell_cls/    one row per cell: the residual stream at position 0, the <cls> token
                                   (models with one: Geneformer V2, scGPT; token_id = <cls>, position = 0)
    out_dir/layer_{L}/{kind}/genes.tsv  the model's token id -> gene table (jaxsae.store.genes), written when
                                   the store is created, before any commit can mark it complete
    out_dir/skipped_cells.json     cells with no expressed model gene (skipped, with a logged notice)
    out_dir/extract.lock           while an extraction runs: its pid, host and token (one extraction per out_dir)
    out_dir/extraction.json        written last, when every store is complete: {"complete": true, ...}
Every store's manifest `source` holds the model, checkpoint sha256, layer, kind, tokeniser settings and the
AnnData file's sha256 (plus the model and AnnData paths, for people only); rows carry cell_index (AnnData
row), token_id (model token) and position (in the model input, special tokens counted).

Reuse and refusal: an existing output is matched by content (checkpoint sha256, AnnData sha256, tokeniser
and extraction settings), never by how a path is spelled. One that differs is refused before anything on disk
changes, naming each differing field (old -> new).

Order and resume: cells are processed in windows of `cells_per_commit` consecutive AnnData rows; inside a
window, cells are sorted by length (longest first, ties by row) into batches, which limits padding. After
each window every store commits, in a fixed order, with progress {"cells_done": end of window,
"cells_total": cells in the AnnData} (a store with cells_done < cells_total is incomplete). A rerun
opens the stores, restarts at the smallest cells_done, and appends to each store only the windows it has
not committed, so an interrupted run ends identical to an uninterrupted one (no duplicates, no gaps).
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from extract.config import ExtractConfig
from extract.counts import CountSource, sha256_file
from extract.errors import ExtractError
from extract.models import ExtractModel, load_model
from extract.tokenize.genes import TokenizedCells
from jaxsae.atomic import write_atomic
from jaxsae.differences import differences
from jaxsae.store import FolderLock, StoreError, StoreWriteError, StoreWriter
from jaxsae.store.genes import write_genes
from jaxsae.store.manifest import obs_names_sha256, read_manifest

INDEX_FILE = "extraction.json"
SKIPPED_FILE = "skipped_cells.json"
LOCK_FILE = "extract.lock"
SCAN_ROWS = 4096  # cells per block in the validation pass
PATH_FIELDS = ("model_dir", "adata.path")  # recorded for people, never compared: outputs match by content
# Derived from fields that are compared (adata.sha256), and absent from outputs written before it was recorded.
DERIVED_FIELDS = ("adata.obs_names_sha256",)
NOT_COMPARED = PATH_FIELDS + DERIVED_FIELDS
log = logging.getLogger("jaxsae.extract")


class ExtractionLock(FolderLock):
    """`<out_dir>/extract.lock`: one extraction per output folder; a second one gets an ExtractError."""

    locked_error = ExtractError

    def __init__(self, out_dir: Path):
        super().__init__(out_dir, LOCK_FILE, "extraction", field="out_dir")


@dataclass(frozen=True)
class Batch:
    """Padded model inputs of a few cells and which positions become token rows.

    input_ids: [B, L] int64; values: [B, L] float32 or None; attention_mask: [B, L] bool; token_rows:
    [B, L] bool positions written to the token stores; gene_mask: [B, L] bool gene positions (mean pooling);
    cell_index: [B] int64 AnnData rows.
    """

    input_ids: np.ndarray
    values: np.ndarray | None
    attention_mask: np.ndarray
    token_rows: np.ndarray
    gene_mask: np.ndarray
    cell_index: np.ndarray


def make_batch(tokens: TokenizedCells, members: np.ndarray, cell_index: np.ndarray, pad_id: int, pad_value: float,
               include_special_tokens: bool) -> Batch:
    """Pad the tokenised cells `members` (indices into `tokens`) into one batch."""
    lengths = [len(tokens.input_ids[m]) for m in members]
    shape = (len(members), max(lengths))
    input_ids = np.full(shape, pad_id, np.int64)
    values = np.full(shape, pad_value, np.float32) if tokens.values is not None else None
    attention_mask = np.zeros(shape, bool)
    gene_mask = np.zeros(shape, bool)
    for row, (m, n) in enumerate(zip(members, lengths)):
        input_ids[row, :n] = tokens.input_ids[m]
        if values is not None:
            values[row, :n] = tokens.values[m]
        attention_mask[row, :n] = True
        gene_mask[row, tokens.n_prefix : n - tokens.n_suffix] = True
    token_rows = attention_mask if include_special_tokens else gene_mask
    return Batch(input_ids, values, attention_mask, token_rows, gene_mask, cell_index[members])


def store_paths(out_dir: Path, layers: list[int], kinds: list[str]) -> dict[tuple[int, str], Path]:
    """{(layer, kind): store folder}, in the fixed commit order."""
    return {(layer, kind): out_dir / f"layer_{layer}" / kind for layer in layers for kind in kinds}


def scan_counts(source: CountSource, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the matrix: refuse non-counts, and return per cell ([n_cells] int64 each) the sequence
    length in gene tokens and the number of expressed model genes."""
    n_tokens = np.zeros(source.n_cells, np.int64)
    n_expressed = np.zeros(source.n_cells, np.int64)
    any_counts = False
    for start in range(0, source.n_cells, SCAN_ROWS):
        counts = source.rows(start, min(start + SCAN_ROWS, source.n_cells))
        any_counts |= counts.nnz > 0
        n_tokens[start : start + counts.shape[0]] = tokenizer.n_genes(counts)
        n_expressed[start : start + counts.shape[0]] = tokenizer.plan.n_expressed(counts)
    if not any_counts:
        raise ExtractError(f"{source.path}: the count matrix ({source.counts_layer}) is all zeros: no counts")
    if not n_expressed.any():
        raise ExtractError(
            f"{source.path}: no cell expresses any of the {tokenizer.plan.n_genes} genes the model knows; check "
            "gene_column and counts_layer"
        )
    return n_tokens, n_expressed


def _refuse(where: Path, diffs: list[str]) -> ExtractError:
    return ExtractError(
        f"{where} holds an extraction that differs from this one in {len(diffs)} field(s): {'; '.join(diffs)}; "
        "nothing was changed; pass overwrite=True (--overwrite) to replace it, or choose another out_dir"
    )


def check_existing(out_dir: Path, paths: dict, sources: dict, common: dict) -> None:
    """Refuse (ExtractError naming the differing fields) when the index or any existing store of `out_dir`
    belongs to another extraction; reads only, so a refusal leaves everything as it was."""
    index = out_dir / INDEX_FILE
    if index.is_file():
        try:
            previous = json.loads(index.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ExtractError(f"{index} cannot be read ({err}); pass --overwrite to redo the extraction") from None
        diffs = differences(previous.get("source", {}), common, ignore=NOT_COMPARED)
        if diffs:
            raise _refuse(out_dir, diffs)
    for key, path in paths.items():
        if not (path / "manifest.json").is_file():
            continue
        try:
            manifest = read_manifest(path)
        except StoreError as err:
            raise ExtractError(f"cannot open store {path}: {err}") from None
        diffs = differences(manifest.source, sources[key], ignore=NOT_COMPARED)
        if diffs:
            raise _refuse(path, diffs)


class _Stores:
    """The writers of one extraction, opened (resume) or created, and how far each one has committed.

    Each store's gene table (`genes.tsv`, the model's token id -> gene table) is written before its writer
    is created or opened, so it lands before the commit that makes the store complete."""

    def __init__(self, paths: dict, sources: dict, d_model: int, config: ExtractConfig, n_cells: int,
                 genes: pd.DataFrame):
        self.n_cells = n_cells
        self.writers = {}
        self.cells_done = {}
        for key, path in paths.items():
            write_genes(path, genes)
            if (path / "manifest.json").is_file() and not config.overwrite:
                writer = StoreWriter.open(path)
            else:
                writer = StoreWriter.create(
                    path, d_model=d_model, dtype=config.store_dtype, shard_rows=config.shard_rows,
                    chunk_rows=config.chunk_rows, source=sources[key], overwrite=True,
                    progress=self.progress(0),
                )
            self.writers[key] = writer
            self.cells_done[key] = int(writer.progress.get("cells_done", 0))

    def progress(self, cells_done: int) -> dict:
        return {"cells_done": cells_done, "cells_total": self.n_cells}

    def commit(self, cells_done: int) -> None:
        for key, writer in self.writers.items():  # fixed order: dict order of store_paths
            if self.cells_done[key] < cells_done:
                writer.commit(progress=self.progress(cells_done))
                self.cells_done[key] = cells_done

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def forward_batch(model: ExtractModel, batch: Batch, layers: list[int], config: ExtractConfig) -> dict[int, torch.Tensor]:
    """{layer: [B, L, d] hidden states} of one batch (residual stream after each requested block; the blocks
    after the deepest requested one are not run)."""
    device = model.device
    ids = torch.from_numpy(batch.input_ids).to(device)
    mask = torch.from_numpy(batch.attention_mask).to(device)
    values = torch.from_numpy(batch.values).to(device) if batch.values is not None else None
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.compute_dtype == "bfloat16")
    with torch.inference_mode(), autocast:
        return model.hidden_states(ids, values, mask, layers)


def write_batch(stores: _Stores, batch: Batch, hidden: dict[int, torch.Tensor], window_end: int, has_cls: bool) -> None:
    """Append the batch's token rows and cell embeddings to every store that still needs this window."""
    rows_b, rows_pos = np.nonzero(batch.token_rows)
    token_meta = {
        "cell_index": batch.cell_index[rows_b],
        "token_id": batch.input_ids[rows_b, rows_pos],
        "position": rows_pos.astype(np.int64),
    }
    n_cells = len(batch.cell_index)
    cell_meta = {"cell_index": batch.cell_index}
    cls_meta = {**cell_meta, "token_id": batch.input_ids[:, 0], "position": np.zeros(n_cells, np.int64)}
    pool = (batch.gene_mask / batch.gene_mask.sum(1, keepdims=True)).astype(np.float32)  # [B, L] pooling weights
    for layer in sorted({layer for layer, _ in stores.writers}):
        pending = [kind for (lyr, kind) in stores.writers if lyr == layer
                   and stores.cells_done[(lyr, kind)] < window_end and (kind != "cell_cls" or has_cls)]
        if not pending:
            continue
        states = hidden[layer].float().cpu().numpy()  # [B, L, d]; one device->host copy per layer
        for kind in pending:
            writer = stores.writers[(layer, kind)]
            if kind == "tokens":
                writer.append(states[rows_b, rows_pos], **token_meta)
            elif kind == "cell_mean":
                writer.append(np.einsum("bl,bld->bd", pool, states), **cell_meta)
            else:
                writer.append(states[:, 0], **cls_meta)


def extract(
    adata_path: str | Path,
    model_path: str | Path,
    out_dir: str | Path,
    layers: list[int] | tuple[int, ...] = (-1,),
    config: ExtractConfig | None = None,
    **options,
) -> dict[int, Path]:
    """Extract activations of `layers` for every cell of `adata_path` into stores under `out_dir`.

    adata_path: .h5ad with raw integer counts. model_path: a Geneformer or scGPT model folder. layers:
    block indices (layer L = residual stream after block L; negative counts from the end). options: fields
    of `ExtractConfig` (or pass `config`). Returns {layer: path of its token store}. Reruns with the same
    inputs (matched by content, not path) resume an interrupted extraction; a finished one is returned as is.
    Raises ExtractError before writing anything when the input cannot work, when out_dir holds another
    extraction, or when another extraction is running there; a failed write (e.g. a full disk) is an
    ExtractError too, and the stores keep their last commit for the rerun.
    """
    config = config or ExtractConfig(**options)
    out_dir = Path(out_dir)
    if not Path(model_path).is_dir():
        raise ExtractError(f"model folder {model_path} does not exist (or is not a folder); pass the folder that "
                           "holds the model (Geneformer: config.json + weights; scGPT: args.json, vocab.json, "
                           "best_model.pt)")
    with CountSource(adata_path, config.counts_layer) as source:  # AnnData problems surface before the model loads
        geneformer_files = {
            k: getattr(config, k) for k in ("token_dictionary", "gene_median_dictionary", "gene_name_dictionary")
            if getattr(config, k) is not None
        }
        model = load_model(model_path, device=config.device, **geneformer_files)
        layers = model.check_layers(list(layers))
        full_counts = source.rows(0, source.n_cells) if model.kind == "scgpt" and _wants_hvg(model, config) else None
        tokenizer = model.make_tokenizer(source.var, counts=full_counts, **config.tokenizer_options())
        del full_counts
        n_tokens, n_expressed = scan_counts(source, tokenizer)
        skipped = np.flatnonzero(n_expressed == 0)
        has_cls = getattr(model, "cls_token_id", None) is not None
        kinds = ["tokens"] + (["cell_mean"] + (["cell_cls"] if has_cls else []) if config.cell_embeddings else [])
        common = {
            **model.describe(),
            "tokenizer": tokenizer.settings(),
            "adata": {"path": str(Path(adata_path).resolve()), "sha256": sha256_file(adata_path),
                      "obs_names_sha256": obs_names_sha256(source.obs_names()),
                      "n_cells": source.n_cells, "counts_layer": source.counts_layer,
                      "n_cells_skipped": int(len(skipped))},
            "extraction": {"cells_per_commit": config.cells_per_commit, "batch_size": config.batch_size,
                           "include_special_tokens": config.include_special_tokens,
                           "compute_dtype": config.compute_dtype},
        }
        paths = store_paths(out_dir, layers, kinds)
        sources = {(layer, kind): {**common, "layer": layer, "kind": kind} for layer, kind in paths}
        result = {layer: paths[(layer, "tokens")] for layer in layers}
        with ExtractionLock(out_dir):
            if not config.overwrite:
                check_existing(out_dir, paths, sources, common)
                if _finished(out_dir, layers, kinds):
                    return result
            if len(skipped):
                log.warning(f"skipping {len(skipped)} of {source.n_cells} cells with no expressed model gene "
                            f"(listed in {out_dir / SKIPPED_FILE})")
            try:
                (out_dir / INDEX_FILE).unlink(missing_ok=True)
                write_atomic(out_dir / SKIPPED_FILE, json.dumps({"reason": "no expressed model gene",
                                                                 "cell_index": skipped.tolist()}, indent=2))
                stores = _Stores(paths, sources, model.d_model, config, source.n_cells, model.gene_table())
                _run_windows(model, tokenizer, source, stores, layers, n_tokens, n_expressed, config, has_cls)
                stores.close()
                write_atomic(out_dir / INDEX_FILE, json.dumps({
                    "complete": True, "layers": layers, "kinds": kinds, "source": common,
                    "stores": {f"{layer}/{kind}": str(path) for (layer, kind), path in paths.items()},
                }, indent=2, default=str))
            except (OSError, StoreWriteError) as err:
                reason = err.reason if isinstance(err, StoreWriteError) else str(err)
                raise ExtractError(
                    f"writing the stores under {out_dir} failed ({reason}); each store keeps its last commit and "
                    f"none is marked complete; free disk space (or fix the cause), then rerun the same jaxsae "
                    "extract command: it resumes where the stores stopped"
                ) from err
            except StoreError as err:  # e.g. non-finite activations, refused by the writer before buffering
                raise ExtractError(
                    f"storing the activations under {out_dir} failed: {err}; the stores keep their last commit and "
                    "none is marked complete"
                ) from err
    return result


def _finished(out_dir: Path, layers: list[int], kinds: list[str]) -> bool:
    """Whether out_dir's index says a finished extraction (already checked to match) covers these layers/kinds."""
    index = out_dir / INDEX_FILE
    if not index.is_file():
        return False
    previous = json.loads(index.read_text())
    return bool(previous.get("complete")) and set(layers) <= set(previous.get("layers", [])) \
        and previous.get("kinds") == kinds


def _wants_hvg(model, config: ExtractConfig) -> bool:
    return bool(model.n_hvg if config.n_hvg == "args" else config.n_hvg)


class _Writer:
    """Runs `write_batch` and the commits on one background thread, in submission order, so host-side row
    gathering and store writes overlap the next forward passes. At most `max_pending` tasks wait (each holds
    one batch's hidden states); the first failure is raised in the caller's thread on its next call.
    Crash safety is unchanged: a window's commit runs only after all of its batches were appended."""

    def __init__(self, max_pending: int = 2):
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract-write")
        self._pending: collections.deque = collections.deque()
        self._max_pending = max_pending
        self._failed = False  # set by the worker: once a task failed, later ones (a commit!) must not run

    def _run(self, fn, *args) -> None:
        if self._failed:
            raise ExtractError("skipped: an earlier store write of this extraction failed")
        try:
            fn(*args)
        except BaseException:
            self._failed = True
            raise

    def submit(self, fn, *args) -> None:
        self._pending.append(self._pool.submit(self._run, fn, *args))
        while len(self._pending) > self._max_pending or (self._pending and self._pending[0].done()):
            self._pending.popleft().result()

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Wait for what was submitted (a window whose batches were all appended still commits)."""
        self._pool.shutdown(wait=True)


def _run_windows(model, tokenizer, source, stores: _Stores, layers, n_tokens, n_expressed, config, has_cls):
    from tqdm.auto import tqdm

    window = config.cells_per_commit
    start = min(stores.cells_done.values())
    if start % window and start != source.n_cells:
        raise ExtractError(f"stores were committed at cell {start}, not a multiple of cells_per_commit={window}")
    pad_value = getattr(tokenizer, "pad_value", 0.0)
    bar = tqdm(total=source.n_cells, initial=start, unit="cell", desc="extract", disable=not config.progress_bar,
               dynamic_ncols=True)
    writer = _Writer()
    try:
        for lo in range(start, source.n_cells, window):
            hi = min(lo + window, source.n_cells)
            cells = lo + np.flatnonzero(n_expressed[lo:hi] > 0)
            counts = source.rows(lo, hi)[cells - lo]
            tokens = tokenizer(counts, cells)
            order = np.lexsort((cells, -n_tokens[cells]))
            for b in range(0, len(order), config.batch_size):
                batch = make_batch(tokens, order[b : b + config.batch_size], cells, model.pad_token_id, pad_value,
                                   config.include_special_tokens)
                hidden = forward_batch(model, batch, layers, config)
                writer.submit(write_batch, stores, batch, hidden, hi, has_cls)
                bar.update(len(batch.cell_index))
            writer.submit(stores.commit, hi)
            bar.update(hi - lo - len(cells))
        writer.drain()
    finally:
        writer.close()
        bar.close()
