"""From a trained dictionary to biology: cells x features in AnnData, genes, cell types, gene sets.

Public API (imported lazily; each name lives in the module named next to it):
    encode_store(store, dictionary) -> TokenCodes          encode.py     sparse activations of every store row
    encode_cells(store, dictionary, adata, agg=...)        cells.py      cells x features into adata.obsm
    features_to_obs(adata, features)                       cells.py      chosen features as obs columns (sc.pl.umap)
    feature_table(...), top_genes(...)                     features.py   per-feature statistics and genes
    associate(adata, obs), best_features(...)              associate.py  AUROC / mean difference / specificity
    differential_expression(adata, feature)                expression.py scanpy Wilcoxon, active vs inactive cells
    read_gmt(path), go_gene_sets(), enrich(...)            enrich.py     over-representation, BH FDR
    load_genes(store)                                      jaxsae.store.genes  token id -> gene table
"""

import importlib

_EXPORTS = {
    "TokenCodes": "jaxsae.analysis.encode", "encode_store": "jaxsae.analysis.encode",
    "encode_cells": "jaxsae.analysis.cells", "aggregate_cells": "jaxsae.analysis.cells",
    "features_to_obs": "jaxsae.analysis.cells",
    "feature_table": "jaxsae.analysis.features", "top_genes": "jaxsae.analysis.features",
    "associate": "jaxsae.analysis.associate", "best_features": "jaxsae.analysis.associate",
    "plot_association_heatmap": "jaxsae.analysis.associate",
    "differential_expression": "jaxsae.analysis.expression",
    "GeneSets": "jaxsae.analysis.enrich", "read_gmt": "jaxsae.analysis.enrich",
    "go_gene_sets": "jaxsae.analysis.enrich", "enrich": "jaxsae.analysis.enrich",
    "load_genes": "jaxsae.store.genes",
    "AnalysisError": "jaxsae.analysis.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxsae.analysis' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    # Bind all of the module's exports now: importing jaxsae.analysis.enrich sets this package's attribute
    # `enrich` to the submodule, which would otherwise shadow the function enrich.enrich.
    for export, module_name in _EXPORTS.items():
        if module_name == module.__name__:
            globals()[export] = getattr(module, export)
    return globals()[name]


def __dir__():
    return __all__
