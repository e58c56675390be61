"""A dictionary spliced into its model: provenance checks, the evaluated cells as masked model inputs, the
forward hook that rewrites one block's output, and the model's own objective read at the masked positions.

Splice: a forward hook on `model.blocks[layer]` replaces that block's output (the residual stream the store
recorded) at the dictionary's positions by `replace(x)`, x: [P, d_model] the outputs there. The positions are
the gene tokens of each cell (masked ones included: the objective is read there, and a hook that skipped them
would leave the last layer's loss untouched), plus `<cls>`/`<eos>` when the store was extracted with
`include_special_tokens`; padding never. The `<mask>` tokens the objective needs are out of the dictionary's
training distribution (stores hold unmasked cells); that is part of what the spliced loss measures.

Objective, per model (masks from `extract.pretraining.common.heldout_mask`, seeded by (seed, 1, AnnData row),
as the demo models' own held-out evaluation):
  * geneformer: 15% of each cell's gene tokens replaced by <mask>; the MLM head's logits there ->
    cross-entropy of the true genes (`masked_gene_ce`, nats per masked gene).
  * scgpt: args.json's mask_ratio (default 0.4) of the gene values set to mask_value; the expression decoder's
    prediction there -> `gep_mse`, and the MVC head's (`mvc_mse`) when the checkpoint has it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from extract.errors import ExtractError
from extract.pretraining.common import heldout_mask, pad
from extract.pretraining.geneformer import mask_genes, masked_gene_logits
from extract.pretraining.scgpt import masked_values, scgpt_outputs

CELL_STREAM = 2  # second seed word of the evaluated cells' sample (masks use 1, extract.pretraining.common)
GENEFORMER_MASK_FRACTION = 0.15
SCGPT_MASK_RATIO = 0.4  # scGPT's default mask_ratio, when args.json records none
READ_ROWS = 4096
# make_tokenizer options a store's manifest records (source.tokenizer) and the evaluation reuses
TOKENIZER_OPTIONS = ("gene_column", "model_input_size", "duplicate_genes", "n_hvg", "hvg_flavor", "max_seq_len",
                     "include_zero_genes", "seed", "binning_seed")


def load_spliced(dictionary, model_dir, *, layer: int | None = None, device: str = "cpu"):
    """(Dictionary, loaded model, layer, source) after checking that the dictionary can be spliced there.

    dictionary: a jaxsae Dictionary or its folder; its config `source` (the store's manifest source) names the
    model checkpoint, layer and kind it was trained on. layer: default the source's; a dictionary built in
    memory (no source) needs it. Raises ExtractError naming both sides and the fix for a cell-level dictionary,
    another checkpoint, another layer, another d_model, or a folder that holds no model.
    """
    from extract.models import load_model
    from jaxsae.dictionary import Dictionary, load

    dictionary = dictionary if isinstance(dictionary, Dictionary) else load(dictionary)
    source = dictionary.config.get("source") or {}
    name = dictionary.path or "the dictionary"
    kind = source.get("kind", "tokens")
    if kind != "tokens":
        raise ExtractError(
            f"{name} was trained on a {kind} store (one row per cell), but splicing replaces a block's output at "
            "each gene token, so it needs a dictionary trained on a tokens store (layer_L/tokens); train one there"
        )
    try:
        model = load_model(model_dir, device=device)
    except ExtractError as err:
        recorded = f" (the dictionary was trained on {source['model']} activations of {source.get('model_dir')})" \
            if "model" in source else ""
        raise ExtractError(f"{err}{recorded}; pass the model folder the dictionary's store was extracted with") \
            from None
    if dictionary.d_model != model.d_model:
        raise ExtractError(f"{name} reads d_model={dictionary.d_model} but the {model.kind} model {model_dir} has "
                           f"d_model={model.d_model}; pass the model the dictionary's store was extracted with")
    recorded = source.get("checkpoint_sha256")
    if recorded is not None and recorded != model.checkpoint_hash:
        raise ExtractError(
            f"{name} was trained on activations of checkpoint sha256 {recorded[:12]} ({source.get('model')}, "
            f"{source.get('model_dir')}) but {model_dir} is checkpoint {model.checkpoint_hash[:12]} "
            f"({model.kind}); pass the model folder the dictionary's store was extracted with"
        )
    trained = source.get("layer")
    if layer is None and trained is None:
        raise ExtractError(f"{name} records no source layer (built in memory?); pass layer=L (CLI: --layer L)")
    asked = model.check_layers([trained if layer is None else layer])[0]
    if trained is not None and model.check_layers([trained])[0] != asked:
        raise ExtractError(f"{name} was trained on layer {trained} but layer {layer} was asked; pass layer="
                           f"{trained} (or leave it out), or a dictionary trained on layer {layer}")
    return dictionary, model, asked, source


@dataclass(frozen=True)
class Cells:
    """The evaluated cells, tokenised as the dictionary's store was. index: [N] AnnData rows (sorted);
    tokens: TokenizedCells; labels: [N] obs labels (strings) or None; dropped: sampled rows without any
    expressed model gene (not evaluated)."""

    index: np.ndarray
    tokens: object
    labels: np.ndarray | None
    dropped: np.ndarray


def sample_cells(model, adata_path, n_cells: int, seed: int, source: dict, obs: str | None = None) -> Cells:
    """A seeded sample (numpy default_rng([seed, CELL_STREAM]), without replacement) of `n_cells` AnnData rows
    (all when the file has fewer), tokenised with the tokeniser settings the store recorded."""
    from extract.counts import CountSource

    if n_cells < 1:
        raise ExtractError(f"cells={n_cells}; expected at least 1 cell to evaluate on")
    with CountSource(adata_path) as counts_file:
        chosen = np.sort(np.random.default_rng([seed, CELL_STREAM]).choice(
            counts_file.n_cells, min(n_cells, counts_file.n_cells), replace=False))
        blocks = []
        for lo in range(0, counts_file.n_cells, READ_ROWS):
            inside = chosen[(chosen >= lo) & (chosen < lo + READ_ROWS)]
            if len(inside):
                blocks.append(counts_file.rows(lo, min(lo + READ_ROWS, counts_file.n_cells))[inside - lo])
        import scipy.sparse as sp

        counts = sp.vstack(blocks).tocsr()
        options = {k: v for k, v in (source.get("tokenizer") or {}).items() if k in TOKENIZER_OPTIONS}
        tokenizer = model.make_tokenizer(counts_file.var, counts_source=counts_file, **options)
        labels = read_labels(adata_path, obs, chosen) if obs is not None else None
    expressed = tokenizer.plan.n_expressed(counts) > 0
    if not expressed.any():
        raise ExtractError(f"none of the {len(chosen)} sampled cells of {adata_path} expresses a gene the model "
                           "knows; check the AnnData (gene names, counts)")
    index = chosen[expressed]
    return Cells(index, tokenizer(counts[expressed], index), None if labels is None else labels[expressed],
                 chosen[~expressed])


def read_labels(adata_path, obs: str, rows: np.ndarray) -> np.ndarray:
    """[len(rows)] obs[obs] of the AnnData rows `rows`, as strings."""
    import anndata

    adata = anndata.read_h5ad(adata_path, backed="r")
    try:
        if obs not in adata.obs.columns:
            raise ExtractError(f"obs={obs!r} is not a column of {adata_path}'s obs (columns: "
                               f"{list(adata.obs.columns)}); pass one of those")
        return adata.obs[obs].astype(str).to_numpy()[rows]
    finally:
        adata.file.close()


@dataclass(frozen=True)
class Batch:
    """Model inputs of a few evaluated cells. ids: [B, L] int64 unmasked tokens; values: [B, L] float32
    (scGPT) or None; attention: [B, L] bool real tokens; positions: [B, L] bool where the splice acts;
    masked: [B, L] bool where the objective is read; rows: [B] indices into Cells.index."""

    ids: torch.Tensor
    values: torch.Tensor | None
    attention: torch.Tensor
    positions: torch.Tensor
    masked: torch.Tensor
    rows: np.ndarray


def batches(model, cells: Cells, seed: int, batch_size: int, all_tokens: bool):
    """The cells as Batches of `batch_size`, with their seeded masks; all_tokens: splice at every real token
    (a store extracted with include_special_tokens), else at the gene tokens."""
    tokens = cells.tokens
    fraction = objective_fraction(model)
    for lo in range(0, len(cells.index), batch_size):
        rows = np.arange(lo, min(lo + batch_size, len(cells.index)))
        seqs = [tokens.input_ids[r] for r in rows]
        masks = [np.r_[heldout_mask(tokens.n_genes(r), tokens.n_prefix, fraction, seed, int(cells.index[r])),
                       np.zeros(tokens.n_suffix, bool)] for r in rows]
        genes = [np.r_[np.zeros(tokens.n_prefix, bool), np.ones(tokens.n_genes(r), bool),
                       np.zeros(tokens.n_suffix, bool)] for r in rows]
        ids = pad(seqs, model.pad_token_id, torch.long)
        attention = pad([np.ones(len(s), bool) for s in seqs], False, torch.bool)
        values = pad([tokens.values[r] for r in rows], model.pad_value, torch.float32) \
            if tokens.values is not None else None
        positions = attention if all_tokens else pad(genes, False, torch.bool)
        yield Batch(ids.to(model.device), None if values is None else values.to(model.device),
                    attention.to(model.device), positions.to(model.device), pad(masks, False, torch.bool).to(
                        model.device), rows)


def objective_fraction(model) -> float:
    return GENEFORMER_MASK_FRACTION if model.kind == "geneformer" else \
        float(model.args.get("mask_ratio", SCGPT_MASK_RATIO))


def objective_names(model) -> list[str]:
    """The objective's terms: ["masked_gene_ce"] or ["gep_mse"(, "mvc_mse")]; the first is the main one."""
    if model.kind == "geneformer":
        return ["masked_gene_ce"]
    if not hasattr(model.module, "decoder"):
        raise ExtractError(f"the scGPT checkpoint {model.model_dir} has no expression decoder (decoder.fc.*), so "
                           "its masked-value objective cannot be computed; pass a pretrained checkpoint with its GEP head")
    return ["gep_mse"] + (["mvc_mse"] if hasattr(model.module, "mvc_decoder") else [])


def predictions(model, batch: Batch) -> dict[str, torch.Tensor]:
    """The model's outputs at the P masked positions (row-major over [B, L]): geneformer {"logits": [P, vocab]};
    scgpt {"gep": [P], "mvc": [P] when the head exists}, plus {"target": [P]} (true token / true value)."""
    if model.kind == "geneformer":
        inputs, labels = mask_genes(model, batch.ids, batch.masked)
        return {"logits": masked_gene_logits(model.module, inputs, batch.attention.long(), labels),
                "target": batch.ids[batch.masked]}
    inputs = masked_values(batch.values, batch.masked, float(model.args.get("mask_value", -1)))
    gep, mvc = scgpt_outputs(model.module, batch.ids, inputs, model.pad_token_id)
    out = {"gep": gep[batch.masked], "target": batch.values[batch.masked]}
    return out if mvc is None else {**out, "mvc": mvc[batch.masked]}


def loss_sums(outputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Summed (not averaged) objective terms of `predictions` output; divide by the masked count."""
    if "logits" in outputs:
        return {"masked_gene_ce": float(torch.nn.functional.cross_entropy(outputs["logits"], outputs["target"],
                                                                           reduction="sum"))}
    sums = {"gep_mse": float(((outputs["gep"] - outputs["target"]) ** 2).sum())}
    if "mvc" in outputs:
        sums["mvc_mse"] = float(((outputs["mvc"] - outputs["target"]) ** 2).sum())
    return sums


def cell_embeddings(model, batch: Batch) -> torch.Tensor:
    """[B, d_model] cell embeddings of the unmasked cells from the last block: the `<cls>` output where the
    model has one (scGPT, Geneformer V2), else the mean over gene tokens (Geneformer V1)."""
    hidden = model.encode(batch.ids, batch.values, batch.attention)
    if embedding_pooling(model) == "cls":
        return hidden[:, 0]
    genes = (batch.attention & (batch.ids != getattr(model, "cls_token_id", -1))).float()
    return (hidden * genes[..., None]).sum(1) / genes.sum(1, keepdim=True)


def embedding_pooling(model) -> str:
    return "cls" if getattr(model, "cls_token_id", None) is not None else "mean over gene tokens"


@contextmanager
def spliced(model, layer: int, positions: torch.Tensor, replace):
    """Inside: `model.blocks[layer]`'s output at `positions` ([B, L] bool) is `replace(x)`, x: [P, d_model] its
    outputs there (float32); replace None leaves the model as it is."""
    if replace is None:
        yield
        return

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        new = hidden.clone()
        new[positions] = replace(hidden[positions].float()).to(hidden.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = model.blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def dictionary_source_path(source: dict) -> Path | None:
    """The store the dictionary was trained on, when it is still where the source says."""
    store = source.get("store")
    return Path(store) if store and (Path(store) / "manifest.json").is_file() else None
