"""The genes a feature's decoder direction promotes through the model's own gene read-out (PyTorch side).

Geneformer (BertForMaskedLM), method "logit_lens": score_f(g) = logits(mu + a_f d_f)[g] - logits(mu)[g],
with logits = `cls.predictions` (transform: dense, activation, LayerNorm; then the decoder over the
vocabulary), d_f the feature's decoder row, mu the store's mean activation (manifest norm statistics), and
a_f the feature's typical activation: the mean of its non-zero activations over an evenly spaced sample
of up to SAMPLE_ROWS store rows (features that never fire there take the median over those that do). This
is a logit lens: the MLM head is applied to the residual stream of the hooked layer directly, SKIPPING the
blocks after it, so for early layers it reads what the direction means to the output embedding, not what
the full model would predict.

scGPT, method "embedding_cosine": score_f(g) = cos(d_f, E_g) with E = `encoder.embedding.weight`, the gene
token embeddings. scGPT has no head that maps a residual direction to genes: its expression decoder
predicts a value at a token already chosen, and the MVC head scores genes against a final-layer cell
embedding (not a layer-L token residual) through a sigmoid query. The embedding table is the one map
between the residual space and gene identity valid at every layer, hence this choice.

Only real gene tokens are scored (special tokens such as <pad>, <cls>, <mask>, <eos> are excluded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from extract.errors import ExtractError

SAMPLE_ROWS = 16384
FEATURE_BATCH = 512
COLUMNS = ["feature", "rank", "token_id", "gene_id", "symbol", "score", "method"]


def promoted_genes(model_dir: str | Path, dictionary, store, *, top: int = 10, features=None) -> pd.DataFrame:
    """The `top` genes each feature promotes (see the module docstring for the method per model).

    model_dir: the model folder the store was extracted with; dictionary: a dictionary folder or a loaded
    jaxsae Dictionary trained on `store` (a store folder or an open ActivationStore). features: feature
    numbers (default all). Returns a long table with COLUMNS, sorted by feature then rank (1 = best).
    """
    from extract.models import load_model
    from jaxsae.dictionary import Dictionary, load
    from jaxsae.store import ActivationStore, open_store

    store = store if isinstance(store, ActivationStore) else open_store(store)
    dictionary = dictionary if isinstance(dictionary, Dictionary) else load(dictionary)
    model = load_model(model_dir)
    recorded = store.source.get("checkpoint_sha256")
    if recorded is not None and recorded != model.checkpoint_hash:
        raise ExtractError(f"store {store.path} was extracted with another checkpoint than {model_dir} (checkpoint "
                           "sha256 differs); pass the model folder the store was extracted with")
    if dictionary.d_model != model.d_model:
        raise ExtractError(f"the dictionary reads d_model={dictionary.d_model} but {model_dir} has "
                           f"d_model={model.d_model}; pass the model the dictionary's store came from")
    features = np.arange(dictionary.n_latents) if features is None else np.atleast_1d(np.asarray(features, np.int64))
    if len(features) and (features.min() < 0 or features.max() >= dictionary.n_latents):
        raise ExtractError(f"features must be in 0..{dictionary.n_latents - 1}")
    if top < 1:
        raise ExtractError(f"top={top}; expected at least 1")
    if model.kind == "geneformer":
        names = {token: gene for gene, token in model.dictionaries.token_ids.items()}
        symbols = {gene: symbol for symbol, gene in (model.dictionaries.symbol_to_id or {}).items()}
        method = "logit_lens"
        score = _logit_lens(model, dictionary, store, features)
    else:
        names = {token: gene for gene, token in model.vocab.items()}
        symbols = None
        method = "embedding_cosine"
        score = _embedding_cosine(model, dictionary)
    gene_tokens = np.array(sorted(t for t, name in names.items() if not name.startswith("<")), np.int64)
    gene_names = np.array([names[t] for t in gene_tokens], dtype=object)
    rows = []
    for lo in range(0, len(features), FEATURE_BATCH):
        chosen = features[lo:lo + FEATURE_BATCH]
        values, at = torch.topk(score(chosen)[:, gene_tokens], min(top, len(gene_tokens)), dim=1)
        rows.append((np.repeat(chosen, at.shape[1]), at.numpy().ravel(), values.numpy().ravel(),
                     np.tile(np.arange(1, at.shape[1] + 1), len(chosen))))
    feature, gene_at, value, rank = (np.concatenate(parts) for parts in zip(*rows)) if rows else \
        (np.zeros(0, np.int64),) * 4
    token, gene = gene_tokens[gene_at], gene_names[gene_at]
    if symbols is None:  # scGPT's vocabulary holds gene symbols
        gene_id, symbol = np.full(len(gene), "", dtype=object), gene
    else:
        gene_symbols = np.array([symbols.get(g, "") for g in gene_names], dtype=object)
        gene_id, symbol = gene, gene_symbols[gene_at]
    return pd.DataFrame({"feature": feature, "rank": rank, "token_id": token, "gene_id": gene_id, "symbol": symbol,
                         "score": np.asarray(value, np.float32), "method": method})[COLUMNS]


def typical_activations(dictionary, store) -> np.ndarray:
    """[n_latents] mean non-zero activation of each feature over an evenly spaced sample of store rows."""
    sample = np.unique(np.linspace(0, store.n_rows - 1, min(SAMPLE_ROWS, store.n_rows)).astype(np.int64))
    codes = dictionary.encode(store.read_rows_at(sample), sparse=True)  # CSR [rows, n_latents]
    fired = np.bincount(codes.indices[codes.data > 0], minlength=codes.shape[1])
    total = np.asarray(codes.maximum(0).sum(axis=0)).ravel()
    typical = np.divide(total, fired, out=np.zeros(codes.shape[1]), where=fired > 0)
    fallback = float(np.median(typical[fired > 0])) if (fired > 0).any() else 1.0
    return np.where(fired > 0, typical, fallback)


def _logit_lens(model, dictionary, store, features: np.ndarray):
    head = model.module.cls.predictions
    mean = torch.as_tensor(store.norm.mean, dtype=torch.float32)
    scale = torch.as_tensor(typical_activations(dictionary, store), dtype=torch.float32)
    decoder = torch.as_tensor(np.asarray(dictionary.decoder), dtype=torch.float32)
    with torch.inference_mode():
        base = head(mean[None])[0]

    def score(chosen: np.ndarray) -> torch.Tensor:
        index = torch.from_numpy(chosen)
        with torch.inference_mode():
            return head(mean[None] + scale[index, None] * decoder[index]) - base[None]

    return score


def _embedding_cosine(model, dictionary):
    embedding = torch.nn.functional.normalize(model.module.encoder.embedding.weight.detach().float(), dim=1)
    decoder = torch.nn.functional.normalize(torch.as_tensor(np.asarray(dictionary.decoder), dtype=torch.float32),
                                            dim=1)

    def score(chosen: np.ndarray) -> torch.Tensor:
        return decoder[torch.from_numpy(chosen)] @ embedding.T

    return score
