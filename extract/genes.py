"""Gene tables of extraction stores: the model's token id -> gene table written as `genes.tsv` in a store."""

from __future__ import annotations

from pathlib import Path

from extract.errors import ExtractError
from extract.models import load_vocabulary
from jaxsae.store.genes import write_genes
from jaxsae.store.manifest import read_manifest


def add_genes(store_path: str | Path, model_dir: str | Path, **geneformer_files) -> Path:
    """Write `genes.tsv` into an existing store from the vocabulary of the model it was extracted with.

    Only the model's vocabulary is read (the weights are hashed, not loaded). Refuses (ExtractError) a model
    folder whose checkpoint sha256 differs from the one in the store's manifest, naming both; a folder that
    is not a store raises StoreError. geneformer_files: token_dictionary / gene_median_dictionary /
    gene_name_dictionary paths when they are not in the model folder. Returns the written file's path.
    """
    store_path = Path(store_path)
    source = read_manifest(store_path).source
    recorded = source.get("checkpoint_sha256")
    if recorded is None:
        raise ExtractError(
            f"store {store_path} was not written by jaxsae extract (its manifest source has no checkpoint_sha256, "
            f"model={source.get('model')!r}); gene tables belong to extraction stores: pass an extraction store"
        )
    vocabulary = load_vocabulary(model_dir, **geneformer_files)
    if vocabulary.checkpoint_hash != recorded:
        raise ExtractError(
            f"model folder {model_dir} ({vocabulary.kind}, checkpoint sha256 {vocabulary.checkpoint_hash}) is not "
            f"the model store {store_path} was extracted with (checkpoint sha256 {recorded}, "
            f"{source.get('model')} at {source.get('model_dir')}); pass that model folder with --model"
        )
    return write_genes(store_path, vocabulary.gene_table())
