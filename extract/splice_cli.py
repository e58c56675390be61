"""`jaxsae eval` and `jaxsae intervene`: a dictionary spliced into its model (`jaxsae.commands` entry points,
like extract/cli.py; flags parsed by `jaxsae.flags.parse` before torch is imported)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Annotated

import tyro

from jaxsae.flags import parse

Positional = tyro.conf.Positional


@dataclasses.dataclass(frozen=True)
class Eval:
    """Spliced evaluation: the model's own objective (Geneformer masked-gene cross-entropy, scGPT masked-value
    MSE) with the dictionary's reconstruction in place of its layer, against the clean model and zero / mean
    ablation (fraction of loss recovered), and how far the cell embeddings move."""

    dictionary: Annotated[str, Positional, tyro.conf.arg(metavar="DICTIONARY")]
    """A dictionary folder (run/dictionaries/member_NNN) trained on a tokens store."""
    model: str
    """The model folder the dictionary's store was extracted with."""
    adata: str
    """.h5ad of raw counts to evaluate on."""
    cells: int = 64
    """How many cells to sample (seeded) from the AnnData."""
    seed: int = 0
    """Seeds the cell sample and the masks."""
    obs: str | None = None
    """Categorical obs column: adds leave-one-out k-NN accuracy on clean and spliced cell embeddings."""
    layer: int | None = None
    """The block to splice; default the dictionary's source layer (another one is refused)."""
    batch_size: int = 16
    """Cells per forward pass."""
    device: str = "cpu"
    """cpu, cuda or auto."""
    out: str | None = None
    """Write the result as JSON here."""


def run_eval(argv: Sequence[str], prog: str) -> int:
    """Print the table of `evaluate_dictionary` and write its JSON (--out); bad input raises ExtractError."""
    args = parse(Eval, argv, prog)
    from extract.evaluate import evaluate_dictionary, table
    from jaxsae.atomic import write_atomic

    result = evaluate_dictionary(args.dictionary, args.model, args.adata, cells=args.cells, seed=args.seed,
                                 obs=args.obs, batch_size=args.batch_size, layer=args.layer, device=args.device)
    print(table(result))
    if args.out is not None:
        write_atomic(args.out, json.dumps(result, indent=2) + "\n")
        print(f"written: {args.out}")
    return 0


@dataclasses.dataclass(frozen=True)
class Intervene:
    """Clamp a feature to zero (or scale it) inside the model, the SAE error added back so only the feature's
    change acts, and print the genes whose masked predictions move most (Geneformer: log-probability; scGPT:
    predicted expression), per label with --obs."""

    dictionary: Annotated[str, Positional, tyro.conf.arg(metavar="DICTIONARY")]
    """A dictionary folder trained on a tokens store."""
    model: str
    """The model folder the dictionary's store was extracted with."""
    adata: str
    """.h5ad of raw counts."""
    feature: tuple[int, ...]
    """Feature number(s): `--feature 12` or `--feature 12 40`."""
    scale: float = 0.0
    """0 ablates; 2 doubles; -1 flips."""
    cells: int = 64
    """How many cells to sample (seeded)."""
    seed: int = 0
    """Seeds the cell sample and the masks."""
    obs: str | None = None
    """Categorical obs column: the genes per label too."""
    top: int = 20
    """Genes shown per direction and group."""
    layer: int | None = None
    """The block to splice; default the dictionary's source layer."""
    batch_size: int = 16
    """Cells per forward pass."""
    device: str = "cpu"
    """cpu, cuda or auto."""
    out: str | None = None
    """Write the whole table as CSV here."""


def run_intervene(argv: Sequence[str], prog: str) -> int:
    """Print the genes pushed up and down per group; bad input raises ExtractError."""
    args = parse(Intervene, argv, prog)
    from extract.intervene import intervene as run

    moved = run(args.model, args.dictionary, args.adata, list(args.feature), args.scale, cells=args.cells,
                seed=args.seed, obs=args.obs, top=args.top, layer=args.layer, batch_size=args.batch_size,
                device=args.device)
    print(f"feature {', '.join(map(str, args.feature))} x {args.scale:g} at layer {moved.attrs['layer']} "
          f"({moved.attrs['model']}; fires at {moved.attrs['firing_fraction']:.1%} of the spliced positions); "
          f"change in {moved.attrs['unit']} at masked positions:")
    for (group, direction), rows in moved.groupby(["group", "direction"], sort=False):
        genes = ", ".join(f"{symbol or gene_id} {delta:+.3g}" for symbol, gene_id, delta
                          in rows[["symbol", "gene_id", "delta"]].itertuples(index=False))
        print(f"  {group} {direction}: {genes}")
    if args.out is not None:
        from jaxsae.atomic import write_atomic

        write_atomic(args.out, moved.to_csv(index=False))
        print(f"written: {args.out}")
    return 0

