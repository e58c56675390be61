"""Benchmark: extraction throughput (cells/s, tokens/s) vs a bare forward pass of the same model on the same
batches, and the per-token cost that sizes an atlas-scale run.

    python experiments/bench_extract.py [--cells 500] [--genes 2000] [--n-layers 6] [--d-model 256] [--layers 1,2]
        [--batch-size N] [--tokens-per-batch 8192] [--lengths poisson|lognormal] [--median-genes 600]
        [--census-cells 50000000] [--census-tokens-per-cell 600] [--census-devices 8]
    python experiments/bench_extract.py --compare-batch-size 16 --lengths lognormal --cells 300 --layers 4

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

Per token (gene-token rows, the unit of the token stores): the best extraction's wall time split into the
forward passes and the rest of the extract() call (model load, scan, tokenisation, row gathering, store writes
and commits: work that stays on the host CPU when the forward pass runs on a GPU). The census line scales this
run's per-token costs to --census-cells x --census-tokens-per-cell tokens on --census-devices devices like this
one: a paper estimate (forward cost grows with the model's width and depth; the README extrapolates to GPUs),
not a run.

--compare-batch-size N: instead, fixed batches of N cells (tokens_per_batch None) against the token budget
(--tokens-per-batch, --batch-size as its cap), whole extract() calls in interleaved rounds (A B, then B A):
cells/s and tokens/s of each, the ratio per round, and each batching's padding fraction (padded positions /
all positions of the batches it builds). --lengths lognormal gives cells the spread of real data (expressed
genes per cell log-normal, median --median-genes, sigma 0.5, clipped to [200, 6000]); poisson gives every cell
about the same length.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from extract.counts import CountSource
from extract.models import load_model
import extract.windows as extract_windows
from bench_extract_memory import write_sparse_h5ad
from extract.run import ExtractConfig, extract
from extract.windows import batch_cuts, forward_batch, make_batch
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
    """The batches extraction builds: windows of cells_per_commit, sorted by length, cut by `batch_cuts`."""
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
            lengths = np.array([len(tokens.input_ids[m]) for m in order], np.int64)
            for members in batch_cuts(lengths, config.tokens_per_batch, config.batch_size):
                batches.append(make_batch(tokens, order[members], cells, model.pad_token_id, 0.0, False))
    return batches


def padding_fraction(batches) -> float:
    """Padded positions / all positions of the batches."""
    return 1 - sum(int(b.attention_mask.sum()) for b in batches) / sum(b.attention_mask.size for b in batches)


def compare_batching(model, adata_path, model_dir, layers, budget: ExtractConfig, fixed_size: int, rounds: int,
                     work: Path) -> None:
    """Fixed batches of fixed_size cells vs `budget`'s batching: whole extract() calls, interleaved rounds."""
    configs = {"fixed": dataclasses.replace(budget, batch_size=fixed_size, tokens_per_batch=None),
               "budget": budget}
    shapes = {name: prepare_batches(model, adata_path, config) for name, config in configs.items()}
    n_cells = sum(len(b.cell_index) for b in shapes["fixed"])
    n_tokens = int(sum(b.gene_mask.sum() for b in shapes["fixed"]))
    for name, batches in shapes.items():
        sizes = [len(b.cell_index) for b in batches]
        padded = [b.attention_mask.size for b in batches]
        print(f"{name:6}: {len(batches)} batches, {min(sizes)}-{max(sizes)} cells, {min(padded)}-{max(padded)} padded "
              f"tokens per batch, padding fraction {padding_fraction(batches):.3f}")
    walls = {name: [] for name in configs}
    for r in range(rounds):
        for name in (("fixed", "budget") if r % 2 == 0 else ("budget", "fixed")):
            out = work / f"compare_{name}"
            started = time.perf_counter()
            extract(adata_path, model_dir, out, layers=layers, config=configs[name])
            walls[name].append(time.perf_counter() - started)
            shutil.rmtree(out)
        line = "   ".join(f"{name} {n_cells / wall[-1]:6.1f} cells/s {n_tokens / wall[-1]:7.0f} tokens/s"
                          for name, wall in walls.items())
        print(f"round {r}: {line}   budget/fixed throughput {walls['fixed'][-1] / walls['budget'][-1]:.3f}")
    ratios = [f / b for f, b in zip(walls["fixed"], walls["budget"])]
    print(f"budget/fixed throughput: median {np.median(ratios):.3f}, rounds {[f'{x:.3f}' for x in ratios]} "
          f"({n_cells} cells, {n_tokens} gene tokens, {budget.tokens_per_batch} tokens per batch vs {fixed_size} cells)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--mean-count", type=float, default=0.1, help="mean Poisson rate scale per gene")
    parser.add_argument("--n-layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", default="1,2", help="layers extracted (comma-separated)")
    parser.add_argument("--batch-size", type=int, default=None, help="cells per batch at most (default: no cap)")
    parser.add_argument("--tokens-per-batch", type=int, default=ExtractConfig.tokens_per_batch,
                        help="padded tokens per batch (0: none, fixed batches of --batch-size)")
    parser.add_argument("--lengths", choices=("poisson", "lognormal"), default="poisson")
    parser.add_argument("--median-genes", type=int, default=600, help="with --lengths lognormal")
    parser.add_argument("--compare-batch-size", type=int, default=None,
                        help="compare fixed batches of this many cells with the token budget (see above)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compute-dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--census-cells", type=float, default=50e6, help="cells of the atlas-scale estimate")
    parser.add_argument("--census-tokens-per-cell", type=float, default=600)
    parser.add_argument("--census-devices", type=int, default=8, help="workers (one device each) of the estimate")
    args = parser.parse_args()
    layers = [int(x) for x in args.layers.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        genes = [f"ENSG{n:011d}" for n in range(args.genes)]
        if args.lengths == "poisson":
            adata_path = write_counts_h5ad(work / "cells.h5ad", args.cells, genes, mean=args.mean_count, seed=1)
        else:
            adata_path = work / "cells.h5ad"
            write_sparse_h5ad(adata_path, args.cells, genes, args.median_genes, seed=1)
        model_dir = write_geneformer_folder(work / "model", genes, n_layers=args.n_layers, d_model=args.d_model,
                                            n_heads=4, d_ff=2 * args.d_model, max_positions=2048)
        config = ExtractConfig(batch_size=args.batch_size, tokens_per_batch=args.tokens_per_batch or None,
                               device=args.device, compute_dtype=args.compute_dtype, progress_bar=False)
        model = load_model(model_dir, device=args.device)
        if args.compare_batch_size:
            compare_batching(model, adata_path, model_dir, layers, config, args.compare_batch_size, args.repeats, work)
            return
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
        forward_times, whole_times, extract_times, outside_share, forward_share = [], [], [], [], []
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
            forward_share.append(in_forward[0] / extract_times[-1][0])
            shutil.rmtree(out)
        forward_s, forward_cpu = (min(t[i] for t in forward_times) for i in (0, 1))
        whole_s, whole_cpu = (min(t[i] for t in whole_times) for i in (0, 1))
        extract_s, extract_cpu = (min(t[i] for t in extract_times) for i in (0, 1))
        print(f"device={model.device} cells={n_cells} gene tokens={n_tokens} (mean {n_tokens / n_cells:.0f}/cell) "
              f"model: {args.n_layers} layers, d={args.d_model}; layers extracted {layers};\n"
              f"batch {args.batch_size} cells, "
              f"{config.tokens_per_batch} tokens; padding fraction {padding_fraction(batches):.3f}")
        for name, wall, cpu in (("bare forward, whole model  ", whole_s, whole_cpu),
                                ("bare forward, needed blocks", forward_s, forward_cpu),
                                ("extraction                 ", extract_s, extract_cpu)):
            print(f"{name}: wall {wall:7.2f} s  {n_cells / wall:8.1f} cells/s  {n_tokens / wall:9.0f} tokens/s   "
                  f"cpu {cpu:7.2f} s")
        print(f"extraction / whole-model forward: wall {extract_s / whole_s:.3f}, cpu {extract_cpu / whole_cpu:.3f}")
        print(f"extraction / needed-blocks forward: wall {extract_s / forward_s:.3f} (overhead {100 * (extract_s / forward_s - 1):+.1f}%), "
              f"cpu {extract_cpu / forward_cpu:.3f} (overhead {100 * (extract_cpu / forward_cpu - 1):+.1f}%)")
        print(f"inside extraction: total / forward-pass time = {1 + min(outside_share):.3f} "
              f"(overhead {100 * min(outside_share):+.1f}%; all runs: {[f'{100 * x:+.1f}%' for x in outside_share]})")
        best = int(np.argmin([t[0] for t in extract_times]))
        per_token = extract_s / n_tokens
        host = per_token * (1 - forward_share[best])
        print(f"per token: {1e6 * per_token:.2f} us ({len(layers)} layers), of which forward passes "
              f"{1e6 * (per_token - host):.2f} us, the rest of extract() (load, scan, tokenise, gather, write) {1e6 * host:.2f} us")
        census = args.census_cells * args.census_tokens_per_cell
        hours = census * per_token / 3600 / args.census_devices
        print(f"census estimate: {args.census_cells:.3g} cells x {args.census_tokens_per_cell:.0f} tokens = "
              f"{census:.3g} tokens on {args.census_devices} x {model.device.type}: {hours:,.1f} h at this model's "
              f"per-token cost (host-side part alone: {census * host / 3600 / args.census_devices:,.1f} h); token "
              f"stores {census * args.d_model * 4 / 1e12:,.1f} TB per layer in float32 at d={args.d_model}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
