"""`jaxsae analyze`: from a dictionary and its store to AnnData, feature, gene and cell-type tables on disk."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from jaxsae.analysis.enrichment import resolve_gene_sets
from jaxsae.atomic import atomic_path
from jaxsae.errors import AnalysisError
from jaxsae.plugins import promoted_genes_function


@dataclasses.dataclass
class Analysis:
    """Everything `analyze` writes and `build_report` shows, computed once by `compute`.

    adata: the cells with obsm[f"X_{name}"]; codes: TokenCodes of every store row; genes: the store's gene table
    (None without genes.tsv); top_genes: None for a cell-level store; promoted: None without a model folder;
    gene_sets / enrichment: None when not asked for or not possible (see notes); features: feature_table (plus
    top_enrichments); obs: the label column (None: no association), with associations and best."""

    store: object
    dictionary: object
    adata: object
    codes: object
    name: str
    genes: pd.DataFrame | None
    top_genes: pd.DataFrame | None
    promoted: pd.DataFrame | None
    gene_sets: object | None
    enrichment: pd.DataFrame | None
    features: pd.DataFrame
    obs: str | None
    associations: pd.DataFrame | None
    best: pd.DataFrame | None
    notes: list[str]


@dataclasses.dataclass(frozen=True)
class AnalyzeResult:
    """paths: {output name: path} of every file written; analysis: what was computed (Analysis)."""

    paths: dict[str, str]
    analysis: Analysis

    @property
    def best(self) -> pd.DataFrame | None:
        return self.analysis.best

    @property
    def top_genes(self) -> pd.DataFrame | None:
        return self.analysis.top_genes

    def summary(self) -> list[str]:
        """Per label: its best feature, the AUROC and the feature's top genes (what the CLI prints)."""
        notes = self.analysis.notes
        if self.best is None:
            return [*notes, "no --obs column given: no cell-type association"]
        from jaxsae.analysis.features import gene_labels

        genes = {}
        if self.top_genes is not None and len(self.top_genes):
            named = self.top_genes.assign(name=gene_labels(self.top_genes))
            genes = named.groupby("feature")["name"].agg(lambda names: ", ".join(names.head(5))).to_dict()
        return [*notes, *(f"{row.label}: feature {row.feature} (AUROC {row.auroc:.3f}) top genes: "
                f"{genes.get(row.feature, '-')}" for row in self.best.itertuples())]


def compute(dictionary, store, *, adata=None, obs: str | None = None, agg: str = "mean", model_dir=None,
            name: str = "sae", top: int = 10, gene_sets="go", progress: bool = True) -> Analysis:
    """Encode `store` with `dictionary` once and derive every table of the analysis (see Analysis).

    obs: a categorical obs column, None (no association) or "auto" (the first categorical column with 2-100
    categories, if any). gene_sets: as resolve_gene_sets ("go" is skipped with a note when the store's genes
    have no symbols or overlap no GO set; explicit sets must work). Every input is checked before the
    encoding starts (see encode_cells; GMT files are parsed)."""
    from jaxsae.analysis.association import associate, best_features, default_label_column, obs_labels
    from jaxsae.analysis.cells import attach_codes, prepare
    from jaxsae.analysis.encode import encode_store
    from jaxsae.analysis.features import feature_enrichment, feature_table, top_genes

    store, dictionary_obj, adata, provenance = prepare(store, dictionary, adata, agg=agg, name=name)
    obs = default_label_column(adata) if obs == "auto" else obs
    if obs is not None:
        obs_labels(adata, obs)
    if model_dir is not None and not Path(model_dir).is_dir():
        raise AnalysisError(f"model folder {model_dir} does not exist; pass the folder the store was extracted with")
    promote = promoted_genes_function() if model_dir is not None else None  # the extractor's, via an entry point
    sets, sets_required = resolve_gene_sets(gene_sets)
    notes: list[str] = []

    codes = encode_store(store, dictionary_obj, progress=progress)
    attach_codes(adata, codes, agg=agg, name=name, provenance=provenance)
    genes = _genes(store.path)
    token_store = bool(len(codes.token_id)) and bool((codes.token_id >= 0).any())
    genes_table = top_genes(codes, genes, top=top) if token_store else None
    promoted = None
    if promote is not None:
        promoted = promote(model_dir, dictionary_obj, store, top=top)
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
    table = feature_table(adata, name=name, codes=codes, genes=genes, promoted=promoted, top=min(top, 5))
    if enrichment is not None:
        best_sets = enrichment.groupby("feature", sort=False).head(3)
        label = best_sets["description"].where(best_sets["description"] != "", best_sets["gene_set"])
        joined = label.groupby(best_sets["feature"].to_numpy(), sort=False).agg("; ".join)
        table["top_enrichments"] = joined.reindex(table.index, fill_value="").to_numpy(dtype=object)
    assoc = associate(adata, obs, name=name) if obs is not None else None
    return Analysis(store=store, dictionary=dictionary_obj, adata=adata, codes=codes, name=name, genes=genes,
                    top_genes=genes_table, promoted=promoted, gene_sets=sets, enrichment=enrichment, features=table,
                    obs=obs, associations=assoc, best=best_features(assoc) if assoc is not None else None,
                    notes=notes)


def analyze(dictionary, store, out_dir, *, adata=None, obs: str | None = None, agg: str = "mean",
            model_dir=None, name: str = "sae", top: int = 10, gene_sets="go", progress: bool = True) -> AnalyzeResult:
    """Encode `store` with `dictionary` (compute) and write the analysis files into `out_dir`:
    cells.h5ad (obsm[f"X_{name}"]), features.csv, top_genes.csv (token stores), promoted_genes.csv (with
    model_dir), enrichment.csv (token stores whose gene table has symbols), and with obs: associations.csv,
    best_features.csv, heatmap.png and expression.csv (genes differentially expressed in the cells where each
    label's best feature is active, Wilcoxon against the other cells, on the AnnData's own expression).

    gene_sets: "go" (the shipped human GO biological-process sets; skipped with a note when the store's genes
    have no symbols), a GMT path, a GeneSets / mapping of symbol sets, a list of these (merged), or None.
    Every input is checked before the encoding starts. Each file is written atomically (jaxsae.atomic), and
    cells.h5ad, removed first and written last, marks a whole folder: a crash leaves no half-written file and
    no cells.h5ad beside a mix of old and new tables.
    """
    analysis = compute(dictionary, store, adata=adata, obs=obs, agg=agg, model_dir=model_dir, name=name, top=top,
                       gene_sets=gene_sets, progress=progress)
    out = Path(out_dir)
    (out / "cells.h5ad").unlink(missing_ok=True)
    return AnalyzeResult(paths=_write(analysis, out), analysis=analysis)


def _write(analysis: Analysis, out: Path) -> dict[str, str]:
    """Every file of `analysis` into `out`, each atomically; {output name: path}, cells.h5ad last."""
    from jaxsae.analysis.association import plot_association_heatmap

    paths: dict[str, str] = {}
    tables = {"top_genes": analysis.top_genes, "promoted_genes": analysis.promoted, "enrichment": analysis.enrichment}
    for key, table in tables.items():
        if table is not None:
            paths[key] = _csv(table, out / f"{key}.csv")
    paths["features"] = _csv(analysis.features, out / "features.csv", index=True)
    if analysis.associations is not None:
        paths["associations"] = _csv(analysis.associations, out / "associations.csv")
        paths["best_features"] = _csv(analysis.best, out / "best_features.csv")
        with atomic_path(out / "heatmap.png") as tmp:
            plot_association_heatmap(analysis.associations, tmp)
        paths["heatmap"] = os.fspath(out / "heatmap.png")
        expression = _expression_of_best(analysis.adata, analysis.best, name=analysis.name, notes=analysis.notes)
        if expression is not None:
            paths["expression"] = _csv(expression, out / "expression.csv")
    with atomic_path(out / "cells.h5ad") as tmp:
        analysis.adata.write_h5ad(tmp)
    paths["cells"] = os.fspath(out / "cells.h5ad")
    return paths


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
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=index)
    return os.fspath(path)
