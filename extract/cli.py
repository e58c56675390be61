"""`jaxsae extract` and `jaxsae store add-genes`: their arguments and runners, registered with jaxsae's CLI
through the `jaxsae.commands` entry points in pyproject.toml (jaxsae itself never imports this package). They
read their arguments like every jaxsae verb (`jaxsae.flags.parse`); the flags' help is ExtractConfig's field
docstrings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Literal

import tyro

from extract.config import ExtractConfig
from jaxsae.flags import parse
from jaxsae.slurm import SlurmJob

Positional = tyro.conf.Positional

Layers = tuple[int, ...]


def _layers_rule(type_info: tyro.constructors.PrimitiveTypeInfo) -> tyro.constructors.PrimitiveConstructorSpec | None:
    """`--layers 4 -1` or `--layers 4,-1`."""
    if type_info.type != Layers:
        return None
    return tyro.constructors.PrimitiveConstructorSpec(
        nargs="+", metavar="LAYER",
        instance_from_str=lambda args: tuple(int(part) for arg in args for part in arg.split(",") if part.strip()),
        is_instance=lambda value: isinstance(value, tuple),
        str_from_instance=lambda value: [str(layer) for layer in value])


_REGISTRY = tyro.constructors.ConstructorRegistry()
_REGISTRY.primitive_rule(_layers_rule)


@dataclasses.dataclass(frozen=True)
class Extract:
    """Extract per-token and per-cell activations of a Geneformer or scGPT model into activation stores, one
    per layer and kind. Rerunning the same command resumes an interrupted run."""

    adata: Annotated[str, Positional, tyro.conf.arg(metavar="ADATA")]
    """.h5ad file with raw integer counts, or many: a folder of .h5ad files, a quoted glob ('atlas/*.h5ad') or a
    text file listing one path per line; read as one dataset in that order (files must share their genes)."""
    model: Annotated[str, Positional, tyro.conf.arg(metavar="MODEL")]
    """Model folder (Geneformer: config.json + weights + dictionaries; scGPT: args.json, vocab.json,
    best_model.pt)."""
    out_dir: Annotated[str, Positional, tyro.conf.arg(metavar="OUT_DIR")]
    """Output folder (layer_{L}/{tokens,cell_mean,cell_cls})."""
    layers: Layers = (-1,)
    """Block indices, negative from the end (`--layers 4 -1` or `--layers 4,-1`)."""
    config: Annotated[ExtractConfig, tyro.conf.arg(name="")] = dataclasses.field(default_factory=ExtractConfig)
    launch: Literal["here", "slurm"] = "here"
    """here: extract in this process; slurm: write OUT_DIR/slurm/extract.sbatch, a job array of --workers
    tasks, each this command with --worker i/N, and submit it with sbatch (extract.launch)."""
    workers: int = 1
    """Array tasks of --launch slurm (the N of every task's --worker i/N)."""
    dry_run: bool = False
    """With --launch slurm: write the script and print the sbatch command, submit nothing."""
    slurm: SlurmJob = SlurmJob()
    """How each array task of --launch slurm is allocated."""


def run_extract(argv: Sequence[str], prog: str) -> int:
    """Run `jaxsae extract`; prints every store written. Bad input raises ExtractError, which `jaxsae.cli.main`
    prints as one `error: ...` line (exit status 2)."""
    args = parse(Extract, argv, prog, _REGISTRY)  # first: `--help` and bad flags never import torch
    if args.launch == "slurm":
        from extract.launch import launch_slurm

        lines, _ = launch_slurm(args.adata, args.model, args.out_dir, list(args.layers), args.config, args.workers,
                                args.slurm, args.dry_run)
        print("\n".join(lines))
        return 0
    if args.dry_run or args.workers != 1:
        from extract.errors import ExtractError

        raise ExtractError(f"--dry_run / --workers {args.workers} without --launch slurm: they describe a job array; "
                           "add --launch slurm, or use --worker i/N to run one worker here")
    from extract.run import extract
    from jaxsae.store import open_store

    stores = extract(args.adata, args.model, args.out_dir, layers=list(args.layers), config=args.config)
    for layer, token_store in stores.items():
        part = token_store.name if token_store.name.startswith("part-") else None  # a worker's part store
        layer_dir = token_store.parent.parent if part else token_store.parent
        for kind in sorted(p.name for p in layer_dir.iterdir() if p.is_dir()):
            path = layer_dir / kind / part if part else layer_dir / kind
            if (path / "manifest.json").is_file():
                print(f"layer {layer} {kind:<9} {path}  ({open_store(path).n_rows:,} rows)")
    return 0


@dataclasses.dataclass(frozen=True)
class AddGenes:
    """Write genes.tsv (token id -> gene) into a store extracted before gene tables existed, from the model
    folder it was extracted with."""

    path: Annotated[str, Positional, tyro.conf.arg(metavar="STORE")]
    """An extraction store folder without genes.tsv."""
    model: str
    """The model folder the store was extracted with."""
    token_dictionary: str | None = None
    """Geneformer token dictionary .pkl, if not in the model folder."""
    gene_median_dictionary: str | None = None
    """Geneformer gene median dictionary .pkl, if not in the model folder."""
    gene_name_dictionary: str | None = None
    """Geneformer gene name -> Ensembl dictionary .pkl, if not in the model folder."""


def run_add_genes(argv: Sequence[str], prog: str) -> int:
    """Write the store's genes.tsv from the model's vocabulary; a wrong model is an ExtractError (exit 2)."""
    args = parse(AddGenes, argv, prog)
    from extract.genes import add_genes

    files = {k: getattr(args, k) for k in ("token_dictionary", "gene_median_dictionary", "gene_name_dictionary")
             if getattr(args, k) is not None}
    print(f"gene table: {add_genes(args.path, args.model, **files)}")
    return 0
