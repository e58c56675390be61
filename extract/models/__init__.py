"""Model loaders: Geneformer (Hugging Face folder) and scGPT (args.json, vocab.json, best_model.pt)."""

from pathlib import Path

from extract.errors import ExtractError
from extract.models.base import ExtractModel, ModelVocabulary
from extract.models.geneformer import GeneformerModel, geneformer_vocabulary, load_geneformer
from extract.models.scgpt import ScGPTModel, TransformerModel, load_scgpt, scgpt_vocabulary


def load_model(model_dir: str | Path, *, device: str = "cpu", **geneformer_files) -> ExtractModel:
    """Load the model in `model_dir`, telling Geneformer (config.json) from scGPT (args.json + vocab.json)."""
    if model_kind(model_dir) == "geneformer":
        return load_geneformer(model_dir, device=device, **geneformer_files)
    return load_scgpt(model_dir, device=device)


def load_vocabulary(model_dir: str | Path, **geneformer_files) -> ModelVocabulary:
    """The vocabulary (gene table) and checkpoint hash of the model in `model_dir`, without its network."""
    if model_kind(model_dir) == "geneformer":
        return geneformer_vocabulary(model_dir, **geneformer_files)
    return scgpt_vocabulary(model_dir)


def model_kind(model_dir: str | Path) -> str:
    """"geneformer" (config.json) or "scgpt" (args.json / best_model.pt); ExtractError for anything else."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ExtractError(f"model folder {model_dir} does not exist")
    if (model_dir / "config.json").is_file():
        return "geneformer"
    if (model_dir / "args.json").is_file() or (model_dir / "best_model.pt").is_file():
        return "scgpt"
    raise ExtractError(
        f"{model_dir} is neither a Geneformer folder (config.json + weights + dictionaries) nor an scGPT "
        "folder (args.json, vocab.json, best_model.pt)"
    )


__all__ = [
    "ExtractModel",
    "GeneformerModel",
    "ModelVocabulary",
    "ScGPTModel",
    "TransformerModel",
    "load_geneformer",
    "load_model",
    "load_scgpt",
    "load_vocabulary",
    "model_kind",
]
