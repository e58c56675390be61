"""`jaxsae extract` and `jaxsae store add-genes`: parsers and runners, registered with jaxsae's CLI through the
`jaxsae.commands` entry points in pyproject.toml (jaxsae itself never imports this package)."""

from __future__ import annotations

import argparse
import dataclasses

_HELP = {
    "counts_layer": "where the raw counts are: X (default), raw (adata.raw.X) or a layers key",
    "gene_column": "var column with gene ids (Ensembl for Geneformer, symbols for scGPT); default: "
                   "var['ensembl_id'] or the index",
    "batch_size": "cells per forward pass",
    "cells_per_commit": "cells per commit window (resume granularity)",
    "include_special_tokens": "also write <cls>/<eos> rows to the token stores",
    "cell_embeddings": "write cell_mean / cell_cls stores",
    "store_dtype": "stored activation dtype: float32 or bfloat16",
    "compute_dtype": "bfloat16 runs the model under autocast (GPU)",
    "device": "auto, cpu, cuda, cuda:N",
    "shard_rows": "store rows per shard (write unit)",
    "chunk_rows": "store rows per chunk (read unit)",
    "overwrite": "replace stores that hold a different extraction",
    "progress_bar": "show a tqdm progress bar",
    "model_input_size": "Geneformer input length (default: the model's max_position_embeddings)",
    "max_seq_len": "scGPT max sequence length incl. <cls> (default: args.json)",
    "n_hvg": "scGPT: restrict to N highly variable genes ('args' = args.json's n_hvg; default: all genes, as "
             "scGPT's embedding path)",
    "hvg_flavor": "scanpy HVG flavor (seurat_v3 needs scikit-misc; seurat works without)",
    "include_zero_genes": "scGPT: feed all kept genes, zeros included",
    "seed": "seed of scGPT's gene subsampling for cells longer than max_seq_len",
    "binning_seed": "seed of scGPT's value binning (ties with bin edges get a random bin, as scGPT does); "
                    "recorded in the manifest",
    "duplicate_genes": "var rows naming the same model gene: sum (default), first, or error",
    "token_dictionary": "Geneformer token dictionary .pkl if not in the model folder",
    "gene_median_dictionary": "Geneformer gene median dictionary .pkl if not in the model folder",
    "gene_name_dictionary": "Geneformer gene name -> Ensembl dictionary .pkl if not in the model folder",
}


def _layers(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layers takes comma-separated integers, found {text!r}") from None


def _n_hvg(text: str):
    if text in ("args", "none", "None"):
        return None if text.lower() == "none" else "args"
    return int(text)


def add_extract_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `extract` verb to an argparse subparsers object; returns its parser."""
    from extract.config import DUPLICATE_POLICIES, ExtractConfig

    parser = subparsers.add_parser(
        "extract",
        help="AnnData of raw counts + model folder -> activation stores",
        description="Extract per-token and per-cell activations of a Geneformer or scGPT model into activation "
                    "stores, one per layer and kind. Rerunning the same command resumes an interrupted run.",
    )
    parser.add_argument("adata", help=".h5ad file with raw integer counts")
    parser.add_argument("model", help="model folder (Geneformer: config.json + weights + dictionaries; "
                                      "scGPT: args.json, vocab.json, best_model.pt)")
    parser.add_argument("out_dir", help="output folder (layer_{L}/{tokens,cell_mean,cell_cls})")
    parser.add_argument("--layers", type=_layers, default=[-1],
                        help="comma-separated block indices, negative from the end (default: -1)")
    for field in dataclasses.fields(ExtractConfig):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default,
                                help=_HELP[field.name])
        elif field.name == "n_hvg":
            parser.add_argument(flag, type=_n_hvg, default=field.default, help=_HELP[field.name])
        elif field.name == "duplicate_genes":
            parser.add_argument(flag, choices=DUPLICATE_POLICIES, default=field.default, help=_HELP[field.name])
        else:
            kind = int if "int" in str(field.type) else str
            parser.add_argument(flag, type=kind, default=field.default, help=_HELP[field.name])
    parser.set_defaults(fn=run_extract_cli)
    return parser


def run_extract_cli(args: argparse.Namespace) -> int:
    """Run the `extract` verb from parsed arguments; prints every store written. Returns 0; bad input raises
    ExtractError, which `jaxsae.cli.main` prints as one `error: ...` line (exit code 2)."""
    from extract.config import ExtractConfig
    from extract.run import extract
    from jaxsae.store import open_store

    config = ExtractConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ExtractConfig)})
    stores = extract(args.adata, args.model, args.out_dir, layers=args.layers, config=config)
    for layer, token_store in stores.items():
        for path in sorted(p for p in token_store.parent.iterdir() if (p / "manifest.json").is_file()):
            print(f"layer {layer} {path.name:<9} {path}  ({open_store(path).n_rows:,} rows)")
    return 0


def add_add_genes_parser(store_subparsers) -> argparse.ArgumentParser:
    """Add the `add-genes` verb to the subparsers of `jaxsae store`; returns its parser."""
    parser = store_subparsers.add_parser(
        "add-genes", help="write genes.tsv (token id -> gene) into a store extracted before gene tables existed, "
                          "from the model folder it was extracted with")
    parser.add_argument("path", help="an extraction store folder without genes.tsv")
    parser.add_argument("--model", required=True, help="the model folder the store was extracted with")
    for name in ("token_dictionary", "gene_median_dictionary", "gene_name_dictionary"):
        parser.add_argument("--" + name.replace("_", "-"), default=None, help=_HELP[name])
    parser.set_defaults(fn=run_add_genes_cli)
    return parser


def run_add_genes_cli(args: argparse.Namespace) -> int:
    """Write the store's genes.tsv from the model's vocabulary; a wrong model is an ExtractError (exit 2)."""
    from extract.genes import add_genes

    files = {k: getattr(args, k) for k in ("token_dictionary", "gene_median_dictionary", "gene_name_dictionary")
             if getattr(args, k) is not None}
    path = add_genes(args.path, args.model, **files)
    print(f"gene table: {path}")
    return 0
