"""Feature ablation and steering: one feature (or a set) clamped to zero or scaled inside the model, and the
genes whose masked predictions move most.

Through the same splice as `extract.evaluate` (hook on `model.blocks[layer]`, the same positions, cells and
seeded masks), the layer's output x at each spliced position becomes

    x' = x + (scale - 1) * sum_{i in features} f_i(x) d_i

with f_i(x) the dictionary's latent and d_i its decoder row: the reconstruction with those latents scaled plus
the SAE error x - D(E(x)), so only the features' change acts, not the dictionary's reconstruction error. scale 0
ablates, 2 doubles, -1 flips.

What moves, per gene g (the model's gene tokens; special tokens excluded), over the masked positions of the
cells (of each label when `obs` is given):
  * geneformer: the mean log-probability the MLM head gives g at the masked positions, intervened minus clean
    (every masked position counts for every gene: how much more or less the model predicts g anywhere);
  * scgpt: the expression decoder's (GEP) prediction at the masked positions that hold g, intervened minus
    clean (genes never masked in a group have no row there).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from extract.errors import ExtractError
from extract.splice import batches, load_spliced, predictions, sample_cells, spliced

COLUMNS = ["group", "direction", "rank", "token_id", "gene_id", "symbol", "delta", "clean", "intervened",
           "n_positions"]


def steer(module, features: torch.Tensor, scale: float):
    """replace(x) ([P, d] -> [P, d]): x + (scale - 1) * f_F(x) @ W_dec[F], module: the TorchDictionary."""
    def replace(x):
        return x + (scale - 1.0) * (module.encode(x)[:, features] @ module.W_dec[features])

    return replace


def intervene(model_dir, dictionary, adata, feature, scale: float = 0.0, *, cells: int = 64, seed: int = 0,
              obs: str | None = None, top: int = 20, layer: int | None = None, batch_size: int = 16,
              device: str = "cpu") -> pd.DataFrame:
    """The genes whose masked predictions `feature` (an int or a list) moves most when scaled by `scale` (see
    the module docstring), on `cells` sampled cells of `adata` (.h5ad of raw counts; sampled and masked as
    `extract.evaluate.evaluate_dictionary` does with the same `seed`).

    Returns a table with COLUMNS: per group ("all", then each label of `obs`), the `top` genes pushed up
    (direction "up", largest delta first) and the `top` pushed down ("down", most negative first); delta is in
    log-probability (Geneformer) or predicted expression-value units (scGPT). `table.attrs` holds the cells used,
    the features' firing fraction at the spliced positions and the unit.
    """
    from extract.torch_dictionary import to_torch

    dictionary, model, layer, source = load_spliced(dictionary, model_dir, layer=layer, device=device)
    features = np.unique(np.atleast_1d(np.asarray(feature, np.int64)))
    if not len(features) or features.min() < 0 or features.max() >= dictionary.n_latents:
        raise ExtractError(f"feature={feature!r}: expected feature numbers in 0..{dictionary.n_latents - 1}")
    if top < 1:
        raise ExtractError(f"top={top}; expected at least 1")
    module = to_torch(dictionary).to(model.device)
    chosen = torch.from_numpy(features).to(model.device)
    sample = sample_cells(model, adata, cells, seed, source, obs)
    all_tokens = bool((source.get("extraction") or {}).get("include_special_tokens"))
    table = model.gene_table().set_index("token_id")
    genes = table.index[~table["symbol"].astype(str).str.startswith("<")].to_numpy(np.int64)
    groups = ["all"] + (sorted(set(sample.labels)) if sample.labels is not None else [])
    vocab = int(table.index.max()) + 1
    sums = {g: np.zeros((3, vocab)) for g in groups}  # per group: clean sum, intervened sum, count
    fired, n_positions = 0, 0
    with torch.inference_mode():
        for batch in batches(model, sample, seed, batch_size, all_tokens):
            with model.capture([layer]) as captured:
                clean = predictions(model, batch)
            at = captured[layer][batch.positions].float()
            fired += int((module.encode(at)[:, chosen] > 0).sum())
            n_positions += int(batch.positions.sum())
            with spliced(model, layer, batch.positions, steer(module, chosen, scale)):
                steered = predictions(model, batch)
            cell_of_position = torch.nonzero(batch.masked)[:, 0].cpu().numpy()  # row-major, as predictions
            tokens = batch.ids[batch.masked].cpu().numpy()
            for group in groups:
                take = np.ones(len(cell_of_position), bool) if group == "all" else \
                    sample.labels[batch.rows[cell_of_position]] == group
                if take.any():
                    add_group(sums[group], model.kind, clean, steered, take, tokens)
    out = []
    for group in groups:
        clean_sum, steered_sum, count = sums[group][:, genes]
        seen = count > 0
        delta = np.where(seen, (steered_sum - clean_sum) / np.maximum(count, 1), np.nan)
        for direction, order in (("up", np.argsort(-np.nan_to_num(delta, nan=-np.inf), kind="stable")),
                                 ("down", np.argsort(np.nan_to_num(delta, nan=np.inf), kind="stable"))):
            picked = [i for i in order[:top] if seen[i]]
            for rank, i in enumerate(picked, 1):
                token = genes[i]
                out.append((group, direction, rank, token, table.loc[token, "gene_id"], table.loc[token, "symbol"],
                            delta[i], clean_sum[i] / count[i], steered_sum[i] / count[i], int(count[i])))
    result = pd.DataFrame(out, columns=COLUMNS)
    result.attrs.update({"features": features.tolist(), "scale": scale, "layer": layer, "model": model.kind,
                         "unit": "log-probability" if model.kind == "geneformer" else "predicted expression value",
                         "cell_index": sample.index.tolist(), "firing_fraction": fired / max(1, n_positions * len(features))})
    return result


def add_group(sums: np.ndarray, kind: str, clean: dict, steered: dict, take: np.ndarray, tokens: np.ndarray) -> None:
    """Accumulate one group's masked positions into sums [3, vocab] (clean, intervened, count); take: [P] bool
    of the batch's masked positions; tokens: [P] the true token at each."""
    if kind == "geneformer":
        for row, outputs in ((0, clean), (1, steered)):
            sums[row] += torch.log_softmax(outputs["logits"][take].double(), dim=-1).sum(0).cpu().numpy()
        sums[2] += int(take.sum())
        return
    for row, outputs in ((0, clean), (1, steered)):
        np.add.at(sums[row], tokens[take], outputs["gep"][take].double().cpu().numpy())
    np.add.at(sums[2], tokens[take], 1)
