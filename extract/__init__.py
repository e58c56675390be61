"""PyTorch side of jaxsae: tokenisers, model loaders, hooks and resumable extraction into activation stores.

Public API:
    extract.run.extract(adata_path, model_path, out_dir, layers=[...], **ExtractConfig fields) -> {layer: store}
    extract.run.ExtractConfig        extraction settings
    extract.models.load_model(dir)   Geneformer (HF folder) or scGPT (args.json, vocab.json, best_model.pt)
    extract.tokenize                 GeneformerTokenizer, ScGPTTokenizer
    extract.demo.prepare_demo(cache_dir, model_kind="geneformer" | "scgpt") -> (adata_path, model_dir)
    extract.demo_pretrain            reproduces the committed demo weights (python -m extract.demo_pretrain)
    extract.cli.run_extract / run_add_genes   the `jaxsae extract` and `jaxsae store add-genes`
                                     verbs (`jaxsae.commands` entry points: (argv, prog) -> exit status)
    extract.genes.add_genes(store, model_dir)          genes.tsv for a store extracted before gene tables
    extract.models.load_vocabulary(dir)                a model's gene table + checkpoint hash, weights unloaded
    extract.torch_dictionary.to_torch(dictionary)      a jaxsae dictionary as a torch module (encode, decode, forward)
    extract.errors.ExtractError      every refusal of bad input (= jaxsae.errors.ExtractError)
Modules import torch lazily through their own imports; `import extract` alone does not.
"""

from extract.errors import ExtractError

__all__ = ["ExtractError"]
