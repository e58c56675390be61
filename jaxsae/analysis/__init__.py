"""From a trained dictionary to biology: cells x features in AnnData, genes, cell types, gene sets.

Public API (imported lazily; each name lives in the module named next to it):
    encode_store(store, dictionary) -> TokenCodes          encode.py     sparse activations of every store row
    encode_cells(store, dictionary, adata, agg=...)        cells.py      cells x features into adata.obsm
    features_to_obs(adata, features)                       cells.py      chosen features as obs columns (sc.pl.umap)
    feature_table(...), top_genes(...)                     features.py   per-feature statistics and genes
    feature_enrichment(codes, genes, gene_sets)            features.py   gene sets over each feature's top genes
    associate(adata, obs), best_features(...)              association.py AUROC / mean difference / specificity
    differential_expression(adata, feature)                expression.py scanpy Wilcoxon, active vs inactive cells
    analyze(dictionary, store, out_dir, obs=...)           pipeline.py   `jaxsae analyze`: every table, on disk
    read_gmt(path), go_gene_sets(), enrich(...)            enrichment.py over-representation, BH FDR
    load_genes(store)                                      jaxsae.store.genes  token id -> gene table
    intervene(model, dictionary, adata, feature, scale)    steering.py   a feature ablated/scaled in the model
"""

from jaxsae.lazy import lazy_exports

_EXPORTS = {
    "TokenCodes": "jaxsae.analysis.encode", "encode_store": "jaxsae.analysis.encode",
    "encode_cells": "jaxsae.analysis.cells", "aggregate_cells": "jaxsae.analysis.cells",
    "features_to_obs": "jaxsae.analysis.cells",
    "feature_table": "jaxsae.analysis.features", "top_genes": "jaxsae.analysis.features",
    "feature_enrichment": "jaxsae.analysis.features",
    "associate": "jaxsae.analysis.association", "best_features": "jaxsae.analysis.association",
    "plot_association_heatmap": "jaxsae.analysis.association",
    "differential_expression": "jaxsae.analysis.expression",
    "analyze": "jaxsae.analysis.pipeline",
    "GeneSets": "jaxsae.analysis.enrichment", "read_gmt": "jaxsae.analysis.enrichment",
    "go_gene_sets": "jaxsae.analysis.enrichment", "enrich": "jaxsae.analysis.enrichment",
    "load_genes": "jaxsae.store.genes",
    "intervene": "jaxsae.analysis.steering",
    "AnalysisError": "jaxsae.errors",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
