"""Builders of small random models saved in the official folder layouts, and of small count AnnData files.

Tests and the demo save models exactly as users receive them (a Hugging Face Geneformer folder with its
dictionaries; an scGPT folder with args.json, vocab.json, best_model.pt) and load them back through the
public loaders, so the loaders are exercised the same way as with downloaded checkpoints.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from extract.models.scgpt import TransformerModel


def geneformer_token_dictionary(ensembl_ids: list[str], *, special_tokens: bool) -> dict[str, int]:
    """Geneformer token dictionary: <pad> 0, <mask> 1, (V2: <cls> 2, <eos> 3), then genes."""
    specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if special_tokens else [])
    return {token: i for i, token in enumerate(specials + list(ensembl_ids))}


def write_geneformer_dictionaries(
    folder: Path,
    token_ids: dict[str, int],
    medians: dict[str, float],
    symbol_to_id: dict[str, str] | None = None,
    suffix: str = "test",
) -> None:
    """Write the dictionaries as Geneformer ships them (plain pickles)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"token_dictionary": token_ids, "gene_median_dictionary": medians}
    if symbol_to_id is not None:
        files["gene_name_id_dict"] = symbol_to_id
    for stem, content in files.items():
        with open(folder / f"{stem}_{suffix}.pkl", "wb") as f:
            pickle.dump(content, f)


def new_geneformer_module(
    n_tokens: int,
    *,
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    d_ff: int = 64,
    max_positions: int = 256,
    seed: int = 0,
):
    """A randomly initialised Geneformer-architecture BertForMaskedLM (ReLU, as Geneformer)."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=n_tokens,
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        intermediate_size=d_ff,
        max_position_embeddings=max_positions,
        hidden_act="relu",
        hidden_dropout_prob=0.02,
        attention_probs_dropout_prob=0.02,
        pad_token_id=0,
        layer_norm_eps=1e-12,
    )
    torch.manual_seed(seed)
    return BertForMaskedLM(config)


def write_geneformer_folder(
    folder: str | Path,
    ensembl_ids: list[str],
    medians: dict[str, float] | None = None,
    *,
    special_tokens: bool = True,
    symbol_to_id: dict[str, str] | None = None,
    module=None,
    **module_options,
) -> Path:
    """Save a Geneformer model folder: config.json, model.safetensors and the dictionaries.

    medians: {ensembl_id: non-zero median}; default 1.0 for every gene. module: a trained
    BertForMaskedLM to save; default a new random one built with `module_options`.
    """
    folder = Path(folder)
    token_ids = geneformer_token_dictionary(ensembl_ids, special_tokens=special_tokens)
    if module is None:
        module = new_geneformer_module(len(token_ids), **module_options)
    module.save_pretrained(folder)
    medians = medians if medians is not None else {g: 1.0 for g in ensembl_ids}
    write_geneformer_dictionaries(folder, token_ids, medians, symbol_to_id)
    return folder


def write_scgpt_folder(
    folder: str | Path,
    genes: list[str],
    *,
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    d_hid: int = 64,
    n_bins: int = 11,
    max_seq_len: int = 64,
    n_hvg: int | None = None,
    input_emb_style: str = "continuous",
    fused_attention: bool = False,
    seed: int = 0,
) -> Path:
    """Save an scGPT folder (args.json, vocab.json, best_model.pt) with random weights, including the
    expression (GEP) and MVC heads and a classification head's weights (which loading skips).
    fused_attention: name attention weights as flash-attn does
    (`self_attn.Wqkv.weight/bias`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {g: i for i, g in enumerate(list(genes) + ["<pad>", "<cls>", "<eoc>"])}
    args = {
        "embsize": d_model, "nheads": n_heads, "d_hid": d_hid, "nlayers": n_layers, "n_layers_cls": 3,
        "dropout": 0.2, "n_bins": n_bins, "max_seq_len": max_seq_len, "pad_token": "<pad>", "pad_value": -2,
        "mask_value": -1, "input_style": "binned", "input_emb_style": input_emb_style, "n_hvg": n_hvg,
        "fast_transformer": fused_attention, "pre_norm": False, "MVC": True,
    }
    torch.manual_seed(seed)
    module = TransformerModel(
        len(vocab), d_model, n_heads, d_hid, n_layers, pad_token_id=vocab["<pad>"], pad_value=-2, n_bins=n_bins,
        input_emb_style=input_emb_style,
        heads=("decoder", "mvc_decoder"),
    )
    with torch.no_grad():  # non-trivial norms so that a wrong parameter mapping shows up in outputs
        for name, param in module.named_parameters():
            if "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    state = module.state_dict()
    # scGPT's cell-type head, as official fine-tuned checkpoints hold it; jaxsae never builds it (skipped on load)
    state |= {"cls_decoder.out_layer.weight": torch.randn(1, d_model), "cls_decoder.out_layer.bias": torch.zeros(1)}
    if fused_attention:
        state = {k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v for k, v in state.items()}
    torch.save(state, folder / "best_model.pt")
    (folder / "args.json").write_text(json.dumps(args, indent=2))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return folder


def write_counts_h5ad(
    path: str | Path,
    n_cells: int,
    gene_names: list[str],
    *,
    seed: int = 0,
    mean: float = 1.0,
    var: pd.DataFrame | None = None,
) -> Path:
    """A small .h5ad of random integer counts (CSR float32, Poisson with gene-specific rates)."""
    import anndata

    rng = np.random.default_rng(seed)
    rates = rng.gamma(0.5, mean * 2, size=len(gene_names))
    counts = rng.poisson(rates, size=(n_cells, len(gene_names))).astype(np.float32)
    var = var if var is not None else pd.DataFrame(index=gene_names)
    adata = anndata.AnnData(
        X=sp.csr_matrix(counts), obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]), var=var
    )
    adata.write_h5ad(path)
    return Path(path)
