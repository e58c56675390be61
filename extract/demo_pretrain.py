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
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from extract.demo import MODEL_KINDS, RECORD_FILE, WEIGHT_FILES, check_kind, pbmc_counts, write_vocabulary
from extract.errors import ExtractError

MASK_STREAM = 1  # second seed word of the held-out masks
LOG_EVERY = 50
log = logging.getLogger("jaxsae.extract")


@dataclass(frozen=True)
class PretrainConfig:
    """Model and pretraining settings of one demo model (defaults: the committed weights).

    max_length: geneformer max_position_embeddings (the longest pbmc cell, 409 genes, + <cls> + <eos>);
    scgpt max_seq_len (409 genes + <cls>). mask_fraction: geneformer 0.15 (BERT), scgpt 0.4 (scGPT's
    mask_ratio). d_ff: the feed-forward width (geneformer intermediate_size, scgpt d_hid).
    """

    model_kind: str = "geneformer"
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 256
    max_length: int = 411
    n_bins: int = 51
    steps: int = 500
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    mask_fraction: float = 0.15
    heldout_fraction: float = 0.15
    seed: int = 0
    n_threads: int = 1

    def __post_init__(self):
        check_kind(self.model_kind)
        for name in ("n_layers", "d_model", "n_heads", "d_ff", "max_length", "steps", "batch_size", "n_threads"):
            if getattr(self, name) < 1:
                raise ExtractError(f"PretrainConfig.{name} must be >= 1, found {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ExtractError(f"PretrainConfig.d_model={self.d_model} must be a multiple of n_heads={self.n_heads}")
        for name in ("mask_fraction", "heldout_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise ExtractError(f"PretrainConfig.{name} must be in (0, 1), found {getattr(self, name)}")

    @classmethod
    def for_kind(cls, model_kind: str, **overrides) -> PretrainConfig:
        """The committed settings of `model_kind`, with `overrides`."""
        defaults = {"scgpt": {"max_length": 410, "mask_fraction": 0.4}}.get(check_kind(model_kind), {})
        return cls(model_kind=model_kind, **{**defaults, **overrides})


@contextmanager
def deterministic_torch(n_threads: int):
    """Fixed thread count and deterministic algorithms inside the block; the caller's settings after it."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(n_threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(strict)


def split_cells(n_cells: int, heldout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, heldout) sorted AnnData rows: a seeded permutation, the first round(f * n) held out."""
    order = np.random.default_rng(seed).permutation(n_cells)
    n_heldout = max(1, round(heldout_fraction * n_cells))
    return np.sort(order[n_heldout:]), np.sort(order[:n_heldout])


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches (indices into `lengths`): shuffled, sorted by length inside groups of 4 batches
    so padding stays small, batch order shuffled; a last incomplete batch is dropped."""
    order = rng.permutation(len(lengths))
    group = 4 * batch_size
    batches = []
    for start in range(0, len(order) - batch_size + 1, group):
        members = order[start:start + group]
        members = members[np.argsort(lengths[members], kind="stable")]
        batches += [members[i:i + batch_size] for i in range(0, len(members) - batch_size + 1, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def pad(rows: list[np.ndarray], value, dtype) -> torch.Tensor:
    """[B, max length] tensor of `rows`, right-padded with `value`."""
    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=dtype)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.from_numpy(np.asarray(row))
    return out


def heldout_mask(n_tokens: int, first: int, fraction: float, seed: int, cell: int) -> np.ndarray:
    """[first + n_tokens] bool: of the n_tokens gene positions that start at `first`, round(fraction x
    n_tokens) (at least 1) are True, drawn from a generator seeded by (seed, MASK_STREAM, cell)."""
    rng = np.random.default_rng([seed, MASK_STREAM, cell])
    chosen = rng.choice(n_tokens, max(1, round(fraction * n_tokens)), replace=False)
    mask = np.zeros(first + n_tokens, dtype=bool)
    mask[first + chosen] = True
    return mask


def cosine_schedule(config: PretrainConfig):
    """Linear warmup over warmup_steps, then cosine decay to 0 at `steps`."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ---------------------------------------------------------------------------------------------- Geneformer


def new_geneformer_folder(folder: Path, config: PretrainConfig, n_tokens: int) -> None:
    from extract.testing import new_geneformer_module

    module = new_geneformer_module(n_tokens, n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads,
                                   d_ff=config.d_ff, max_positions=config.max_length, seed=config.seed)
    module.save_pretrained(folder)


def geneformer_batch(model, sequences: list[np.ndarray], masks: list[np.ndarray]):
    """(input_ids, attention_mask, labels) with masked positions set to <mask> and labelled."""
    ids = pad(sequences, model.pad_token_id, torch.long)
    masked = pad(masks, False, torch.bool)
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    inputs = torch.where(masked, torch.full_like(ids, model.dictionaries.token_ids["<mask>"]), ids)
    return inputs, (ids != model.pad_token_id).long(), labels


def masked_gene_loss(module, inputs: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor,
                     reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the MLM head at the labelled positions only (labels -100 elsewhere); the same loss as
    BertForMaskedLM(labels=...), without the head's cost on the ~85% unlabelled tokens."""
    hidden = module.bert(input_ids=inputs, attention_mask=attention).last_hidden_state
    labelled = labels != -100
    return torch.nn.functional.cross_entropy(module.cls(hidden[labelled]), labels[labelled], reduction=reduction)


def evaluate_geneformer(model, sequences: list[np.ndarray], cells: np.ndarray, config: PretrainConfig,
                        batch_size: int = 32) -> float:
    """Mean cross-entropy (nats) of the held-out masked genes of `sequences` (AnnData rows `cells`)."""
    masks = [heldout_mask(len(s) - 2, 1, config.mask_fraction, config.seed, int(c)) for s, c in zip(sequences, cells)]
    masks = [np.r_[m, False] for m in masks]  # <eos> is never masked
    total, count = 0.0, 0
    model.module.eval()
    with torch.no_grad():
        for lo in range(0, len(sequences), batch_size):
            chunk = slice(lo, lo + batch_size)
            inputs, attention, labels = geneformer_batch(model, sequences[chunk], masks[chunk])
            total += float(masked_gene_loss(model.module, inputs, attention, labels, reduction="sum"))
            count += int((labels != -100).sum())
    return total / count


def train_geneformer(model, sequences: list[np.ndarray], config: PretrainConfig) -> list[float]:
    """BERT masked-gene pretraining of `model.module` on full cells; returns the per-step training losses."""
    rng = np.random.default_rng([config.seed, 0])
    gen = torch.Generator().manual_seed(config.seed)
    module = model.module
    n_special = min(t for g, t in model.dictionaries.token_ids.items() if not g.startswith("<"))
    mask_id = model.dictionaries.token_ids["<mask>"]
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(config))
    lengths = np.array([len(s) for s in sequences])
    module.train()
    losses, batches = [], []
    while len(losses) < config.steps:
        if not batches:
            batches = length_batches(lengths, config.batch_size, rng)
        ids = pad([sequences[i] for i in batches.pop()], model.pad_token_id, torch.long)
        is_gene = ids >= n_special
        masked = is_gene & (torch.rand(ids.shape, generator=gen) < config.mask_fraction)
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        draw = torch.rand(ids.shape, generator=gen)
        inputs = torch.where(masked & (draw < 0.8), torch.full_like(ids, mask_id), ids)
        random_genes = torch.randint(n_special, module.config.vocab_size, ids.shape, generator=gen)
        inputs = torch.where(masked & (draw >= 0.8) & (draw < 0.9), random_genes, inputs)
        loss = masked_gene_loss(module, inputs, (ids != model.pad_token_id).long(), labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if len(losses) % LOG_EVERY == 0:
            log.info(f"step {len(losses)}/{config.steps}: loss {np.mean(losses[-LOG_EVERY:]):.4f}")
    module.eval()
    return losses


# --------------------------------------------------------------------------------------------------- scGPT


def new_scgpt_folder(folder: Path, config: PretrainConfig, n_tokens: int, pad_id: int) -> None:
    from extract.models.scgpt import TransformerModel

    args = {
        "embsize": config.d_model, "nheads": config.n_heads, "d_hid": config.d_ff, "nlayers": config.n_layers,
        "dropout": 0.0, "n_bins": config.n_bins, "max_seq_len": config.max_length, "pad_token": "<pad>",
        "pad_value": -2, "mask_value": -1, "mask_ratio": config.mask_fraction, "input_style": "binned",
        "input_emb_style": "continuous", "n_hvg": None, "fast_transformer": False, "pre_norm": False,
        "GEP": True, "MVC": True, "include_zero_gene": False,
    }
    torch.manual_seed(config.seed)
    module = TransformerModel(
        n_tokens, config.d_model, config.n_heads, config.d_ff, config.n_layers, pad_token_id=pad_id, pad_value=-2,
        n_bins=config.n_bins,
        heads={"decoder": {"explicit_zero_prob": False}, "mvc_decoder": {"explicit_zero_prob": False}},
    )
    torch.save(module.state_dict(), folder / "best_model.pt")
    (folder / "args.json").write_text(json.dumps(args, indent=2))


def scgpt_outputs(module, ids: torch.Tensor, values: torch.Tensor, pad_id: int):
    """(GEP prediction [B, L], MVC prediction [B, L]) of scGPT's expression and MVC heads."""
    out = module._encode(ids, values, ids == pad_id)
    mvc = module.mvc_decoder(out[:, 0], module.encoder(ids))
    return module.decoder(out), mvc


def masked_values(values: torch.Tensor, masked: torch.Tensor, mask_value: float) -> torch.Tensor:
    return torch.where(masked, torch.full_like(values, mask_value), values)


def evaluate_scgpt(model, tokens, cells: np.ndarray, config: PretrainConfig, batch_size: int = 32) -> dict:
    """Held-out GEP MSE of masked binned values and its baselines (see the module docstring)."""
    masks = [heldout_mask(len(s) - 1, 1, config.mask_fraction, config.seed, int(c))
             for s, c in zip(tokens.input_ids, cells)]
    mask_value = float(model.args.get("mask_value", -1))
    sums = {"mse": 0.0, "baseline_cell_mean": 0.0}
    count = 0
    model.module.eval()
    with torch.no_grad():
        for lo in range(0, len(masks), batch_size):
            ids = pad(tokens.input_ids[lo:lo + batch_size], model.pad_token_id, torch.long)
            values = pad(tokens.values[lo:lo + batch_size], model.pad_value, torch.float32)
            masked = pad(masks[lo:lo + batch_size], False, torch.bool)
            inputs = masked_values(values, masked, mask_value)
            predicted, _ = scgpt_outputs(model.module, ids, inputs, model.pad_token_id)
            sums["mse"] += float(((predicted - values)[masked] ** 2).sum())
            visible = (ids != model.pad_token_id) & ~masked
            visible[:, 0] = False  # <cls>
            cell_mean = (values * visible).sum(1, keepdim=True) / visible.sum(1, keepdim=True)
            sums["baseline_cell_mean"] += float(((cell_mean - values)[masked] ** 2).sum())
            count += int(masked.sum())
    return {k: v / count for k, v in sums.items()}


def global_mean_mse(train_tokens, heldout_tokens, cells: np.ndarray, config: PretrainConfig) -> float:
    """MSE of the held-out masked values when predicting the training cells' mean gene value."""
    mean = float(np.mean(np.concatenate([v[1:] for v in train_tokens.values])))
    errors = [(v[m] - mean) ** 2 for v, c in zip(heldout_tokens.values, cells)
              for m in [heldout_mask(len(v) - 1, 1, config.mask_fraction, config.seed, int(c))]]
    return float(np.mean(np.concatenate(errors)))


def train_scgpt(model, counts, cells: np.ndarray, var, config: PretrainConfig) -> list[float]:
    """scGPT GEP + MVC pretraining of `model.module`; re-bins the cells every epoch (binning seed 1 + epoch)."""
    rng = np.random.default_rng([config.seed, 0])
    gen = torch.Generator().manual_seed(config.seed)
    module = model.module
    mask_value = float(model.args.get("mask_value", -1))
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(config))
    module.train()
    losses, batches, epoch = [], [], 0
    while len(losses) < config.steps:
        if not batches:
            epoch += 1
            tokens = model.make_tokenizer(var, binning_seed=epoch)(counts, cells)
            batches = length_batches(np.array([len(s) for s in tokens.input_ids]), config.batch_size, rng)
        chosen = batches.pop()
        ids = pad([tokens.input_ids[i] for i in chosen], model.pad_token_id, torch.long)
        values = pad([tokens.values[i] for i in chosen], model.pad_value, torch.float32)
        is_gene = ids != model.pad_token_id
        is_gene[:, 0] = False  # <cls>
        masked = is_gene & (torch.rand(ids.shape, generator=gen) < config.mask_fraction)
        gep, mvc = scgpt_outputs(module, ids, masked_values(values, masked, mask_value), model.pad_token_id)
        loss = ((gep - values)[masked] ** 2).mean() + ((mvc - values)[masked] ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if len(losses) % LOG_EVERY == 0:
            log.info(f"step {len(losses)}/{config.steps}: loss {np.mean(losses[-LOG_EVERY:]):.4f}")
    module.eval()
    return losses


# ------------------------------------------------------------------------------------------------ driver


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
