"""scGPT's `TransformerModel` as a plain PyTorch module whose parameter names load official checkpoints.

Folder layout (as downloaded, e.g. scGPT_human):

    args.json        embsize, nheads, d_hid, nlayers, n_layers_cls, n_bins, max_seq_len, pad_token,
                     pad_value, input_emb_style, n_hvg, pre_norm, ...
    vocab.json       {gene symbol or special token: id}
    best_model.pt    state dict (torch.load with weights_only=True)

Parameter names follow scGPT: `encoder.embedding`, `encoder.enc_norm`, `value_encoder.linear1/linear2/norm`,
`transformer_encoder.layers.N.self_attn.in_proj_weight/in_proj_bias/out_proj`, `linear1/linear2/norm1/norm2`,
and the pretraining heads `decoder.fc.*` (GEP) and `mvc_decoder.gene2query/W` (MVC). Checkpoints saved with
flash-attn (`self_attn.Wqkv.weight/bias`) are renamed to in_proj on load, as scGPT itself does when flash-attn
is not installed; the q/k/v stacking is the same. Runs on CPU or CUDA with PyTorch attention (no flash-attn).
Extraction runs only the encoder; the GEP and MVC heads are built when present for the demo pretraining (see
HEADS); the weights of other heads (cls_decoder, zero-probability heads) are skipped on load.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from extract.errors import ExtractError
from extract.models.base import ExtractModel, ModelVocabulary, require_files, resolve_device, sha256_files
from extract.hvg import streamed_hvg
from extract.tokenize.scgpt import ScGPTTokenizer, load_vocab, vocab_gene_table

log = logging.getLogger("jaxsae.extract")
REQUIRED_FILES = ["args.json", "vocab.json", "best_model.pt"]
ENCODING_PREFIXES = ("encoder.", "value_encoder.", "bn.", "transformer_encoder.")
# The heads built when a checkpoint has them (name -> a key that shows it): GEP and MVC, the objectives of the
# demo pretraining (extract.pretraining.scgpt runs them). Other heads of official checkpoints (cls_decoder,
# the explicit-zero-probability sub-heads decoder.zero_logit / mvc_decoder.W_zero_logit, ...) are never run by
# jaxsae, so they are not built and their weights are skipped on load.
HEADS = {"decoder": "decoder.fc.0.weight", "mvc_decoder": "mvc_decoder.gene2query.weight"}


class GeneEncoder(nn.Module):
    def __init__(self, n_tokens: int, d_model: int, padding_idx: int):
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, x):
        return self.enc_norm(self.embedding(x))


class ContinuousValueEncoder(nn.Module):
    def __init__(self, d_model: int, max_value: float = 512.0):
        super().__init__()
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.max_value = max_value

    def forward(self, x):
        x = torch.clamp(x.unsqueeze(-1), max=self.max_value)
        return self.norm(self.linear2(self.activation(self.linear1(x))))


class CategoryValueEncoder(nn.Module):
    def __init__(self, n_bins: int, d_model: int, padding_idx: int | None):
        super().__init__()
        self.embedding = nn.Embedding(n_bins, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, x):
        return self.enc_norm(self.embedding(x.long()))


class ExprDecoder(nn.Module):
    """The GEP head (`decoder.fc.*`): per-token expression value."""

    def __init__(self, d_model: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(d_model, d_model), nn.LeakyReLU(), nn.Linear(d_model, d_model), nn.LeakyReLU(),
            nn.Linear(d_model, 1),
        )

    def forward(self, x):
        return self.fc(x).squeeze(-1)


class MVCDecoder(nn.Module):
    """The 'inner product' MVC head (`mvc_decoder.gene2query`, `mvc_decoder.W`)."""

    def __init__(self, d_model: int):
        super().__init__()
        self.gene2query = nn.Linear(d_model, d_model)
        self.query_activation = nn.Sigmoid()
        self.W = nn.Linear(d_model, d_model, bias=False)

    def forward(self, cell_emb, gene_embs):
        """cell_emb: [B, d]; gene_embs: [B, L, d] (the gene encoder's output) -> [B, L] predicted values."""
        query = self.query_activation(self.gene2query(gene_embs))
        return torch.bmm(self.W(query), cell_emb.unsqueeze(2)).squeeze(2)


class TransformerModel(nn.Module):
    """scGPT's encoder with official parameter names. `_encode` is scGPT's `TransformerModel._encode`."""

    def __init__(
        self,
        n_tokens: int,
        d_model: int,
        n_heads: int,
        d_hid: int,
        n_layers: int,
        *,
        pad_token_id: int,
        pad_value: float,
        n_bins: int,
        input_emb_style: str = "continuous",
        pre_norm: bool = False,
        batchnorm: bool = False,
        heads: tuple[str, ...] = (),
    ):
        super().__init__()
        self.input_emb_style = input_emb_style
        self.encoder = GeneEncoder(n_tokens, d_model, padding_idx=pad_token_id)
        if input_emb_style == "continuous":
            self.value_encoder = ContinuousValueEncoder(d_model)
        elif input_emb_style == "category":
            self.value_encoder = CategoryValueEncoder(n_bins + 1, d_model, padding_idx=int(pad_value) % (n_bins + 1))
        elif input_emb_style == "scaling":
            self.value_encoder = nn.Identity()
        else:
            raise ExtractError(f"input_emb_style={input_emb_style!r}; expected continuous, category or scaling")
        if batchnorm:
            self.bn = nn.BatchNorm1d(d_model, eps=6.1e-5)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, d_hid, dropout=0.0, batch_first=True, norm_first=pre_norm)
        self.transformer_encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        if "decoder" in heads:
            self.decoder = ExprDecoder(d_model)
        if "mvc_decoder" in heads:
            self.mvc_decoder = MVCDecoder(d_model)

    def _encode(self, src, values, src_key_padding_mask):
        """src: [B, L] int64 gene tokens; values: [B, L] float; src_key_padding_mask: [B, L] bool, True = pad."""
        genes = self.encoder(src)
        values = self.value_encoder(values)
        total = genes * values.unsqueeze(2) if self.input_emb_style == "scaling" else genes + values
        if getattr(self, "bn", None) is not None:
            total = self.bn(total.permute(0, 2, 1)).permute(0, 2, 1)
        return self.transformer_encoder(total, src_key_padding_mask=src_key_padding_mask)


def rename_fused_attention(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """flash-attn names `self_attn.Wqkv.weight/bias` -> `self_attn.in_proj_weight/bias` (same q/k/v order)."""
    return {k.replace("self_attn.Wqkv.", "self_attn.in_proj_"): v for k, v in state.items()}


def heads_from_state(state: dict[str, torch.Tensor]) -> tuple[str, ...]:
    """The pretraining heads (HEADS) the checkpoint holds; the demo pretraining trains and evaluates them."""
    return tuple(head for head, key in HEADS.items() if key in state)


class ScGPTModel(ExtractModel):
    kind = "scgpt"

    def __init__(self, model_dir, module: TransformerModel, args: dict, vocab: dict[str, int], device):
        self.model_dir = Path(model_dir)
        self.module = module
        self.args = args
        self.vocab = vocab
        self.blocks = list(module.transformer_encoder.layers)
        self.d_model = module.encoder.embedding.embedding_dim
        self.pad_token = args.get("pad_token", "<pad>")
        self.pad_token_id = vocab[self.pad_token]
        self.cls_token_id = vocab["<cls>"]
        self.pad_value = float(args.get("pad_value", -2))
        self.n_bins = int(args.get("n_bins", 51))
        self.max_seq_len = int(args.get("max_seq_len", 1200))
        self.n_hvg = args.get("n_hvg")
        self.device = device
        self.checkpoint_hash = checkpoint_hash(self.model_dir)

    def gene_table(self):
        return vocab_gene_table(self.vocab)

    def make_tokenizer(
        self, var, *, gene_column=None, counts_source=None, n_hvg=None, hvg_flavor="seurat_v3",
        max_seq_len=None, include_zero_genes=False, seed=0, binning_seed=0, duplicate_genes="sum", **_unused,
    ):
        """n_hvg: None (all genes, as scGPT's embedding path), 'args' (args.json's n_hvg) or an int; HVG
        selection needs `counts_source` (a CountSource(s): `n_cells`, `rows(lo, hi)` -> CSR counts), read in row
        blocks (extract.hvg)."""
        n_hvg = self.n_hvg if n_hvg == "args" else n_hvg
        gene_mask = None
        if n_hvg:
            if counts_source is None:
                raise ExtractError("highly variable gene selection was asked for (n_hvg) without the counts; "
                                   "expected counts_source=<the CountSource>; pass it")
            gene_mask = streamed_hvg(counts_source, int(n_hvg), hvg_flavor)
        return ScGPTTokenizer(
            self.vocab, var, n_bins=self.n_bins, max_seq_len=max_seq_len or self.max_seq_len,
            pad_token=self.pad_token, pad_value=self.pad_value, gene_column=gene_column, gene_mask=gene_mask,
            hvg_flavor=hvg_flavor,
            include_zero_genes=include_zero_genes, seed=seed, binning_seed=binning_seed,
            duplicate_genes=duplicate_genes,
        )

    def encode(self, input_ids, values, attention_mask):
        return self.module._encode(input_ids, values, ~attention_mask)

    def describe(self) -> dict:
        return {**super().describe(), "input_emb_style": self.module.input_emb_style}


def checkpoint_hash(model_dir: Path) -> str:
    """sha256 of args.json, vocab.json and best_model.pt (what store manifests record)."""
    return sha256_files([model_dir / n for n in REQUIRED_FILES])


def scgpt_vocabulary(model_dir: str | Path) -> ModelVocabulary:
    """vocab.json and the checkpoint hash of an scGPT folder; best_model.pt is hashed, not loaded."""
    model_dir = Path(model_dir)
    require_files(model_dir, REQUIRED_FILES, "scGPT model")
    return ModelVocabulary("scgpt", model_dir, checkpoint_hash(model_dir),
                           vocab_gene_table(load_vocab(model_dir / "vocab.json")))


def load_scgpt(model_dir: str | Path, *, device: str = "cpu") -> ScGPTModel:
    """Load an scGPT checkpoint folder (args.json, vocab.json, best_model.pt) in eval mode on `device`."""
    model_dir = Path(model_dir)
    require_files(model_dir, REQUIRED_FILES, "scGPT model")
    try:
        args = json.loads((model_dir / "args.json").read_text())
    except json.JSONDecodeError as err:
        raise ExtractError(f"{model_dir / 'args.json'} is not valid JSON: {err}") from err
    vocab = load_vocab(model_dir / "vocab.json")
    missing_args = [k for k in ("embsize", "nheads", "d_hid", "nlayers") if k not in args]
    if missing_args:
        raise ExtractError(f"{model_dir / 'args.json'} lacks {missing_args}")
    if args.get("input_style", "binned") != "binned":
        raise ExtractError(f"args.json input_style={args['input_style']!r}: only binned inputs are supported")
    if args.get("use_batch_labels") or args.get("DSBN") or args.get("domain_spec_batchnorm"):
        raise ExtractError("checkpoints with batch labels / domain-specific batchnorm are not supported")
    pad_token = args.get("pad_token", "<pad>")
    for token in (pad_token, "<cls>"):
        if token not in vocab:
            raise ExtractError(f"{model_dir / 'vocab.json'} has no {token} token")
    from extract.models.geneformer import load_weights

    state = rename_fused_attention(load_weights(model_dir / "best_model.pt"))
    if "encoder.embedding.weight" not in state:
        raise ExtractError(f"{model_dir / 'best_model.pt'} has no encoder.embedding.weight: not an scGPT checkpoint")
    module = TransformerModel(
        n_tokens=state["encoder.embedding.weight"].shape[0],
        d_model=int(args["embsize"]),
        n_heads=int(args["nheads"]),
        d_hid=int(args["d_hid"]),
        n_layers=int(args["nlayers"]),
        pad_token_id=vocab[pad_token],
        pad_value=float(args.get("pad_value", -2)),
        n_bins=int(args.get("n_bins", 51)),
        input_emb_style=args.get("input_emb_style", "continuous"),
        pre_norm=bool(args.get("pre_norm", False)),
        batchnorm="bn.weight" in state,
        heads=heads_from_state(state),
    )
    own = module.state_dict()
    unexpected = [k for k in state if k not in own]
    bad = [k for k in unexpected if k.startswith(ENCODING_PREFIXES)]
    missing = [k for k in own if k not in state]
    if bad or missing:
        raise ExtractError(
            f"{model_dir / 'best_model.pt'} does not match args.json (embsize/nheads/d_hid/nlayers): "
            f"missing {missing[:4]}, unexpected {bad[:4]}"
        )
    if unexpected:
        log.info(f"ignoring {len(unexpected)} checkpoint weights of heads not built here, e.g. {unexpected[:3]}")
    try:
        module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    except RuntimeError as err:
        raise ExtractError(f"{model_dir / 'best_model.pt'} does not match args.json: {err}") from err
    device = resolve_device(device)
    module.to(device).eval()
    return ScGPTModel(model_dir, module, args, vocab, device)
