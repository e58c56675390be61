"""The `jaxsae` verbs: each one's arguments as a dataclass (tyro reads the flags, their types and their help
from it) and a runner that parses `argv` and calls one library function. Routing and exit statuses are
`jaxsae.cli`'s."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Annotated, Literal

import tyro

from jaxsae.data.synthetic import SynthConfig
from jaxsae.flags import parse

Positional = tyro.conf.Positional
Repeatable = tyro.conf.UseAppendAction


def run_train(argv: Sequence[str], prog: str) -> int:
    from jaxsae.train import train
    from jaxsae.train.config_flags import parse_train_command

    cfg, command = parse_train_command(list(argv), prog)
    result = train(cfg, restart=command.restart)
    print(f"run folder:   {result.run_dir}")
    for path in result.dictionaries:
        print(f"dictionary:   {path}")
    for rec in result.metrics:
        print(f"member {rec['member']}: fvu={rec['fvu']:.4f} l0={rec['l0']:.2f} "
              f"dead={rec['dead_fraction']:.3f} rows/s={rec['rows_per_s']:,.0f}")
    return 0


@dataclasses.dataclass(frozen=True)
class StorePath:
    path: Annotated[str, Positional, tyro.conf.arg(metavar="STORE")]
    """An activation store folder."""


def run_store_info(argv: Sequence[str], prog: str) -> int:
    """Validate and describe a store."""
    from jaxsae.store import describe_store

    print(describe_store(parse(StorePath, argv, prog).path))
    return 0


def run_store_verify(argv: Sequence[str], prog: str) -> int:
    """Read every committed row: NaN/Inf, norm statistics, metadata, completeness (exit 0 sound, 1 problems
    found, 2 not a store)."""
    from jaxsae.store import verify_store

    report = verify_store(parse(StorePath, argv, prog).path)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


@dataclasses.dataclass(frozen=True)
class Synth:
    """Write a synthetic store made from a known sparse dictionary (for trying the trainer, and its tests)."""

    out: Annotated[str, Positional, tyro.conf.arg(metavar="OUT")]
    """The store folder to write."""
    synth: Annotated[SynthConfig, tyro.conf.arg(name="")] = dataclasses.field(default_factory=SynthConfig)
    overwrite: bool = False
    """Replace a store already at OUT."""


def run_synth(argv: Sequence[str], prog: str) -> int:
    from jaxsae.data.synthetic import synthesize

    args = parse(Synth, argv, prog)
    path = synthesize(args.out, args.synth, overwrite=args.overwrite)
    cfg = args.synth
    print(f"synthetic store: {path} ({cfg.rows} rows, d={cfg.d_model}, {cfg.n_features} true features)")
    return 0


@dataclasses.dataclass(frozen=True)
class GeneSets:
    gmt: Annotated[tuple[str, ...], Repeatable] = ()
    """Gene sets (GMT, gene symbols) to test each feature's top genes against (repeatable)."""
    go: bool = True
    """Test against the shipped human GO biological-process sets (when genes have symbols); --no_go skips them."""

    def names(self) -> list[str]:
        return (["go"] if self.go else []) + list(self.gmt)


@dataclasses.dataclass(frozen=True)
class Analyze:
    """Cells x features AnnData, feature and gene tables, cell-type association of a trained dictionary."""

    dictionary: Annotated[str, Positional, tyro.conf.arg(metavar="DICTIONARY")]
    """A dictionary folder (RUN/dictionaries/member_000)."""
    store: str
    """The store it was trained on, or the extraction output folder."""
    out: str
    """Output folder."""
    adata: str | None = None
    """The .h5ad of the extracted cells (default: the one the extraction recorded)."""
    obs: str | None = None
    """Categorical obs column to associate features with (e.g. cell type)."""
    agg: Literal["mean", "max", "frac"] = "mean"
    """Per-cell aggregation of token rows."""
    model: str | None = None
    """The model folder: also write promoted_genes.csv (needs jaxsae[extract])."""
    gene_sets: Annotated[GeneSets, tyro.conf.arg(name="")] = GeneSets()
    progress: bool = True
    """Show a progress bar."""


def run_analyze(argv: Sequence[str], prog: str) -> int:
    from jaxsae.analysis.pipeline import analyze

    args = parse(Analyze, argv, prog)
    result = analyze(args.dictionary, args.store, args.out, adata=args.adata, obs=args.obs, agg=args.agg,
                     model_dir=args.model, gene_sets=args.gene_sets.names() or None, progress=args.progress)
    for key, path in result.paths.items():
        print(f"{key + ':':16}{path}")
    print("\n".join(result.summary()))
    return 0


@dataclasses.dataclass(frozen=True)
class Report:
    """One self-contained HTML report of a trained dictionary: training curves, feature density, a searchable
    table of all features, feature cards."""

    run_or_dictionary: Annotated[str, Positional, tyro.conf.arg(metavar="RUN_OR_DICTIONARY")]
    """A finished run folder or a dictionary folder."""
    store: str
    """The token store to encode (OUT/layer_N/tokens, or the extraction output folder when it holds one)."""
    adata: str | None = None
    """The .h5ad of the extracted cells: labels, UMAP (default: the file the extraction recorded)."""
    obs: str | None = None
    """Categorical obs column to find each feature's best label (default: the first categorical column with
    2-100 categories)."""
    out: str | None = None
    """The HTML file (default: report.html inside RUN_OR_DICTIONARY)."""
    cards: int = 24
    """Number of feature cards."""
    model: str | None = None
    """The model folder, to list the genes each feature promotes in its output head."""
    member: int = 0
    """Which member of a run with several."""
    evaluation: str | None = None
    """The JSON `jaxsae eval DICTIONARY ... --out FILE` wrote: its losses, fraction of loss recovered and
    cell-embedding fidelity join the summary."""
    gene_sets: Annotated[GeneSets, tyro.conf.arg(name="")] = GeneSets()


def run_report(argv: Sequence[str], prog: str) -> int:
    from jaxsae.report import build_report

    args = parse(Report, argv, prog)
    path = build_report(args.run_or_dictionary, args.store, args.adata, obs=args.obs, out=args.out,
                        n_cards=args.cards, model=args.model, gene_sets=args.gene_sets.names(), member=args.member,
                        evaluation=args.evaluation)
    print(f"report: {path}")
    return 0


@dataclasses.dataclass(frozen=True)
class Export:
    """Write a dictionary in SAELens's layout (cfg.json + sae_weights.safetensors) or sparsify's (one folder per
    hookpoint: cfg.json + sae.safetensors; TopK only)."""

    dictionary: Annotated[str, Positional, tyro.conf.arg(metavar="DICTIONARY")]
    """A dictionary folder (RUN/dictionaries/member_000)."""
    out: Annotated[str, Positional, tyro.conf.arg(metavar="OUT")]
    """The folder to write."""
    format: Literal["saelens", "sparsify"]
    """The other tool's layout."""
    overwrite: bool = False
    """Replace a folder already at OUT."""


def run_export(argv: Sequence[str], prog: str) -> int:
    from jaxsae.interop import export_dictionary

    args = parse(Export, argv, prog)
    print(f"{args.format}: {export_dictionary(args.dictionary, args.out, args.format, overwrite=args.overwrite)}")
    return 0


@dataclasses.dataclass(frozen=True)
class Import:
    """Save a SAELens or sparsify dictionary (format read from its files) as a jaxsae dictionary folder."""

    path: Annotated[str, Positional, tyro.conf.arg(metavar="PATH")]
    """A SAELens folder, a sparsify hookpoint folder, or a sparsify run folder with one hookpoint."""
    out: Annotated[str, Positional, tyro.conf.arg(metavar="OUT")]
    """The jaxsae dictionary folder to write."""
    overwrite: bool = False
    """Replace a folder already at OUT."""


def run_import(argv: Sequence[str], prog: str) -> int:
    from jaxsae.interop import import_dictionary

    args = parse(Import, argv, prog)
    print(f"dictionary: {import_dictionary(args.path, args.out, overwrite=args.overwrite)}")
    return 0
