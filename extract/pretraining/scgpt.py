"""scGPT demo pretraining: masked expression-value prediction (GEP + MVC) and its held-out MSE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from extract.pretraining.common import PretrainConfig, cosine_schedule, heldout_mask, length_batches, optimise, pad





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
        heads=("decoder", "mvc_decoder"),
    )
    torch.save(module.state_dict(), folder / "best_model.pt")
    (folder / "args.json").write_text(json.dumps(args, indent=2))


def scgpt_outputs(module, ids: torch.Tensor, values: torch.Tensor, pad_id: int):
    """(GEP prediction [B, L], MVC prediction [B, L] or None for a checkpoint without the MVC head) of scGPT's
    expression and MVC heads."""
    out = module._encode(ids, values, ids == pad_id)
    mvc = module.mvc_decoder(out[:, 0], module.encoder(ids)) if hasattr(module, "mvc_decoder") else None
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
        optimise(loss, module, optimizer, schedule, losses, config)
    module.eval()
    return losses

