"""Spliced evaluation: does the model still do its own job with the dictionary's reconstruction inside?

`evaluate_dictionary(dictionary, model_dir, adata)` runs the model's pretraining objective (see
`extract.splice`) on a seeded sample of cells five times, the hooked layer's output at the dictionary's
positions being
  * clean         untouched;
  * spliced       the reconstruction D(E(x));
  * error_added   D(E(x)) + (x - D(E(x))): equals clean up to float rounding, a check that the splice is exact;
  * zero_ablated  0;
  * mean_ablated  the mean activation: the store's recorded mean (the data the dictionary was trained on) when
                  that store is still where the dictionary's source says, else the mean over the evaluated
                  cells' spliced positions (the JSON's `mean_ablation.source` says which);
and reports, for each objective term, fraction of loss recovered FLR = (L_abl - L_spliced) / (L_abl - L_clean)
against each ablation (1 = the dictionary loses nothing, 0 = no better than deleting the layer). Cell-embedding
fidelity compares the clean and spliced cell embeddings (`extract.splice.cell_embeddings`) by cosine and, with
`obs`, by leave-one-out k-NN label accuracy (cosine similarity, majority of the k nearest; ties to the label
seen first among the neighbours' sorted labels).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from extract.errors import ExtractError
from extract.splice import (batches, cell_embeddings, dictionary_source_path, embedding_pooling, load_spliced,
                            loss_sums, objective_fraction, objective_names, predictions, sample_cells, spliced)

CONDITIONS = ("clean", "spliced", "error_added", "zero_ablated", "mean_ablated")
EXACT_TOLERANCE = 1e-4  # relative: |L_error_added - L_clean| <= tol * |L_clean| for an exact splice
KNN_K = 5


def replacement(condition: str, module, mean: torch.Tensor | None):
    """The splice's replace(x) ([P, d] -> [P, d]) for `condition`, module: the TorchDictionary."""
    if condition == "clean":
        return None
    if condition == "spliced":
        return module
    if condition == "error_added":
        return lambda x: module(x) + (x - module(x))
    if condition == "zero_ablated":
        return torch.zeros_like
    return lambda x: mean.expand_as(x)


def evaluate_dictionary(dictionary, model_dir, adata, *, cells: int = 64, seed: int = 0, obs: str | None = None,
                        batch_size: int = 16, layer: int | None = None, device: str = "cpu") -> dict:
    """The spliced evaluation of `dictionary` in the model of `model_dir` on `cells` cells of `adata` (.h5ad of raw
    counts): a JSON-ready dict (see the module docstring; `table(result)` prints it).

    cells: how many AnnData rows to sample (seeded by `seed`, which also seeds the masks); obs: a categorical
    obs column for the k-NN accuracy; layer: default the dictionary's source layer.
    """
    from extract.torch_dictionary import to_torch

    dictionary, model, layer, source = load_spliced(dictionary, model_dir, layer=layer, device=device)
    module = to_torch(dictionary).to(model.device)
    sample = sample_cells(model, adata, cells, seed, source, obs)
    all_tokens = bool((source.get("extraction") or {}).get("include_special_tokens"))
    names = objective_names(model)
    store = dictionary_source_path(source)
    mean = None
    if store is not None:
        from jaxsae.store import open_store

        norm = open_store(store).norm
        mean = torch.as_tensor(norm.mean, dtype=torch.float32, device=model.device)
        mean_source = f"the mean of the dictionary's training store {store} ({norm.count:,} rows)"
    sums = {c: dict.fromkeys(names, 0.0) for c in CONDITIONS}
    n_masked, position_sum, n_positions = 0, torch.zeros(model.d_model, device=model.device), 0
    embeddings = {"clean": [], "spliced": []}
    batch_list = list(batches(model, sample, seed, batch_size, all_tokens))
    with torch.inference_mode():
        for batch in batch_list:  # clean first: it also gives the evaluated cells' mean activation
            with model.capture([layer]) as captured:
                outputs = predictions(model, batch)
            for name, value in loss_sums(outputs).items():
                sums["clean"][name] += value
            n_masked += int(batch.masked.sum())
            position_sum += captured[layer][batch.positions].float().sum(0)
            n_positions += int(batch.positions.sum())
            embeddings["clean"].append(cell_embeddings(model, batch))
            with spliced(model, layer, batch.positions, module):
                embeddings["spliced"].append(cell_embeddings(model, batch))
        if mean is None:
            mean = position_sum / n_positions
            mean_source = (f"the mean over the evaluated cells' {n_positions:,} spliced positions (the dictionary's "
                           "training store is not where its source says)")
        for condition in CONDITIONS[1:]:
            replace = replacement(condition, module, mean)
            for batch in batch_list:
                with spliced(model, layer, batch.positions, replace):
                    for name, value in loss_sums(predictions(model, batch)).items():
                        sums[condition][name] += value
    losses = {name: {c: sums[c][name] / n_masked for c in CONDITIONS} for name in names}
    clean = torch.cat(embeddings["clean"]).double()
    spliced_emb = torch.cat(embeddings["spliced"]).double()
    cosine = torch.nn.functional.cosine_similarity(clean, spliced_emb, dim=1).cpu().numpy()
    worst = max(abs(v["error_added"] - v["clean"]) / max(abs(v["clean"]), 1e-12) for v in losses.values())
    result = {
        "dictionary": dictionary.path, "model": model.kind, "model_dir": str(model_dir),
        "checkpoint_sha256": model.checkpoint_hash, "layer": layer, "d_model": model.d_model,
        "splice_positions": "every real token (the store has special tokens)" if all_tokens else
                            "gene tokens (masked ones included; no <cls>/<eos>/padding)",
        "cells": cell_record(model_dir, adata, sample, cells, seed, source),
        "objective": {"terms": names, "main": names[0], "mask_fraction": objective_fraction(model),
                      "mask_seed": seed, "n_masked_positions": n_masked},
        "losses": losses,
        "fraction_loss_recovered": {name: {ablation: flr(v, ablation) for ablation in ("zero", "mean")}
                                    for name, v in losses.items()},
        "splice_exact": {"max_relative_difference": worst, "tolerance": EXACT_TOLERANCE,
                         "ok": bool(worst <= EXACT_TOLERANCE)},
        "mean_ablation": {"source": mean_source},
        "embedding": {"pooling": embedding_pooling(model), "block": "last",
                      "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())},
    }
    if obs is not None:
        result["knn"] = {"obs": obs, "k": KNN_K, "n_labels": int(len(set(sample.labels))),
                         "accuracy_clean": knn_accuracy(clean.cpu().numpy(), sample.labels),
                         "accuracy_spliced": knn_accuracy(spliced_emb.cpu().numpy(), sample.labels)}
    return result


def flr(loss: dict, ablation: str) -> float | None:
    """(L_abl - L_spliced) / (L_abl - L_clean); None when the ablation does not change the loss."""
    gap = loss[f"{ablation}_ablated"] - loss["clean"]
    return None if gap == 0 else (loss[f"{ablation}_ablated"] - loss["spliced"]) / gap


def cell_record(model_dir, adata, sample, asked: int, seed: int, source: dict) -> dict:
    """Which cells were evaluated, and whether the dictionary's store or the demo pretraining saw them."""
    record = {"adata": str(adata), "n_requested": asked, "n_used": int(len(sample.index)), "seed": seed,
              "selection": f"numpy default_rng([{seed}, 2]).choice(n_cells, min(cells, n_cells), replace=False), "
                           "sorted; cells with no expressed model gene dropped",
              "dropped_no_expressed_gene": sample.dropped.tolist(), "cell_index": sample.index.tolist()}
    from extract.inputs import file_identity

    recorded = source.get("adata") or {}
    files = recorded.get("files") or ([recorded] if recorded else [])  # one file, or each of several
    identity = file_identity(Path(adata)) if files else {}
    record["in_dictionary_store"] = None if not files else any(
        all(entry.get(key) == value for key, value in identity.items()) for entry in files)
    pretraining = Path(model_dir) / "pretraining.json"
    if pretraining.is_file():  # a demo model: its held-out split (extract.pretraining.common.split_cells)
        from extract.pretraining.common import split_cells

        config = json.loads(pretraining.read_text())["config"]
        n_cells = (source.get("adata") or {}).get("n_cells")
        if n_cells is not None:
            _, heldout = split_cells(n_cells, config["heldout_fraction"], config["seed"])
            record["in_pretraining_heldout"] = int(np.isin(sample.index, heldout).sum())
            record["in_pretraining_train"] = int(len(sample.index) - record["in_pretraining_heldout"])
    return record


def knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, k: int = KNN_K) -> float:
    """Leave-one-out k-NN accuracy: embeddings [N, d] (cosine similarity), labels [N]; N > k needed."""
    if len(labels) <= k:
        raise ExtractError(f"k-NN accuracy with k={k} needs more than {k} cells, found {len(labels)}; pass more cells")
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    neighbours = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    names, codes = np.unique(labels, return_inverse=True)
    votes = np.zeros((len(labels), len(names)), np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(labels)), k), codes[neighbours].ravel()), 1)
    return float((votes.argmax(1) == codes).mean())


def table(result: dict) -> str:
    """A small text table of `evaluate_dictionary`'s result."""
    lines = [f"{result['model']} layer {result['layer']}, {result['cells']['n_used']} cells, "
             f"{result['objective']['n_masked_positions']:,} masked positions; splice at {result['splice_positions']}",
             f"{'objective':<16}" + "".join(f"{c:>14}" for c in CONDITIONS) + f"{'FLR zero':>10}{'FLR mean':>10}"]
    for name, loss in result["losses"].items():
        recovered = result["fraction_loss_recovered"][name]
        lines.append(f"{name:<16}" + "".join(f"{loss[c]:>14.4f}" for c in CONDITIONS)
                     + "".join(f"{'-' if recovered[a] is None else format(recovered[a], '.3f'):>10}"
                               for a in ("zero", "mean")))
    exact = result["splice_exact"]
    lines.append(f"error-added == clean: {'yes' if exact['ok'] else 'NO'} (relative difference "
                 f"{exact['max_relative_difference']:.1e}); mean ablation: {result['mean_ablation']['source']}")
    emb = result["embedding"]
    lines.append(f"cell embedding ({emb['pooling']}): cosine clean vs spliced mean {emb['cosine_mean']:.4f}, "
                 f"min {emb['cosine_min']:.4f}")
    if "knn" in result:
        knn = result["knn"]
        lines.append(f"{knn['k']}-NN {knn['obs']} accuracy (leave-one-out): clean {knn['accuracy_clean']:.3f}, "
                     f"spliced {knn['accuracy_spliced']:.3f}")
    return "\n".join(lines)
