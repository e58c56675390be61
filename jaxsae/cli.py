"""`jaxsae` command line: each verb parses its arguments and calls one library function."""

from __future__ import annotations

import argparse
import os
import sys

from jaxsae.errors import JaxsaeError
from jaxsae.plugins import COMMANDS_GROUP, entry_points, install_hint


def _cmd_train(args) -> int:
    from jaxsae.train import load_config, train

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.exists(config):  # no file given: all overrides
        config, overrides = None, [config, *overrides]
    if config is not None and os.path.basename(config) == "config.json":
        run_dir = os.path.dirname(os.path.abspath(config))
        if os.path.isdir(os.path.join(run_dir, "checkpoints")):  # a run folder's own config: resume it in place
            overrides = [f"run_dir={run_dir}", *overrides]
    cfg = load_config(config, overrides)
    result = train(cfg, restart=args.restart)
    print(f"run folder:   {result.run_dir}")
    for path in result.dictionaries:
        print(f"dictionary:   {path}")
    for rec in result.metrics:
        print(f"member {rec['member']}: fvu={rec['fvu']:.4f} l0={rec['l0']:.2f} "
              f"dead={rec['dead_fraction']:.3f} rows/s={rec['rows_per_s']:,.0f}")
    return 0


def _cmd_store_info(args) -> int:
    from jaxsae.store import describe_store

    print(describe_store(args.path))
    return 0


def _cmd_store_verify(args) -> int:
    from jaxsae.store import verify_store

    report = verify_store(args.path)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _cmd_synth(args) -> int:
    from jaxsae.data.synthetic import SynthConfig, synthesize

    cfg = SynthConfig(rows=args.rows, d_model=args.d_model, n_features=args.n_features,
                      active_per_row=args.active_per_row, noise_std=args.noise_std, seed=args.seed,
                      dtype=args.dtype)
    path = synthesize(args.out, cfg, overwrite=args.overwrite)
    print(f"synthetic store: {path} ({cfg.rows} rows, d={cfg.d_model}, {cfg.n_features} true features)")
    return 0


def _cmd_analyze(args) -> int:
    from jaxsae.analysis.pipeline import analyze

    gene_sets = ([] if args.no_go else ["go"]) + list(args.gmt or [])
    result = analyze(args.dictionary, args.store, args.out, adata=args.adata, obs=args.obs, agg=args.agg,
                     model_dir=args.model, gene_sets=gene_sets or None, progress=not args.no_progress)
    for key, path in result.paths.items():
        print(f"{key + ':':16}{path}")
    print("\n".join(result.summary()))
    return 0


def _cmd_report(args) -> int:
    from jaxsae.report import build_report

    gene_sets = ([] if args.no_go else ["go"]) + list(args.gmt or [])
    path = build_report(args.run_or_dictionary, args.store, args.adata, obs=args.obs, out=args.out,
                        n_cards=args.cards, model=args.model, gene_sets=gene_sets, member=args.member)
    print(f"report: {path}")
    return 0


def _gene_set_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gmt", action="append", metavar="FILE",
                   help="gene sets (GMT, gene symbols) to test each feature's top genes against (repeatable)")
    p.add_argument("--no-go", action="store_true",
                   help="skip the shipped human GO biological-process sets (on by default when genes have symbols)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxsae", description="Sparse autoencoders for single-cell model activations")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train dictionaries from a config file plus key=value overrides")
    p.add_argument("config", nargs="?", help="a .toml/.yaml/.json config file (optional)")
    p.add_argument("overrides", nargs="*", help="settings such as data.store=PATH sae.k=32 steps=2000")
    p.add_argument("--restart", action="store_true",
                   help="set the run folder's checkpoints aside and train from step 0 (when none can be restored)")
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("store", help="activation stores")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    q = store_sub.add_parser("info", help="validate and describe a store")
    q.add_argument("path")
    q.set_defaults(fn=_cmd_store_info)
    q = store_sub.add_parser("verify", help="read every committed row: NaN/Inf, norm statistics, metadata, "
                                            "completeness (exit 0 sound, 1 problems found, 2 not a store)")
    q.add_argument("path")
    q.set_defaults(fn=_cmd_store_verify)
    _add_plugin_verbs(store_sub, "store.")

    p = sub.add_parser("synth", help="write a synthetic store made from a known sparse dictionary")
    p.add_argument("out")
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-features", type=int, default=512)
    p.add_argument("--active-per-row", type=float, default=4.0)
    p.add_argument("--noise-std", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(fn=_cmd_synth)

    p = sub.add_parser("analyze", help="cells x features AnnData, feature / gene tables, cell-type association")
    p.add_argument("dictionary", help="a dictionary folder (RUN/dictionaries/member_000)")
    p.add_argument("--store", required=True, help="the store it was trained on, or the extraction output folder")
    p.add_argument("--adata", help="the .h5ad of the extracted cells (default: the one the extraction recorded)")
    p.add_argument("--obs", help="categorical obs column to associate features with (e.g. cell type)")
    p.add_argument("--agg", choices=("mean", "max", "frac"), default="mean", help="per-cell aggregation of token rows")
    p.add_argument("--model", help="the model folder: also write promoted_genes.csv (needs jaxsae[extract])")
    _gene_set_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(fn=_cmd_analyze)

    p = sub.add_parser("report", help="write one self-contained HTML report of a trained dictionary: training "
                                      "curves, feature density, a searchable table of all features, feature cards")
    p.add_argument("run_or_dictionary", help="a finished run folder or a dictionary folder")
    p.add_argument("--store", required=True, help="the token store to encode (OUT/layer_N/tokens, or the extraction "
                                                  "output folder when it holds one token store)")
    p.add_argument("--adata", help="the .h5ad of the extracted cells: labels, UMAP (default: the file the "
                                   "extraction recorded)")
    p.add_argument("--obs", help="categorical obs column to find each feature's best label (default: the first "
                                 "categorical column with 2-100 categories)")
    p.add_argument("--out", help="the HTML file (default: report.html inside RUN_OR_DICTIONARY)")
    p.add_argument("--cards", type=int, default=24, help="number of feature cards (default 24)")
    p.add_argument("--model", help="the model folder, to list the genes each feature promotes in its output head")
    p.add_argument("--member", type=int, default=0, help="which member of a run with several (default 0)")
    _gene_set_arguments(p)
    p.set_defaults(fn=_cmd_report)

    _add_plugin_verbs(sub, "")
    return parser


# Verbs the extractor registers (jaxsae.plugins.COMMANDS_GROUP), with their help when it is not installed.
_PLUGIN_VERBS = {"extract": "extract activations: AnnData + model folder -> activation stores",
                 "store.add-genes": "write genes.tsv into a store extracted before gene tables existed"}


def _add_plugin_verbs(subparsers, prefix: str) -> None:
    """Add the verbs registered as `prefix + verb` (e.g. "store.add-genes" under `jaxsae store`); a verb of
    _PLUGIN_VERBS that nobody registers, or whose package cannot be imported, explains the install instead."""
    registered = entry_points(COMMANDS_GROUP)
    names = {n for n in registered.keys() | _PLUGIN_VERBS.keys() if n.startswith(prefix) and "." not in n[len(prefix):]}
    for name in sorted(names):
        try:
            add_parser = registered[name].load()
        except (KeyError, ImportError):
            _add_missing_verb(subparsers, name)
        else:
            add_parser(subparsers)


def _add_missing_verb(subparsers, name: str) -> None:
    verb = name.rsplit(".", 1)[-1]
    p = subparsers.add_parser(verb, help=f"{_PLUGIN_VERBS.get(name, verb)} (needs: pip install 'jaxsae[extract]')")
    p.add_argument("arguments", nargs=argparse.REMAINDER)
    p.set_defaults(fn=lambda _: _missing_extract(name.replace(".", " ")))


def _missing_extract(verb: str) -> int:
    print(f"error: `jaxsae {verb}` needs jaxsae's extractor, which is not installed: pip install 'jaxsae[extract]'",
          file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Exit status: 0 done, 1 a check found problems (store verify), 2 bad input: every
    JaxsaeError (and a missing optional dependency) is printed as one `error: ...` line, no traceback."""
    args = build_parser().parse_args(argv)
    try:
        status = args.fn(args)
        sys.stdout.flush()  # a closed pipe (`jaxsae ... | head`) surfaces here, not at interpreter exit
        return status
    except JaxsaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        hint = install_hint(e)
        if hint is None:
            raise
        verb = " ".join(filter(None, (args.command, getattr(args, "store_command", None))))
        print(f"error: `jaxsae {verb}` {hint}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`| head`): as the Python docs recommend (signal module, "Note on SIGPIPE"),
        # point stdout at devnull so the interpreter's final flush does not fail again, and exit 1.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
