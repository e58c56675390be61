"""Geneformer from a local Hugging Face folder: config.json, weights, and the Geneformer dictionaries.

Folder layout (as downloaded from the Geneformer repository; the dictionaries live next to config.json or
are passed explicitly):

    config.json                      BertConfig (model_type "bert")
    model.safetensors | pytorch_model.bin
    token_dictionary*.pkl            {ensembl_id: token id}, with <pad>, <mask> (V2 also <cls>, <eos>)
    gene_median_dictionary*.pkl      {ensembl_id: non-zero median}
    gene_name_id_dict*.pkl           optional {symbol: ensembl_id}

V1 vs V2 is read from the files: the V2 layout (<cls> + genes + <eos>) when the token dictionary has
<cls> and <eos>; the input size is config.max_position_embeddings (2,048 for V1, 4,096 for V2).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from extract.errors import ExtractError
from extract.models.base import ExtractModel, ModelVocabulary, require_files, resolve_device, sha256_files
from extract.tokenize.geneformer import GeneformerDictionaries, GeneformerTokenizer

log = logging.getLogger("jaxsae.extract")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a torch pickle read with weights_only=True (no code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here is a bad checkpoint file
        raise ExtractError(f"cannot load weights from {path}: {err}") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExtractError(f"{path} does not hold a state dict of tensors")
    return state


class GeneformerModel(ExtractModel):
    kind = "geneformer"

    def __init__(self, model_dir, module, dictionaries: GeneformerDictionaries, weights: Path, device):
        self.model_dir = Path(model_dir)
        self.module = module
        self.dictionaries = dictionaries
        self.config = module.config
        self.blocks = list(module.bert.encoder.layer)
        self.d_model = int(self.config.hidden_size)
        self.special_tokens = dictionaries.has_special_tokens
        self.model_input_size = int(self.config.max_position_embeddings)
        self.pad_token_id = dictionaries.token_ids["<pad>"]
        self.cls_token_id = dictionaries.token_ids["<cls>"] if self.special_tokens else None
        self.device = device
        self.checkpoint_hash = checkpoint_hash(self.model_dir, weights, dictionaries)

    def gene_table(self):
        return self.dictionaries.gene_table()

    def make_tokenizer(self, var, *, gene_column=None, model_input_size=None, duplicate_genes="sum", **_unused):
        size = self.model_input_size if model_input_size is None else int(model_input_size)
        if size > self.model_input_size:
            raise ExtractError(
                f"model_input_size={size} exceeds the model's max_position_embeddings={self.model_input_size}"
            )
        return GeneformerTokenizer(
            self.dictionaries, var, model_input_size=size, special_tokens=self.special_tokens, gene_column=gene_column,
            duplicate_genes=duplicate_genes,
        )

    def encode(self, input_ids, values, attention_mask):
        out = self.module.bert(input_ids=input_ids, attention_mask=attention_mask.long())
        return out.last_hidden_state

    def describe(self) -> dict:
        return {
            **super().describe(),
            "layout": "V2 (<cls>, <eos>)" if self.special_tokens else "V1 (no special tokens)",
            "dictionaries": {k: p.name for k, p in self.dictionaries.files.items()},
        }


def checkpoint_hash(model_dir: Path, weights: Path, dictionaries: GeneformerDictionaries) -> str:
    """sha256 of config.json, the weights file and the dictionaries (what store manifests record)."""
    return sha256_files([model_dir / "config.json", weights, *dictionaries.files.values()])


def find_weights(model_dir: Path) -> Path:
    """The weights file of a Geneformer folder (model.safetensors, else pytorch_model.bin)."""
    require_files(model_dir, ["config.json"], "Geneformer model")
    weights = next((model_dir / n for n in WEIGHT_FILES if (model_dir / n).is_file()), None)
    if weights is None:
        raise ExtractError(f"Geneformer model folder {model_dir} has no weights; expected one of {list(WEIGHT_FILES)}")
    return weights


def geneformer_vocabulary(model_dir: str | Path, **dictionary_files) -> ModelVocabulary:
    """The token dictionary (+ gene names) and checkpoint hash of a Geneformer folder; the weights are hashed,
    not loaded. dictionary_files: token_dictionary / gene_median_dictionary / gene_name_dictionary paths."""
    model_dir = Path(model_dir)
    weights = find_weights(model_dir)
    dictionaries = GeneformerDictionaries.from_dir(model_dir, **dictionary_files)
    return ModelVocabulary("geneformer", model_dir, checkpoint_hash(model_dir, weights, dictionaries),
                           dictionaries.gene_table())


def load_geneformer(
    model_dir: str | Path,
    *,
    device: str = "cpu",
    token_dictionary: str | Path | None = None,
    gene_median_dictionary: str | Path | None = None,
    gene_name_dictionary: str | Path | None = None,
) -> GeneformerModel:
    """Load a Geneformer `BertForMaskedLM` and its dictionaries from a local folder, in eval mode on `device`."""
    from transformers import BertConfig, BertForMaskedLM

    model_dir = Path(model_dir)
    weights = find_weights(model_dir)
    dictionaries = GeneformerDictionaries.from_dir(
        model_dir,
        token_dictionary=token_dictionary,
        gene_median_dictionary=gene_median_dictionary,
        gene_name_dictionary=gene_name_dictionary,
    )
    try:
        config_dict = json.loads((model_dir / "config.json").read_text())
    except json.JSONDecodeError as err:
        raise ExtractError(f"{model_dir / 'config.json'} is not valid JSON: {err}") from err
    if config_dict.get("model_type", "bert") != "bert":
        raise ExtractError(f"config.json has model_type={config_dict.get('model_type')!r}; Geneformer is 'bert'")
    config = BertConfig.from_dict(config_dict)
    max_token = max(dictionaries.token_ids.values())
    if max_token >= config.vocab_size:
        raise ExtractError(
            f"token dictionary uses id {max_token} but config.json has vocab_size={config.vocab_size}: the "
            "dictionary does not belong to this model"
        )
    module = BertForMaskedLM(config)
    state = load_weights(weights)
    if state and not any(k.startswith("bert.") for k in state):
        state = {f"bert.{k}": v for k, v in state.items()}
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ExtractError(f"{weights} does not fit config.json: {err}") from err
    missing = [k for k in result.missing_keys if k.startswith("bert.") and not k.endswith("position_ids")]
    if missing:
        raise ExtractError(f"{weights} lacks weights of the encoder: {missing[:5]} ({len(missing)} in all)")
    if result.unexpected_keys:
        log.info(f"ignoring {len(result.unexpected_keys)} weights not used by BertForMaskedLM, e.g. "
                 f"{result.unexpected_keys[:3]}")
    device = resolve_device(device)
    module.to(device).eval()
    return GeneformerModel(model_dir, module, dictionaries, weights, device)
