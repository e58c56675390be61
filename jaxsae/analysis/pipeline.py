"""`jaxsae analyze`: from a dictionary and its store to AnnData, feature, gene and cell-type tables on disk."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from jaxsae.analysis.enrichment import resolve_gene_sets
from jaxsae.analysis.errors import AnalysisError


@dataclasses.dataclass(frozen=True)
class AnalyzeResult:
    """paths: {output name: path} of every file written; best: best_features' table (None without obs);
    top_genes: the top_genes table (None for a cell-level store)."""

    paths: dict[str, str]
    best: pd.DataFrame | None
    top_genes: pd.DataFrame | None
    notes: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> list[str]:
        """Per label: its best feature, the AUROC and the feature's top genes (what the CLI prints)."""
        if self.best is None:
            return [*self.notes, "no --obs column given: no cell-type association"]
        from jaxsae.analysis.features import gene_labels

        genes = {}
        if self.top_genes is not None and len(self.top_genes):
            named = self.top_genes.assign(name=gene_labels(self.top_genes))
            genes = named.groupby("feature")["name"].agg(lambda names: ", ".join(names.head(5))).to_dict()
        return [*self.notes, *(f"{row.label}: feature {row.feature} (AUROC {row.auroc:.3f}) top genes: "
                f"{genes.get(row.feature, '-')}" for row in self.best.itertuples())]


def analyze(dictionary, store, out_dir, *, adata=None, obs: str | None = None, agg: str = "mean",
            model_dir=None, name: str = "sae", top: int = 10, gene_sets="go", progress: bool = True) -> AnalyzeResult:
    """Encode `store` with `dictionary` and write the analysis files into `out_dir`:
    cells.h5ad (obsm[f"X_{name}"]), features.csv, top_genes.csv (token stores), promoted_genes.csv (with
    model_dir), enrichment.csv (token stores whose gene table has symbols), and with obs: associations.csv,
    best_features.csv, heatmap.png and expression.csv (genes differentially expressed in the cells where each
    label's best feature is active, Wilcoxon against the other cells, on the AnnData's own expression).

    gene_sets: "go" (the shipped human GO biological-process sets; skipped with a note when the store's genes
    have no symbols), a GMT path, a GeneSets / mapping of symbol sets, a list of these (merged), or None.
    Every input is checked before the encoding starts (see encode_cells; obs must be a categorical column; GMT
    files are parsed). Files are written into a hidden folder inside out_dir and moved into place at the end,
    so a crash leaves no half-written table looking finished.
    """
    from jaxsae.analysis.association import obs_labels
    from jaxsae.analysis.cells import prepare

    store, dictionary_obj, adata, provenance = prepare(store, dictionary, adata, agg=agg, name=name)
    if obs is not None:
        obs_labels(adata, obs)
    if model_dir is not None and not Path(model_dir).is_dir():
        raise AnalysisError(f"model folder {model_dir} does not exist; pass the folder the store was extracted with")
    sets, sets_required = resolve_gene_sets(gene_sets)
    final = Path(out_dir)
    final.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=".partial-", dir=final))
    try:
        paths, best, genes_table, notes = _write(store, dictionary_obj, adata, provenance, out, obs=obs, agg=agg,
                                                 model_dir=model_dir, name=name, top=top, sets=sets,
                                                 sets_required=sets_required, progress=progress)
        for key, path in paths.items():  # cells.h5ad last: its presence means the folder is whole
            os.replace(path, final / Path(path).name)
            paths[key] = os.fspath(final / Path(path).name)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return AnalyzeResult(paths=paths, best=best, top_genes=genes_table, notes=notes)


def _write(store, dictionary_obj, adata, provenance, out: Path, *, obs, agg, model_dir, name, top, sets,
           sets_required, progress):
    from jaxsae.analysis.association import associate, best_features, plot_association_heatmap
    from jaxsae.analysis.cells import attach_codes
    from jaxsae.analysis.encode import encode_store
    from jaxsae.analysis.features import feature_enrichment, feature_table, top_genes

    paths: dict[str, str] = {}
    notes: list[str] = []

    codes = encode_store(store, dictionary_obj, progress=progress)
    attach_codes(adata, codes, agg=agg, name=name, provenance=provenance)
    genes = _genes(store.path)
    token_store = bool(len(codes.token_id)) and bool((codes.token_id >= 0).any())
    genes_table = top_genes(codes, genes, top=top) if token_store else None
    if genes_table is not None:
        paths["top_genes"] = _csv(genes_table, out / "top_genes.csv")
    promoted = None
    if model_dir is not None:
        from extract.heads import promoted_genes

        promoted = promoted_genes(model_dir, dictionary_obj, store, top=top)
        paths["promoted_genes"] = _csv(promoted, out / "promoted_genes.csv")
    enrichment = None
    if sets is not None:
        has_symbols = genes is not None and (genes["symbol"].fillna("") != "").any()
        if genes_table is None or not has_symbols:
            why = "a cell-level store" if genes_table is None else "the store's gene table has no symbols"
            if sets_required:
                raise AnalysisError(f"gene-set enrichment needs the gene symbols of a token store ({why}); "
                                    "pass gene_sets=None (CLI: --no-go, no --gmt) or analyse the layer's tokens store")
            notes.append(f"no gene-set enrichment: {why}")
        else:
            try:
                enrichment = feature_enrichment(codes, genes, sets, top=max(top, 20))
            except AnalysisError as e:  # the default GO sets against non-human or non-symbol genes
                if sets_required:
                    raise
                notes.append(f"no gene-set enrichment: no GO set overlaps the store's genes ({e})")
            else:
                paths["enrichment"] = _csv(enrichment, out / "enrichment.csv")
    table = feature_table(adata, name=name, codes=codes, genes=genes, promoted=promoted, top=min(top, 5))
    if enrichment is not None:
        best_sets = enrichment.groupby("feature", sort=False).head(3)
        label = best_sets["description"].where(best_sets["description"] != "", best_sets["gene_set"])
        joined = label.groupby(best_sets["feature"].to_numpy(), sort=False).agg("; ".join)
        table["top_enrichments"] = joined.reindex(table.index, fill_value="").to_numpy(dtype=object)
    paths["features"] = _csv(table, out / "features.csv", index=True)
    best = None
    if obs is not None:
        assoc = associate(adata, obs, name=name)
        best = best_features(assoc)
        paths["associations"] = _csv(assoc, out / "associations.csv")
        paths["best_features"] = _csv(best, out / "best_features.csv")
        paths["heatmap"] = plot_association_heatmap(assoc, out / "heatmap.png")
        expression = _expression_of_best(adata, best, name=name, notes=notes)
        if expression is not None:
            paths["expression"] = _csv(expression, out / "expression.csv")
    adata.write_h5ad(out / "cells.h5ad")
    paths["cells"] = str(out / "cells.h5ad")
    return paths, best, genes_table, notes


def _expression_of_best(adata, best: pd.DataFrame, *, name: str, notes: list[str], n_genes: int = 10):
    """differential_expression (active vs inactive cells, Wilcoxon) of each label's best feature: its top
    `n_genes` genes, long table with the label; features active in < 2 or all but < 2 cells are noted, not run."""
    from jaxsae.analysis.expression import differential_expression

    tables = []
    for feature, labels in best.groupby("feature", sort=False)["label"]:
        try:
            table = differential_expression(adata, int(feature), name=name, n_genes=n_genes)
        except AnalysisError as e:
            notes.append(f"no differential expression for feature {feature}: {e}")
            continue
        tables.append(table.assign(feature=int(feature), label="; ".join(map(str, labels)),
                                   rank=range(1, len(table) + 1)))
    if not tables:
        return None
    columns = ["feature", "label", "rank", "gene", "score", "logfoldchange", "pval", "pval_adj"]
    return pd.concat(tables, ignore_index=True)[columns]


def _genes(store_path) -> pd.DataFrame | None:
    """The store's gene table (genes.tsv, written by extraction), or None for stores without one."""
    if not (Path(store_path) / "genes.tsv").is_file():
        return None
    from jaxsae.store.genes import load_genes

    return load_genes(store_path)


def _csv(table: pd.DataFrame, path: Path, *, index: bool = False) -> str:
    table.to_csv(path, index=index)
    return os.fspath(path)
