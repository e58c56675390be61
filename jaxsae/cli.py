"""`jaxsae` command line: routes `jaxsae VERB [SUBVERB] ARGS` to the verb's runner (`jaxsae.verbs`, or a
package's `jaxsae.commands` entry point) and turns its errors into exit statuses.

Every verb reads its arguments the same way (tyro, from a dataclass; `jaxsae.verbs.parse`): positional paths,
then `--field VALUE` flags named as the settings (dotted for nested ones: `--sae.k 32`), `--help` from the
docstrings.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

from jaxsae.errors import JaxsaeError
from jaxsae.plugins import COMMANDS_GROUP, entry_points, install_hint

Runner = Callable[[Sequence[str], str], int]
"""A verb: (its arguments, its program name for help and errors) -> exit status."""

_BUILTIN = {
    "train": ("jaxsae.verbs:run_train", "train dictionaries: a config file plus --section.field flags"),
    "synth": ("jaxsae.verbs:run_synth", "write a synthetic store made from a known sparse dictionary"),
    "analyze": ("jaxsae.verbs:run_analyze", "cells x features AnnData, feature / gene tables, cell-type association"),
    "report": ("jaxsae.verbs:run_report", "one self-contained HTML report of a trained dictionary"),
    "sweep.plan": ("jaxsae.sweep.verbs:run_sweep_plan", "print how a sweep spec's members are packed, with memory estimates"),
    "sweep.run": ("jaxsae.sweep.verbs:run_sweep_run", "train every pack of a sweep here; a rerun resumes it"),
    "sweep.report": ("jaxsae.sweep.verbs:run_sweep_report", "each architecture's L0-FVU Pareto frontier: plot + table"),
    "export": ("jaxsae.verbs:run_export", "write a dictionary in SAELens's or sparsify's layout"),
    "import": ("jaxsae.verbs:run_import", "save a SAELens or sparsify dictionary as a jaxsae dictionary"),
    "sweep.launch": ("jaxsae.sweep.verbs:run_sweep_launch", "run a sweep's packs here, as a SLURM job array or on a TPU pod"),
    "sweep.run-pack": ("jaxsae.sweep.verbs:run_sweep_run_pack", "train packs of a launched sweep (each job's task)"),
    "sweep.summary": ("jaxsae.sweep.verbs:run_sweep_summary", "write summary.csv once every pack has finished"),
    "store.info": ("jaxsae.verbs:run_store_info", "validate and describe a store"),
    "store.verify": ("jaxsae.verbs:run_store_verify", "read every committed row: NaN/Inf, norms, metadata, "
                                                      "completeness (exit 0 sound, 1 problems, 2 not a store)"),
}
# Verbs the extractor registers (COMMANDS_GROUP), with their help, also shown when it is not installed.
_PLUGIN_VERBS = {"extract": "extract activations: AnnData + model folder -> activation stores",
                 "store.add-genes": "write genes.tsv into a store extracted before gene tables existed",
                 "eval": "spliced evaluation: the model's own loss with the dictionary inside (loss recovered)",
                 "intervene": "ablate or scale a feature inside the model: the genes it pushes up and down"}
_GROUPS = {"store": "activation stores: info, verify, add-genes",
           "sweep": "sweeps of many dictionaries: plan, run, report, launch, run-pack, summary"}


def _verbs() -> dict[str, str]:
    """{dotted verb name: help} of every verb, built-in or registered (entry points are listed, not loaded)."""
    plugins = {name: _PLUGIN_VERBS.get(name, name) for name in entry_points(COMMANDS_GROUP).keys() | _PLUGIN_VERBS}
    return {**{name: text for name, (_, text) in _BUILTIN.items()}, **plugins}


def _installed(name: str, text: str) -> str:
    """A plugin verb's help, saying how to install it when its package cannot be imported (for the usage text
    only: routing a verb never imports the other verbs' packages)."""
    if name in _BUILTIN:
        return text
    try:
        entry_points(COMMANDS_GROUP)[name].load()
    except (KeyError, ImportError):
        return f"{text} (needs: pip install 'jaxsae[extract]')"
    return text


def _runner(name: str) -> Runner:
    if name in _BUILTIN:
        module, _, attr = _BUILTIN[name][0].partition(":")
        return getattr(importlib.import_module(module), attr)
    try:
        return entry_points(COMMANDS_GROUP)[name].load()
    except (KeyError, ImportError):
        return lambda argv, prog: _missing_extract(prog)


def _missing_extract(prog: str) -> int:
    print(f"error: `{prog}` needs jaxsae's extractor, which is not installed: pip install 'jaxsae[extract]'",
          file=sys.stderr)
    return 2


def _usage(prefix: str, verbs: dict[str, str]) -> str:
    names = {n[len(prefix):].split(".")[0]: _installed(n, text) for n, text in verbs.items() if n.startswith(prefix)}
    names.update({g: _GROUPS[g] for g in names if f"{prefix}{g}" in _GROUPS})
    lines = [f"usage: jaxsae {prefix.replace('.', ' ')}VERB [ARGS] (VERB --help for its arguments)", "",
             "Sparse autoencoders for single-cell model activations." if not prefix else _GROUPS[prefix[:-1]], "",
             "verbs:"]
    lines += [f"  {name:<10}{text}" for name, text in sorted(names.items())]
    return "\n".join(lines)


def _route(argv: list[str]) -> tuple[str, list[str]] | int:
    """(dotted verb, its arguments), or an exit status after printing help or a usage error."""
    verbs, prefix = _verbs(), ""
    while True:
        word = argv[0] if argv else None
        if word in (None, "-h", "--help"):
            print(_usage(prefix, verbs), file=sys.stdout if word else sys.stderr)
            return 0 if word else 2
        name = prefix + word
        if name in verbs:
            return name, argv[1:]
        if name in _GROUPS:
            prefix, argv = name + ".", argv[1:]
            continue
        print(f"{_usage(prefix, verbs)}\n\nerror: unknown verb {' '.join(name.split('.'))!r}", file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb. Exit status: 0 done, 1 a check found problems (store verify), 2 bad input: every
    JaxsaeError (and a missing optional dependency) is printed as one `error: ...` line, no traceback; a
    malformed flag is tyro's message, also status 2."""
    routed = _route(list(sys.argv[1:] if argv is None else argv))
    if isinstance(routed, int):
        return routed
    name, rest = routed
    prog = "jaxsae " + name.replace(".", " ")
    try:
        status = _runner(name)(rest, prog)
        sys.stdout.flush()  # a closed pipe (`jaxsae ... | head`) surfaces here, not at interpreter exit
        return status
    except JaxsaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        hint = install_hint(e)
        if hint is None:
            raise
        print(f"error: `{prog}` {hint}", file=sys.stderr)
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
