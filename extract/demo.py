"""Offline demo inputs: scanpy's bundled pbmc68k_reduced as raw counts, and a small Geneformer pretrained on it.

`prepare_demo(cache_dir)` returns (adata_path, model_dir):
  * adata_path: 700 PBMCs x 765 genes of raw integer counts, recovered from `raw.X` (log1p of counts per
    10,000) as round(expm1(raw.X) x n_counts / 10,000) and refused unless they come out integral (within 0.1,
    the float32 rounding of the stored logs). var: gene symbols as index plus an `ensembl_id` column;
    obs: bulk_labels (10 cell types), louvain, n_counts.
  * model_dir: a Geneformer V2-layout folder (config.json, model.safetensors, token / gene-median /
    gene-name dictionaries) holding a 4-layer BertForMaskedLM pretrained for a few minutes with 15% masked
    gene prediction on those cells (rank-value encoded with the medians computed from the same cells).
THE ENSEMBL IDS ARE MADE UP: no symbol -> Ensembl mapping is available offline, so each symbol gets a
synthetic ID `ENSG99` + 9 digits (its rank in alphabetical order; no real gene has an ENSG99... ID), and the
model folder's `gene_name_id_dict_demo.pkl` holds that mapping. Do not join these IDs with real annotations.

Everything is cached under cache_dir (built in a temporary folder, then renamed into place with a
COMPLETE marker written last); a later call with the same settings reuses it, a half-written or
different-settings cache is rebuilt. `python -m extract.demo CACHE_DIR OUT_DIR` also extracts a middle layer.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from extract.errors import ExtractError

MARKER = "COMPLETE.json"
COUNTS_FILE = "pbmc68k_counts.h5ad"
MODEL_FOLDER = "geneformer"
INTEGRAL_TOLERANCE = 0.1


@dataclass(frozen=True)
class DemoConfig:
    """Demo model and pretraining settings. Pretraining stops after train_steps or max_train_seconds,
    whichever comes first (the defaults: about 2.5 minutes of wall time on 2 CPU cores)."""

    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 256
    max_positions: int = 1026  # 1,024 genes + <cls> + <eos>
    train_steps: int = 3000
    max_train_seconds: float = 150.0
    batch_size: int = 16
    train_window: int = 64
    learning_rate: float = 2e-3
    mask_fraction: float = 0.15
    seed: int = 0


def pbmc_counts() -> "anndata.AnnData":  # noqa: F821
    """pbmc68k_reduced (shipped inside scanpy, no network) as raw integer counts with symbols + synthetic IDs."""
    import anndata
    import scanpy as sc

    reduced = sc.datasets.pbmc68k_reduced()
    logs = reduced.raw.X.toarray() if sp.issparse(reduced.raw.X) else np.asarray(reduced.raw.X)
    n_counts = reduced.obs["n_counts"].to_numpy(np.float64)[:, None]
    values = np.expm1(logs.astype(np.float64)) * n_counts / 1e4
    counts = np.round(values)
    worst = float(np.abs(values - counts).max())
    if worst > INTEGRAL_TOLERANCE or counts.min() < 0:
        raise ExtractError(
            f"pbmc68k_reduced raw.X does not invert to integer counts (max distance {worst:.3f} > "
            f"{INTEGRAL_TOLERANCE}); this scanpy version ships different data"
        )
    symbols = [str(s) for s in reduced.raw.var_names]
    synthetic = {s: f"ENSG99{i:09d}" for i, s in enumerate(sorted(symbols))}
    var = pd.DataFrame({"ensembl_id": [synthetic[s] for s in symbols]}, index=symbols)
    obs = reduced.obs[["bulk_labels", "louvain"]].copy()
    obs["n_counts"] = counts.sum(1)
    return anndata.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)


def gene_medians(counts: sp.csr_matrix, target_sum: float = 1e4) -> np.ndarray:
    """[n_genes] Geneformer gene medians: per gene, the median of its non-zero counts per `target_sum`."""
    normalised = sp.csr_matrix(counts.multiply(target_sum / counts.sum(1))).tocsc()
    return np.array([np.median(normalised[:, j].data) if normalised[:, j].nnz else 1.0
                     for j in range(normalised.shape[1])])


def pretrain(module, sequences: list[np.ndarray], token_ids: dict[str, int], config: DemoConfig) -> dict:
    """15% masked-gene prediction (BERT 80/10/10 replacement) on rank-value encoded cells; returns a log.

    To fit a CPU budget each example is a random crop of `train_window` consecutive ranks of one cell
    (between its <cls> and <eos>, which are kept), fed with its original position ids, so every position
    embedding up to the longest cell is trained while a step costs train_window tokens per cell.
    """
    gen = torch.Generator().manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.learning_rate, weight_decay=0.01)
    warmup = max(1, min(50, config.train_steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    pad, mask_id = token_ids["<pad>"], token_ids["<mask>"]
    n_special = len([t for t in token_ids if t.startswith("<")])
    width = config.train_window + 2
    module.train()
    losses, started = [], time.perf_counter()
    for _ in range(config.train_steps):
        chosen = rng.choice(len(sequences), config.batch_size, replace=False)
        ids = torch.full((len(chosen), width), pad, dtype=torch.long)
        positions = torch.zeros_like(ids)
        for row, i in enumerate(chosen):
            seq = sequences[i]
            n_genes = len(seq) - 2
            first = int(rng.integers(0, max(0, n_genes - config.train_window) + 1))
            keep = np.r_[0, 1 + first + np.arange(min(config.train_window, n_genes)), len(seq) - 1]
            ids[row, : len(keep)] = torch.from_numpy(seq[keep])
            positions[row, : len(keep)] = torch.from_numpy(keep)
        is_gene = ids >= n_special
        masked = is_gene & (torch.rand(ids.shape, generator=gen) < config.mask_fraction)
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        draw = torch.rand(ids.shape, generator=gen)
        inputs = torch.where(masked & (draw < 0.8), torch.full_like(ids, mask_id), ids)
        random_genes = torch.randint(n_special, module.config.vocab_size, ids.shape, generator=gen)
        inputs = torch.where(masked & (draw >= 0.8) & (draw < 0.9), random_genes, inputs)
        loss = module(input_ids=inputs, attention_mask=(ids != pad).long(), position_ids=positions,
                      labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if time.perf_counter() - started > config.max_train_seconds:
            break
    module.eval()
    tail = max(1, len(losses) // 10)
    return {"steps": len(losses), "seconds": round(time.perf_counter() - started, 1),
            "loss_first": float(np.mean(losses[:tail])), "loss_last": float(np.mean(losses[-tail:])),
            "loss_uniform": float(np.log(module.config.vocab_size - n_special))}


def _build(folder: Path, config: DemoConfig) -> dict:
    from extract.models import load_geneformer
    from extract.testing import geneformer_token_dictionary, new_geneformer_module, write_geneformer_dictionaries
    from extract.tokenize import GeneformerDictionaries, GeneformerTokenizer, as_count_rows

    adata = pbmc_counts()
    adata.write_h5ad(folder / COUNTS_FILE)
    ids = adata.var["ensembl_id"].tolist()
    token_ids = geneformer_token_dictionary(sorted(ids), special_tokens=True)
    medians = dict(zip(ids, gene_medians(adata.X).tolist()))
    model_dir = folder / MODEL_FOLDER
    write_geneformer_dictionaries(model_dir, token_ids, medians, dict(zip(adata.var_names, ids)), suffix="demo")
    dictionaries = GeneformerDictionaries.from_dir(model_dir)
    tokenizer = GeneformerTokenizer(dictionaries, adata.var, model_input_size=config.max_positions, special_tokens=True)
    sequences = tokenizer(as_count_rows(adata.X), np.arange(adata.n_obs)).input_ids
    module = new_geneformer_module(len(token_ids), n_layers=config.n_layers, d_model=config.d_model,
                                   n_heads=config.n_heads, d_ff=config.d_ff, max_positions=config.max_positions,
                                   seed=config.seed)
    log = pretrain(module, sequences, token_ids, config)
    module.save_pretrained(model_dir)
    load_geneformer(model_dir)  # the folder must load through the public loader before it is marked complete
    return log


def prepare_demo(cache_dir: str | Path, config: DemoConfig | None = None, **overrides) -> tuple[Path, Path]:
    """(adata_path, model_dir) of the demo, built on first use and cached in `cache_dir`."""
    config = config or DemoConfig(**overrides)
    cache_dir = Path(cache_dir)
    final = cache_dir / "pbmc68k_geneformer"
    settings = asdict(config)
    marker = final / MARKER
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except json.JSONDecodeError:
            done = {}
        if done.get("config") == settings and (final / COUNTS_FILE).is_file() and (final / MODEL_FOLDER).is_dir():
            return final / COUNTS_FILE, final / MODEL_FOLDER
    cache_dir.mkdir(parents=True, exist_ok=True)
    building = cache_dir / f".building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    log = _build(building, config)
    (building / MARKER).write_text(json.dumps({"config": settings, "pretraining": log}, indent=2))
    shutil.rmtree(final, ignore_errors=True)  # a half-written or stale cache
    os.replace(building, final)
    return final / COUNTS_FILE, final / MODEL_FOLDER


def main(argv: list[str] | None = None) -> None:
    """python -m extract.demo CACHE_DIR OUT_DIR: prepare the demo and extract layer n_layers // 2."""
    import argparse

    from extract.run import extract

    parser = argparse.ArgumentParser(prog="python -m extract.demo", description=main.__doc__)
    parser.add_argument("cache_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--max-train-seconds", type=float, default=DemoConfig.max_train_seconds)
    args = parser.parse_args(argv)
    adata_path, model_dir = prepare_demo(args.cache_dir, max_train_seconds=args.max_train_seconds)
    print(json.loads((model_dir.parent / MARKER).read_text())["pretraining"])
    layer = DemoConfig.n_layers // 2
    stores = extract(adata_path, model_dir, args.out_dir, layers=[layer])
    print(f"adata: {adata_path}\nmodel: {model_dir}\nlayer {layer} token store: {stores[layer]}")


if __name__ == "__main__":
    main()
