"""Benchmark: extraction throughput (cells/s) vs a bare forward pass of the same model on the same batches.

    python experiments/bench_extract.py [--cells 500] [--genes 2000] [--n-layers 6] [--d-model 256] [--layers 1,2]

Both sides run in this process on the same random Geneformer (saved and loaded through the public loader)
and the same cells. Two baselines, each the bare `model.encode` (embeddings + blocks, no MLM head) under
inference mode on tokenised batches built beforehand (same length-sorted windows and batch size as
extraction):
  * "needed blocks": the model cut after the deepest extracted layer, the least work that yields the
    activations. Overhead = extraction time / this time - 1 (target <= 10%).
  * "whole model": every block, what `output_hidden_states=True` costs; extraction stops after the deepest
    extracted layer, so it can be faster than this.
Extraction is the whole `extract()` call: model load, counts scan, AnnData hash, tokenisation, hooks on the
chosen layers, row gathering and store writes/commits. Times are wall and CPU time of this process (all
threads; robust when other processes share the machine). Each side runs --repeats times, interleaved; the
best of each is reported. Last line: inside the same extraction runs, total time / time spent in the forward
passes (hooks included): the overhead measured without comparing separate runs.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from extract.counts import CountSource
from extract.models import load_model
import extract.windows as extract_windows
from extract.run import ExtractConfig, extract
from extract.windows import forward_batch, make_batch
from extract.testing import write_counts_h5ad, write_geneformer_folder


def clocks() -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads)."""
    return time.perf_counter(), time.process_time()


@contextlib.contextmanager
def blocks_up_to(model, deepest: int):
    """The Geneformer model with its encoder cut after block `deepest` (restored on exit)."""
    encoder = model.module.bert.encoder
    every_block = encoder.layer
    encoder.layer = torch.nn.ModuleList(list(every_block)[: deepest + 1])
    try:
        yield model
    finally:
        encoder.layer = every_block


def bare_forward(model, batches, config) -> tuple[float, float]:
    started = clocks()
    for batch in batches:
        ids = torch.from_numpy(batch.input_ids).to(model.device)
        mask = torch.from_numpy(batch.attention_mask).to(model.device)
        autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=config.compute_dtype == "bfloat16")
        with torch.inference_mode(), autocast:
            out = model.encode(ids, None, mask)
        float(out[0, 0, 0])  # wait for the device
    return tuple(b - a for a, b in zip(started, clocks()))


def prepare_batches(model, adata_path, config):
    """The batches extraction builds: windows of cells_per_commit, sorted by length, batch_size cells each."""
    batches = []
    with CountSource(adata_path) as source:
        tokenizer = model.make_tokenizer(source.var)
        for lo in range(0, source.n_cells, config.cells_per_commit):
            hi = min(lo + config.cells_per_commit, source.n_cells)
            counts = source.rows(lo, hi)
            keep = np.flatnonzero(tokenizer.plan.n_expressed(counts) > 0)
            cells = lo + keep
            tokens = tokenizer(counts[keep], cells)
            order = np.lexsort((cells, -tokenizer.n_genes(counts[keep])))
            for b in range(0, len(order), config.batch_size):
                batches.append(make_batch(tokens, order[b : b + config.batch_size], cells, model.pad_token_id, 0.0, False))
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--mean-count", type=float, default=0.1, help="mean Poisson rate scale per gene")
    parser.add_argument("--n-layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", default="1,2", help="layers extracted (comma-separated)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compute-dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        genes = [f"ENSG{n:011d}" for n in range(args.genes)]
        adata_path = write_counts_h5ad(work / "cells.h5ad", args.cells, genes, mean=args.mean_count, seed=1)
        model_dir = write_geneformer_folder(work / "model", genes, n_layers=args.n_layers, d_model=args.d_model,
                                            n_heads=4, d_ff=2 * args.d_model, max_positions=2048)
        config = ExtractConfig(batch_size=args.batch_size, device=args.device, compute_dtype=args.compute_dtype,
                               progress_bar=False)
        model = load_model(model_dir, device=args.device)
        batches = prepare_batches(model, adata_path, config)
        n_cells = sum(len(b.cell_index) for b in batches)
        n_tokens = int(sum(b.gene_mask.sum() for b in batches))
        forward_batch(model, batches[0], layers, config)  # warm-up
        in_forward = [0.0]

        def timed_forward(*a):
            started = time.perf_counter()
            hidden = forward_batch(*a)
            for states in hidden.values():
                float(states[0, 0, 0])  # wait for the device
            in_forward[0] += time.perf_counter() - started
            return hidden

        extract_windows.forward_batch = timed_forward  # measures the forward share inside extraction runs
        forward_times, whole_times, extract_times, outside_share = [], [], [], []
        for repeat in range(args.repeats):  # interleaved, so load from other processes hits both sides alike
            with blocks_up_to(model, max(layers) % args.n_layers):
                forward_times.append(bare_forward(model, batches, config))
            whole_times.append(bare_forward(model, batches, config))
            out = work / f"out{repeat}"
            in_forward[0] = 0.0
            started = clocks()
            extract(adata_path, model_dir, out, layers=layers, config=config)
            extract_times.append(tuple(b - a for a, b in zip(started, clocks())))
            outside_share.append(extract_times[-1][0] / in_forward[0] - 1)
            shutil.rmtree(out)
        forward_s, forward_cpu = (min(t[i] for t in forward_times) for i in (0, 1))
        whole_s, whole_cpu = (min(t[i] for t in whole_times) for i in (0, 1))
        extract_s, extract_cpu = (min(t[i] for t in extract_times) for i in (0, 1))
        print(f"device={model.device} cells={n_cells} gene tokens={n_tokens} (mean {n_tokens / n_cells:.0f}/cell) "
              f"model: {args.n_layers} layers, d={args.d_model}; layers extracted {layers}; batch {args.batch_size}")
        print(f"bare forward, whole model  : wall {whole_s:7.2f} s  {n_cells / whole_s:8.1f} cells/s   "
              f"cpu {whole_cpu:7.2f} s")
        print(f"bare forward, needed blocks: wall {forward_s:7.2f} s  {n_cells / forward_s:8.1f} cells/s   "
              f"cpu {forward_cpu:7.2f} s")
        print(f"extraction                 : wall {extract_s:7.2f} s  {n_cells / extract_s:8.1f} cells/s   cpu {extract_cpu:7.2f} s "
              f"({len(layers)} token stores + cell stores)")
        print(f"extraction / whole-model forward: wall {extract_s / whole_s:.3f}, cpu {extract_cpu / whole_cpu:.3f}")
        print(f"extraction / needed-blocks forward: wall {extract_s / forward_s:.3f} (overhead {100 * (extract_s / forward_s - 1):+.1f}%), "
              f"cpu {extract_cpu / forward_cpu:.3f} (overhead {100 * (extract_cpu / forward_cpu - 1):+.1f}%)")
        print(f"inside extraction: total / forward-pass time = {1 + min(outside_share):.3f} "
              f"(overhead {100 * min(outside_share):+.1f}%; all runs: {[f'{100 * x:+.1f}%' for x in outside_share]})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
