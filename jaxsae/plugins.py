"""What other packages add to jaxsae through entry points: CLI verbs and the analysis hooks that need a model.

jaxsae never imports the extractor by name (DESIGN.md, rooms); the `extract` package registers itself in
pyproject.toml instead, and jaxsae finds it with `importlib.metadata.entry_points`:

    [project.entry-points."jaxsae.commands"]        name: the verb path ("extract", "store.add-genes");
                                                    value: run(argv, prog) -> exit status
    [project.entry-points."jaxsae.promoted_genes"]  value: promoted_genes(model_dir, dictionary, store, *, top)
                                                    -> DataFrame (the genes each feature promotes)
    [project.entry-points."jaxsae.intervene"]       value: intervene(model_dir, dictionary, adata, feature,
                                                    scale, **options) -> DataFrame (`jaxsae.analysis.intervene`)
"""

from __future__ import annotations

import importlib.metadata

from jaxsae.errors import AnalysisError

COMMANDS_GROUP = "jaxsae.commands"
PROMOTED_GENES_GROUP = "jaxsae.promoted_genes"
INTERVENE_GROUP = "jaxsae.intervene"
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
    """The registered `intervene(model_dir, dictionary, adata, feature, scale, **options) -> DataFrame` (the
    extractor's `extract.intervene.intervene`); AnalysisError naming the install command when the extractor is
    not installed."""
    registered = list(entry_points(INTERVENE_GROUP).values())
    return _load(lambda: registered[0].load() if registered else None,
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
