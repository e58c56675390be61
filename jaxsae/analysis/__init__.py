"""From a trained dictionary to biology: cells x features in AnnData, genes, cell types, gene sets.

Public API (imported lazily; each name lives in the module named next to it):
    encode_store(store, dictionary) -> TokenCodes          encode.py     sparse activations of every store row
    encode_cells(store, dictionary, adata, agg=...)        cells.py      cells x features into adata.obsm
    features_to_obs(adata, features)                       cells.py      chosen features as obs columns (sc.pl.umap)
    feature_table(...), top_genes(...)                     features.py   per-feature statistics and genes
    associate(adata, obs), best_features(...)              associate.py  AUROC / mean difference / specificity
    differential_expression(adata, feature)                expression.py scanpy Wilcoxon, active vs inactive cells
    analyze(dictionary, store, out_dir, obs=...)           pipeline.py   `jaxsae analyze`: every table, on disk
    read_gmt(path), go_gene_sets(), enrich(...)            enrich.py     over-representation, BH FDR
    load_genes(store)                                      jaxsae.store.genes  token id -> gene table
"""

import importlib
import sys
import types

_EXPORTS = {
    "TokenCodes": "jaxsae.analysis.encode", "encode_store": "jaxsae.analysis.encode",
    "encode_cells": "jaxsae.analysis.cells", "aggregate_cells": "jaxsae.analysis.cells",
    "features_to_obs": "jaxsae.analysis.cells",
    "feature_table": "jaxsae.analysis.features", "top_genes": "jaxsae.analysis.features",
    "associate": "jaxsae.analysis.associate", "best_features": "jaxsae.analysis.associate",
    "plot_association_heatmap": "jaxsae.analysis.associate",
    "differential_expression": "jaxsae.analysis.expression",
    "analyze": "jaxsae.analysis.pipeline",
    "GeneSets": "jaxsae.analysis.enrich", "read_gmt": "jaxsae.analysis.enrich",
    "go_gene_sets": "jaxsae.analysis.enrich", "enrich": "jaxsae.analysis.enrich",
    "load_genes": "jaxsae.store.genes",
    "AnalysisError": "jaxsae.analysis.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jaxsae.analysis' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Importing submodule `associate` (or `enrich`) sets the package attribute of that name to the module;
    the exported function of the same name must win, so `from jaxsae.analysis import associate` is the
    function whatever was imported before (the submodules stay importable by their dotted names)."""

    def __setattr__(self, name, value):
        if not (name in _EXPORTS and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__():
    return __all__
