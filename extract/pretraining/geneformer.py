"""Geneformer demo pretraining: BERT masked-gene prediction and its held-out cross-entropy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from extract.pretraining.common import PretrainConfig, cosine_schedule, heldout_mask, length_batches, optimise, pad





def new_geneformer_folder(folder: Path, config: PretrainConfig, n_tokens: int) -> None:
    from extract.testing import new_geneformer_module

    module = new_geneformer_module(n_tokens, n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads,
                                   d_ff=config.d_ff, max_positions=config.max_length, seed=config.seed)
    module.save_pretrained(folder)


def geneformer_batch(model, sequences: list[np.ndarray], masks: list[np.ndarray]):
    """(input_ids, attention_mask, labels) with masked positions set to <mask> and labelled."""
    ids = pad(sequences, model.pad_token_id, torch.long)
    inputs, labels = mask_genes(model, ids, pad(masks, False, torch.bool))
    return inputs, (ids != model.pad_token_id).long(), labels


def mask_genes(model, ids: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ids, masked: [B, L] -> (inputs with <mask> at the masked positions, labels: the true token there and
    -100 elsewhere)."""
    labels = torch.where(masked, ids, torch.full_like(ids, -100))
    inputs = torch.where(masked, torch.full_like(ids, model.dictionaries.token_ids["<mask>"]), ids)
    return inputs, labels


def masked_gene_logits(module, inputs: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[P, vocab] MLM-head logits at the P labelled positions (labels != -100), in row-major order of `labels`
    ([B, L]); the head runs on those positions only."""
    hidden = module.bert(input_ids=inputs, attention_mask=attention).last_hidden_state
    return module.cls(hidden[labels != -100])


def masked_gene_loss(module, inputs: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor,
                     reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the MLM head at the labelled positions only (labels -100 elsewhere); the same loss as
    BertForMaskedLM(labels=...), without the head's cost on the ~85% unlabelled tokens."""
    logits = masked_gene_logits(module, inputs, attention, labels)
    return torch.nn.functional.cross_entropy(logits, labels[labels != -100], reduction=reduction)


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
        optimise(loss, module, optimizer, schedule, losses, config)
    module.eval()
    return losses

