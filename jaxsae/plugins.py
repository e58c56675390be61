"""What other packages add to jaxsae through entry points: CLI verbs and the promoted-genes hook of analysis.

jaxsae never imports the extractor by name (DESIGN.md, rooms); the `extract` package registers itself in
pyproject.toml instead, and jaxsae finds it with `importlib.metadata.entry_points`:

    [project.entry-points."jaxsae.commands"]        name: the verb path ("extract", "store.add-genes");
                                                    value: add_parser(subparsers) adding that verb
    [project.entry-points."jaxsae.promoted_genes"]  value: promoted_genes(model_dir, dictionary, store, *, top)
                                                    -> DataFrame (the genes each feature promotes)

`jaxsae.analysis.intervene` is the `intervene` function of the module that the `intervene` verb's entry point
names (the extractor's `extract.splice_cli`): the verb and the library call come from one registration, and
that module imports torch only when the function runs.
"""

from __future__ import annotations

import importlib
import importlib.metadata

from jaxsae.errors import AnalysisError

COMMANDS_GROUP = "jaxsae.commands"
PROMOTED_GENES_GROUP = "jaxsae.promoted_genes"
INTERVENE_VERB = "intervene"
# Modules of the optional extras, and the extra that installs each (for `pip install 'jaxsae[EXTRA]'` hints).
OPTIONAL_MODULES = {"torch": "extract", "transformers": "extract", "h5py": "extract", "scanpy": "analysis",
                    "anndata": "analysis", "matplotlib": "analysis", "tensorboardX": "tensorboard"}


def entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """{name: entry point} registered under `group` by the installed distributions."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


def install_hint(error: ModuleNotFoundError) -> str | None:
    """`needs X: pip install 'jaxsae[EXTRA]'` when `error` is a missing module of an extra, else None."""
    module = (error.name or "").split(".")[0]
    extra = OPTIONAL_MODULES.get(module)
    return None if extra is None else f"needs {module}, which is not installed: pip install 'jaxsae[{extra}]'"


def promoted_genes_function():
    """The registered `promoted_genes(model_dir, dictionary, store, *, top) -> DataFrame` (the extractor's
    `extract.heads.promoted_genes`). Raises AnalysisError naming the install command when no installed package
    registers one or its imports (torch) are missing."""
    registered = list(entry_points(PROMOTED_GENES_GROUP).values())
    return _load(lambda: registered[0].load() if registered else None,
                 "model_dir (--model): listing the genes each feature promotes")


def intervene_function():
    """`intervene(model_dir, dictionary, adata, feature, scale, **options) -> DataFrame` of the module the
    `intervene` verb's entry point names (see the module docstring); AnalysisError naming the install command
    when the extractor is not installed."""
    verb = entry_points(COMMANDS_GROUP).get(INTERVENE_VERB)
    return _load(lambda: getattr(importlib.import_module(verb.module), "intervene") if verb else None,
                 "intervene: running the model with a feature changed")


def _load(load, what: str):
    try:
        function = load()
    except ModuleNotFoundError as e:
        hint = install_hint(e)
        if hint is None:
            raise
        raise AnalysisError(f"{what} {hint}") from None
    if function is None:
        raise AnalysisError(f"{what} needs jaxsae's extractor, which is not installed: pip install 'jaxsae[extract]'")
    return function
