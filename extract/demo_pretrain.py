"""Seeded, step-limited pretraining of the demo models on pbmc68k_reduced, with a held-out evaluation.

`python -m extract.demo_pretrain {geneformer,scgpt} OUT_DIR [--steps N]` writes the weight files that
`extract.demo` ships (geneformer: config.json + model.safetensors; scgpt: args.json + best_model.pt) and
`pretraining.json` (settings, seed, steps, seconds, train and held-out losses with their baselines, the
vocabulary hash, torch version). The committed weights in `extract/demo_weights/` were produced this way.

Both models are built, saved and loaded back through the public loaders before training, and they train on
cells tokenised by the loaded model's own tokeniser with extraction's defaults, so pretraining sees exactly
what `jaxsae extract` feeds them (full cells, no crops):
  * geneformer: <cls> + rank-value encoded genes + <eos>, positions 0..L-1. Objective: BERT masked-gene
    prediction on 15% of gene tokens (80% <mask>, 10% random gene, 10% kept). Held-out metric: cross-entropy
    of the masked genes, all replaced by <mask>; chance = ln(number of gene tokens).
  * scgpt: <cls> + the cell's expressed genes in var order with binned values (scGPT's binning, n_bins 51,
    re-binned every epoch with a new tie-breaking seed as scGPT's collator does). Objective: scGPT's GEP,
    the expression decoder's MSE on values masked (set to mask_value -1) at ratio 0.4, plus MVC (the
    inner-product head predicting the masked values from the <cls> embedding), summed as scGPT does.
    Held-out metric: GEP MSE of masked values (binning seed 0, as extraction); baselines: each held-out
    cell's mean of its unmasked values (the main one) and the training cells' global mean value.
The 700 cells are split by a seeded permutation into 15% held out and 85% training cells. Held-out masks
come from generators seeded by (seed, 1, AnnData row), so every evaluation masks the same tokens.

Determinism: torch and numpy generators are seeded, torch runs with a fixed number of threads and
`torch.use_deterministic_algorithms(True)` (both restored afterwards); two runs on the same machine give
bitwise-equal weights (`platform_fingerprint()` is recorded). Elsewhere (other SIMD kernels, other
summation orders) the weights come out different, not close: training is chaotic; perturbing the initial
weights by 1e-6 (relative) changed the final weights by a median 66% (Geneformer) / 27% (scGPT) of their
norm and the held-out metric by 0.6% / 8.6% (experiments/RESULTS.md), so only the metric reproduces.

PERFORMANCE (2 CPU cores shared with other jobs): one torch thread. A Geneformer step of 16 full cells
(~4,500 tokens) took 0.68 s on one thread and 3.2-3.6 s on two while other processes held the cores (two
threads wait on each other). Batches are drawn per epoch from groups of 4 batches sorted by length, so
padding stays small (cells have 183-409 genes), and the MLM head runs on the masked tokens only. The
committed runs took 793 s (Geneformer, 500 steps) and 550 s (scGPT, 500 steps) of wall time on a busy
machine.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import tempfile
import time
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import torch

from extract.demo import MODEL_KINDS, RECORD_FILE, WEIGHT_FILES, pbmc_counts, write_vocabulary
from extract.errors import ExtractError
from extract.pretraining.common import PretrainConfig, deterministic_torch, split_cells
from extract.pretraining.geneformer import evaluate_geneformer, new_geneformer_folder, train_geneformer
from extract.pretraining.scgpt import evaluate_scgpt, global_mean_mse, new_scgpt_folder, train_scgpt




def evaluate(model, adata, config: PretrainConfig, *, train_cells_too: bool = True) -> dict:
    """Held-out metrics of a loaded demo model, with the masks every evaluation uses; train_cells_too: also the
    same metric on the training cells (`train_cells_loss` / `train_cells_mse`, shows overfitting)."""
    from extract.tokenize import as_count_rows

    train_cells, heldout_cells = split_cells(adata.n_obs, config.heldout_fraction, config.seed)
    counts = as_count_rows(adata.X)
    tokenizer = model.make_tokenizer(adata.var)  # extraction's defaults (binning seed 0 for scGPT)
    heldout_tokens = tokenizer(counts[heldout_cells], heldout_cells)
    train_tokens = tokenizer(counts[train_cells], train_cells)
    if config.model_kind == "geneformer":
        heldout = evaluate_geneformer(model, heldout_tokens.input_ids, heldout_cells, config)
        n_genes = sum(1 for g in model.dictionaries.token_ids if not g.startswith("<"))
        chance = math.log(n_genes)
        metrics = {"heldout_loss": heldout, "chance_loss": chance, "ratio_to_chance": heldout / chance}
        if train_cells_too:
            metrics["train_cells_loss"] = evaluate_geneformer(model, train_tokens.input_ids, train_cells, config)
        return metrics
    heldout = evaluate_scgpt(model, heldout_tokens, heldout_cells, config)
    metrics = {"heldout_mse": heldout["mse"], "baseline_cell_mean_mse": heldout["baseline_cell_mean"],
               "ratio_to_baseline": heldout["mse"] / heldout["baseline_cell_mean"],
               "baseline_global_mean_mse": global_mean_mse(train_tokens, heldout_tokens, heldout_cells, config)}
    if train_cells_too:
        metrics["train_cells_mse"] = evaluate_scgpt(model, train_tokens, train_cells, config)["mse"]
    return metrics


def pretrain(out_dir: str | Path, config: PretrainConfig, *, evaluate_model: bool = True) -> dict:
    """Pretrain the demo model of `config.model_kind` from its seed; write its weight files and
    pretraining.json into `out_dir`; returns the record. evaluate_model=False skips the evaluation (record
    `heldout` is None), for quick determinism checks."""
    from extract.models import load_model
    from extract.tokenize import as_count_rows

    out_dir = Path(out_dir)
    adata = pbmc_counts()
    counts = as_count_rows(adata.X)
    train_cells, _ = split_cells(adata.n_obs, config.heldout_fraction, config.seed)
    with deterministic_torch(config.n_threads), tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        digest = write_vocabulary(config.model_kind, folder, adata)
        if config.model_kind == "geneformer":
            n_tokens = 4 + adata.n_vars
            new_geneformer_folder(folder, config, n_tokens)
        else:
            vocab = json.loads((folder / "vocab.json").read_text())
            new_scgpt_folder(folder, config, len(vocab), vocab["<pad>"])
        model = load_model(folder)  # trained exactly as loaded for extraction
        started = time.perf_counter()
        if config.model_kind == "geneformer":
            tokens = model.make_tokenizer(adata.var)(counts[train_cells], train_cells)
            if max(len(s) for s in tokens.input_ids) > config.max_length:
                raise ExtractError(f"a training cell is longer than max_length={config.max_length}")
            losses = train_geneformer(model, tokens.input_ids, config)
        else:
            losses = train_scgpt(model, counts[train_cells], train_cells, adata.var, config)
        seconds = time.perf_counter() - started
        metrics = evaluate(model, adata, config) if evaluate_model else None
        out_dir.mkdir(parents=True, exist_ok=True)
        if config.model_kind == "geneformer":
            model.module.save_pretrained(out_dir)
        else:
            torch.save(model.module.state_dict(), out_dir / "best_model.pt")
            (out_dir / "args.json").write_text((folder / "args.json").read_text())
    tail = max(1, len(losses) // 20)
    record = {
        "model_kind": config.model_kind, "config": asdict(config), "seed": config.seed, "steps": len(losses),
        "seconds": round(seconds, 1), "train_loss_first": float(np.mean(losses[:tail])),
        "train_loss_last": float(np.mean(losses[-tail:])), "heldout": metrics,
        "n_train_cells": len(train_cells), "n_heldout_cells": adata.n_obs - len(train_cells),
        "vocabulary_sha256": digest, "torch_version": torch.__version__, "platform": platform_fingerprint(),
        "command": f"python -m extract.demo_pretrain {config.model_kind} OUT_DIR --steps {config.steps}",
    }
    (out_dir / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def platform_fingerprint() -> dict:
    """What decides the CPU kernels, hence the bits of a rerun: machine, torch build, SIMD level torch uses."""
    return {"machine": platform.machine(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def evaluate_folder(model_dir: str | Path, *, train_cells_too: bool = False) -> dict:
    """Fresh held-out metrics of an assembled demo model folder, with the settings of its pretraining.json."""
    from extract.models import load_model

    record = json.loads((Path(model_dir) / RECORD_FILE).read_text())
    config = PretrainConfig(**record["config"])
    with deterministic_torch(config.n_threads):
        return evaluate(load_model(model_dir), pbmc_counts(), config, train_cells_too=train_cells_too)


def main(argv: list[str] | None = None) -> None:
    """python -m extract.demo_pretrain KIND OUT_DIR: pretrain a demo model from its seed."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m extract.demo_pretrain", description=main.__doc__)
    parser.add_argument("model_kind", choices=MODEL_KINDS)
    parser.add_argument("out_dir")
    overridable = {f.name: f.type for f in fields(PretrainConfig) if f.name != "model_kind"}
    for name, kind in overridable.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float if kind == "float" else int)
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = {k: args[k] for k in overridable if args[k] is not None}
    record = pretrain(args["out_dir"], PretrainConfig.for_kind(args["model_kind"], **overrides))
    print(json.dumps({k: record[k] for k in ("steps", "seconds", "train_loss_first", "train_loss_last", "heldout")},
                     indent=2))
    print(f"weights: {[str(Path(args['out_dir']) / n) for n in WEIGHT_FILES[args['model_kind']]]}")


if __name__ == "__main__":
    main()
