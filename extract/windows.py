"""The extraction loop: windows of cells -> length-sorted padded batches -> forward passes -> store appends ->
one commit per window (the order and resume rules are in extract.run's docstring)."""

from __future__ import annotations

import collections
import concurrent.futures
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from extract.config import ExtractConfig
from extract.errors import ExtractError
from extract.models import ExtractModel
from extract.tokenize.genes import TokenizedCells
from jaxsae.store import StoreWriter
from jaxsae.store.genes import write_genes

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


def batch_cuts(lengths: np.ndarray, tokens_per_batch: int | None, batch_size: int | None) -> list[slice]:
    """Cut cells, kept in their order, into consecutive batches.

    lengths: [n] int64 model input lengths (special tokens included) in processing order. Greedy: a batch
    takes the next cell while (cells in it) x (its longest input, the padded length) stays <= tokens_per_batch
    and its cells <= batch_size (None: no such limit); a cell longer than the budget goes alone. Returns
    slices covering 0..n once, in order. In length-sorted order (longest first) the padded length is the
    first cell's, so a batch holds about tokens_per_batch // that length cells.
    """
    cuts, start, longest = [], 0, 0
    for i, length in enumerate(lengths.tolist()):
        longest = max(longest, length)
        cells = i - start + 1
        if cells > 1 and ((tokens_per_batch is not None and cells * longest > tokens_per_batch)
                          or (batch_size is not None and cells > batch_size)):
            cuts.append(slice(start, i))
            start, longest = i, length
    if start < len(lengths):
        cuts.append(slice(start, len(lengths)))
    return cuts


class Stores:
    """The writers of one extraction (or of one part of it), opened (resume) or created, and how far each one
    has committed.

    cells: the global cells [first, stop) these stores hold (all cells without --worker). part_progress: what a
    part's progress records besides cells_done / cells_total (its name and first cell; {} for a whole
    extraction). Each store's gene table (`genes.tsv`, the model's token id -> gene table) is written before its
    writer is created or opened, so it lands before the commit that makes the store complete."""

    def __init__(self, paths: dict, sources: dict, d_model: int, config: ExtractConfig, cells: range,
                 genes: pd.DataFrame, part_progress: dict):
        self.cells = cells
        self.part_progress = part_progress
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
                    progress=self.progress(cells.start),
                )
            self.writers[key] = writer
            self.cells_done[key] = int(writer.progress.get("cells_done", 0))

    def progress(self, cells_done: int) -> dict:
        return {"cells_done": cells_done, "cells_total": self.cells.stop, **self.part_progress}

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


@dataclass(frozen=True)
class HostStates:
    """A batch's hidden states on their way to the host: states {layer: [B, L, d] float32 CPU tensor}, readable
    once `ready` (a CUDA event, None off CUDA) has completed."""

    states: dict[int, torch.Tensor]
    ready: torch.cuda.Event | None


def to_host(hidden: dict[int, torch.Tensor]) -> HostStates:
    """Start moving {layer: [B, L, d]} hidden states to the host without waiting for them.

    On CUDA: each layer cast to float32 on the device, then copied into pinned host memory non-blocking on the
    current stream, with an event recorded after the copies, so the caller queues the next forward pass while
    the write thread waits on the event. This path is not exercised by the tests (no CUDA device here). Elsewhere:
    the tensors as float32 (no copy for float32 CPU tensors).
    """
    if next(iter(hidden.values())).device.type != "cuda":
        return HostStates({layer: states.float() for layer, states in hidden.items()}, None)
    pinned = {}
    for layer, states in hidden.items():
        pinned[layer] = torch.empty(states.shape, dtype=torch.float32, pin_memory=True)
        pinned[layer].copy_(states.float(), non_blocking=True)
    ready = torch.cuda.Event()
    ready.record()
    return HostStates(pinned, ready)


def write_batch(stores: Stores, batch: Batch, hidden: HostStates, window_end: int, has_cls: bool) -> None:
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
    if hidden.ready is not None:
        hidden.ready.synchronize()
    for layer in sorted({layer for layer, _ in stores.writers}):
        pending = [kind for (lyr, kind) in stores.writers if lyr == layer
                   and stores.cells_done[(lyr, kind)] < window_end and (kind != "cell_cls" or has_cls)]
        if not pending:
            continue
        states = hidden.states[layer].numpy()  # [B, L, d] float32
        for kind in pending:
            writer = stores.writers[(layer, kind)]
            if kind == "tokens":
                writer.append(states[rows_b, rows_pos], **token_meta)
            elif kind == "cell_mean":
                writer.append(np.einsum("bl,bld->bd", pool, states), **cell_meta)
            else:
                writer.append(states[:, 0], **cls_meta)


class Writer:
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


def run_windows(model, tokenizer, source, stores: Stores, layers, n_tokens, n_expressed, config, has_cls):
    """Extract the cells `stores.cells` not yet committed, window by window. n_tokens, n_expressed: [n_cells]
    int64 per global cell (see `extract.scan.scan_cells`)."""
    from tqdm.auto import tqdm

    window = config.cells_per_commit
    first, stop = stores.cells.start, stores.cells.stop
    start = min(stores.cells_done.values())
    if (start - first) % window and start != stop:
        raise ExtractError(f"stores were committed at cell {start}, not {first} + a multiple of "
                           f"cells_per_commit={window}")
    pad_value = getattr(tokenizer, "pad_value", 0.0)
    bar = tqdm(total=stop - first, initial=start - first, unit="cell", desc="extract",
               disable=not config.progress_bar, dynamic_ncols=True)
    writer = Writer()
    try:
        for lo in range(start, stop, window):
            hi = min(lo + window, stop)
            cells = lo + np.flatnonzero(n_expressed[lo:hi] > 0)
            counts = source.rows(lo, hi)[cells - lo]
            tokens = tokenizer(counts, cells)
            order = np.lexsort((cells, -n_tokens[cells]))
            lengths = np.array([len(tokens.input_ids[m]) for m in order], np.int64)
            for members in batch_cuts(lengths, config.tokens_per_batch, config.batch_size):
                batch = make_batch(tokens, order[members], cells, model.pad_token_id, pad_value,
                                   config.include_special_tokens)
                hidden = forward_batch(model, batch, layers, config)
                writer.submit(write_batch, stores, batch, to_host(hidden), hi, has_cls)
                bar.update(len(batch.cell_index))
            writer.submit(stores.commit, hi)
            bar.update(hi - lo - len(cells))
        writer.drain()
    finally:
        writer.close()
        bar.close()
