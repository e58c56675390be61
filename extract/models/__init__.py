"""Model loaders: Geneformer (Hugging Face folder) and scGPT (args.json, vocab.json, best_model.pt)."""

from pathlib import Path

from extract.errors import ExtractError
from extract.models.base import ExtractModel
from extract.models.geneformer import GeneformerModel, load_geneformer
from extract.models.scgpt import ScGPTModel, TransformerModel, load_scgpt


def load_model(model_dir: str | Path, *, device: str = "cpu", **geneformer_files) -> ExtractModel:
    """Load the model in `model_dir`, telling Geneformer (config.json) from scGPT (args.json + vocab.json)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ExtractError(f"model folder {model_dir} does not exist")
    if (model_dir / "config.json").is_file():
        return load_geneformer(model_dir, device=device, **geneformer_files)
    if (model_dir / "args.json").is_file() or (model_dir / "best_model.pt").is_file():
        return load_scgpt(model_dir, device=device)
    raise ExtractError(
        f"{model_dir} is neither a Geneformer folder (config.json + weights + dictionaries) nor an scGPT "
        "folder (args.json, vocab.json, best_model.pt)"
    )


__all__ = [
    "ExtractModel",
    "GeneformerModel",
    "ScGPTModel",
    "TransformerModel",
    "load_geneformer",
    "load_model",
    "load_scgpt",
]
