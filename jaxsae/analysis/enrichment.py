"""Gene sets (GMT files, shipped human GO biological process) and over-representation of feature genes in them.

The test: for feature f with n genes in the universe (the N genes the model can see) and gene set s with K
genes in the universe, the overlap k is tested with the one-sided hypergeometric tail P(X >= k) =
`scipy.stats.hypergeom.sf(k - 1, N, K, n)` (= Fisher's exact test, alternative="greater").

FDR: Benjamini-Hochberg, GLOBAL over all m = (features with a gene in the universe) x (sets with a gene in
the universe) pairs of the call, not per feature. Pairs with k < min_overlap are not computed and count as
p = 1 (conservative: 1 is at least their true p). Counting only the computed pairs would select tests by
their own statistic and shrink m; the planted-signal test found false hits that way. So `fdr < 0.05`
bounds the expected share of false rows among all rows at or below it, and the result barely depends on
min_overlap, which is there for speed.

PERFORMANCE: all overlaps come from one sparse product, features x universe times universe x sets
(scipy CSR); p-values are computed once per distinct (k, K, n); gene names only for the rows returned.
2,048 features x 50 genes (20 from one GO set, 30 random) against the 9,006 shipped GO sets (5-500
genes), universe 16,062 symbols: 2.7 s for all 960 k computed pairs, 1.6 s with max_fdr=0.05 (one core
of a shared 2-core machine; half of it is building the DataFrame).
"""
from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import importlib.resources
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse
import scipy.stats

from jaxsae.errors import AnalysisError

log = logging.getLogger(__name__)

GO_ASPECTS = {"BP": ("go_bp_human.gmt.gz", "go_bp_human.json")}
COLUMNS = ["feature", "gene_set", "description", "overlap", "set_size", "n_genes", "universe",
           "fold_enrichment", "p_value", "fdr", "genes"]
_GMT_FIX = "a GMT line is: set name<TAB>description<TAB>gene<TAB>gene..., one set per line, UTF-8 text"


class GeneSets(Mapping):
    """Immutable mapping set name -> frozenset of gene symbols, with a description per set and provenance.

    descriptions: name -> free text (GMT column 2; the GO term name for `go_gene_sets`).
    source: provenance dict (where from, version, licence, build date); returned as a copy.
    """

    __slots__ = ("_sets", "_descriptions", "_source")

    def __init__(self, sets: Mapping[str, Iterable[str]], descriptions: Mapping[str, str] | None = None,
                 source: Mapping[str, Any] | None = None):
        frozen = {}
        for name, genes in sets.items():
            if not isinstance(name, str) or not name:
                raise AnalysisError(f"gene set name {name!r} is not a non-empty string: name every set")
            if isinstance(genes, str):
                raise AnalysisError(f"gene set {name!r} is a single string {genes[:40]!r}, expected a collection "
                                    "of gene symbols: pass a list or set")
            frozen[name] = frozenset(genes)
        descriptions = dict(descriptions or {})
        object.__setattr__(self, "_sets", MappingProxyType(frozen))
        object.__setattr__(self, "_descriptions", MappingProxyType({n: descriptions.get(n, "") for n in frozen}))
        object.__setattr__(self, "_source", copy.deepcopy(dict(source or {})))

    def __setattr__(self, name, value):
        raise AttributeError("GeneSets is immutable: build a new one (restrict, filter_size)")

    def __getitem__(self, name: str) -> frozenset[str]:
        return self._sets[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._sets)

    def __len__(self) -> int:
        return len(self._sets)

    def __repr__(self) -> str:
        sizes = [len(g) for g in self._sets.values()] or [0]
        return (f"GeneSets({len(self)} sets, {min(sizes)}-{max(sizes)} genes, "
                f"source={self._source.get('name') or self._source.get('path')!r})")

    @property
    def descriptions(self) -> Mapping[str, str]:
        return self._descriptions

    @property
    def source(self) -> dict[str, Any]:
        return copy.deepcopy(self._source)

    def restrict(self, universe: Iterable[str]) -> GeneSets:
        """Each set intersected with `universe` (e.g. the model's genes); sets left empty are dropped."""
        universe = _as_gene_collection(universe, "universe")
        kept = {n: g & universe for n, g in self._sets.items() if not g.isdisjoint(universe)}
        return GeneSets(kept, self._descriptions, {**self._source, "restricted_to_universe": len(universe)})

    def filter_size(self, min_size: int = 1, max_size: int | None = None) -> GeneSets:
        """The sets with min_size <= len(set) <= max_size (no upper bound when None)."""
        top = max_size if max_size is not None else float("inf")
        kept = {n: g for n, g in self._sets.items() if min_size <= len(g) <= top}
        return GeneSets(kept, self._descriptions, {**self._source, "min_size": min_size, "max_size": max_size})


def _as_gene_collection(genes: Iterable[str], what: str) -> frozenset[str]:
    if isinstance(genes, str):
        raise AnalysisError(f"{what} is a single string {genes[:40]!r}, expected a collection of gene symbols")
    return frozenset(genes)


def read_gmt(path: str | PathLike) -> GeneSets:
    """Gene sets from a GMT file (plain or gzip): name<TAB>description<TAB>genes..., blank lines ignored.

    Empty gene fields (trailing tabs) are skipped and CRLF line ends accepted; anything else malformed raises
    AnalysisError naming the file, the line number, what is wrong and the fix.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise AnalysisError(f"cannot read GMT file {path}: {err.strerror or err}; check the path") from err
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise AnalysisError(f"{path}: looks gzip-compressed but does not decompress ({err}); "
                                "re-download or re-compress it") from err
    if b"\x00" in raw:
        line_no = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise AnalysisError(f"{path}, line {line_no}: NUL byte, this is a binary file, not GMT text; {_GMT_FIX}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = raw[: err.start].count(b"\n") + 1
        raise AnalysisError(f"{path}, line {line_no}: not UTF-8 text (byte {raw[err.start]:#04x}), a binary "
                            f"file or another encoding; convert it to UTF-8 ({_GMT_FIX})") from err
    sets, descriptions, first_line = {}, {}, {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split("\t")
        where = f"{path}, line {line_no}"
        if len(fields) < 3:
            raise AnalysisError(f"{where}: {len(fields)} tab-separated field(s), need at least 3 (name, "
                                f"description, genes); {_GMT_FIX} (tabs, not spaces)")
        name = fields[0].strip()
        if not name:
            raise AnalysisError(f"{where}: empty set name in field 1; {_GMT_FIX}")
        if name in sets:
            raise AnalysisError(f"{where}: duplicate set name {name!r} (first on line {first_line[name]}); "
                                "rename one or merge the two lines")
        genes = [g.strip() for g in fields[2:] if g.strip()]
        if not genes:
            raise AnalysisError(f"{where}: set {name!r} has no genes (fields 3+ are empty); add its genes "
                                "or delete the line")
        sets[name], descriptions[name], first_line[name] = genes, fields[1].strip(), line_no
    if not sets:
        raise AnalysisError(f"{path}: no gene sets (empty file); {_GMT_FIX}")
    source = {"path": str(path.resolve()), "format": "GMT", "text_sha256": hashlib.sha256(raw).hexdigest()}
    return GeneSets(sets, descriptions, source)


@functools.lru_cache(maxsize=len(GO_ASPECTS))
def _shipped_go(aspect: str) -> GeneSets:
    gmt_name, json_name = GO_ASPECTS[aspect]
    data = importlib.resources.files("jaxsae.analysis") / "data"
    with importlib.resources.as_file(data / gmt_name) as gmt_path:
        sets = read_gmt(gmt_path)
    provenance = json.loads((data / json_name).read_text(encoding="utf-8"))
    return GeneSets(sets, sets.descriptions, provenance)


def go_gene_sets(aspect: str = "BP", min_size: int = 5, max_size: int = 500) -> GeneSets:
    """Human Gene Ontology gene sets (gene symbols), shipped with the package, offline.

    Built by experiments/build_go_gene_sets.py from Debian's Bioconductor org.Hs.eg.db and GO.db (GO release
    and versions in `.source`). Annotation is PROPAGATED: a gene annotated to a term counts for all its
    ancestors. Set name = GO id, description = term name. Keeps sets of min_size..max_size genes (default
    5-500, counted over all annotated genes, before any restriction to a universe); the file holds 3-2000.
    """
    if aspect not in GO_ASPECTS:
        raise AnalysisError(f"aspect={aspect!r}: only {sorted(GO_ASPECTS)} is shipped; for another aspect "
                            "build a GMT file and load it with read_gmt")
    sets = _shipped_go(aspect)
    shipped = (sets.source["shipped_min_size"], sets.source["shipped_max_size"])
    if not shipped[0] <= min_size <= max_size <= shipped[1]:
        raise AnalysisError(f"min_size={min_size}, max_size={max_size}: need {shipped[0]} <= min_size <= "
                            f"max_size <= {shipped[1]}, the sizes the shipped file holds; for others, edit "
                            "SHIPPED_*_SIZE in experiments/build_go_gene_sets.py and load its output with read_gmt")
    return sets.filter_size(min_size, max_size)


def _benjamini_hochberg(p_values: np.ndarray, n_tests: int) -> np.ndarray:
    """BH adjusted p-values (step-up, monotone, capped at 1) of `p_values` among n_tests >= len(p_values) tests.

    The n_tests - len(p_values) tests not given count as p = 1 (they rank last, so only m changes).
    """
    order = np.argsort(p_values, kind="stable")
    scaled = p_values[order] * n_tests / np.arange(1, p_values.size + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    fdr = np.empty(p_values.size)
    fdr[order] = np.minimum(adjusted, 1.0)
    return fdr


def _gene_lists(feature_genes: Mapping[Any, Sequence[str]], index: Mapping[str, int]):
    """Entries (feature row, universe gene index), rows ascending, each feature's distinct genes in its order.

    Genes outside the universe are dropped; also returns their count.
    """
    features, rows, cols = list(feature_genes), [], []
    n_outside = 0
    for row, feature in enumerate(features):
        genes = feature_genes[feature]
        if isinstance(genes, str):
            raise AnalysisError(f"feature {feature!r}: genes is the single string {genes[:40]!r}, expected a "
                                "sequence of gene symbols")
        distinct = list(dict.fromkeys(genes))
        inside = [index[g] for g in distinct if g in index]
        n_outside += len(distinct) - len(inside)
        rows += [row] * len(inside)
        cols += inside
    return features, np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64), n_outside


def enrich(feature_genes: Mapping[Any, Sequence[str]], gene_sets: Mapping[str, Iterable[str]],
           universe: Iterable[str], *, min_overlap: int = 2, max_fdr: float = 1.0) -> pd.DataFrame:
    """Over-representation of each feature's top genes in each gene set (hypergeometric, global BH FDR).

    feature_genes: feature id -> its top gene symbols, best first (order is kept in the `genes` column).
    gene_sets: a GeneSets (or any mapping name -> genes); sets and feature genes are restricted to `universe`.
    universe: the genes the model can see (its vocabulary, as symbols): the N of the test.
    min_overlap: pairs sharing fewer genes get no row and count as p = 1 in the FDR (module docstring).
    max_fdr: return only rows with fdr <= max_fdr (1.0: every computed pair).

    Feature genes outside the universe are ignored (duplicates counted once); a feature left with none gets
    no rows and a logged warning; if no feature, or no set, has a gene in the universe: AnalysisError (an
    identifier mismatch, e.g. Ensembl ids against symbols).
    Returns one row per computed pair, columns COLUMNS, sorted by fdr then p_value: overlap = k, set_size = K,
    n_genes = n, universe = N, fold_enrichment = (k / n) / (K / N), genes = the shared symbols in the
    feature's order, comma-joined. table.attrs: n_tests (the m of BH), min_overlap.
    """
    if not isinstance(min_overlap, (int, np.integer)) or min_overlap < 1:
        raise AnalysisError(f"min_overlap={min_overlap!r}: need an integer >= 1")
    if not 0.0 <= max_fdr <= 1.0:
        raise AnalysisError(f"max_fdr={max_fdr!r}: need 0 <= max_fdr <= 1")
    for what, value in (("feature_genes", feature_genes), ("gene_sets", gene_sets)):
        if not isinstance(value, Mapping):
            raise AnalysisError(f"{what} is a {type(value).__name__}, expected a mapping (e.g. a dict; for a "
                                "pandas Series use .to_dict())")
    if isinstance(universe, str):
        raise AnalysisError(f"universe is a single string {universe[:40]!r}, expected a collection of symbols")
    universe_genes = list(dict.fromkeys(universe))
    if not universe_genes:
        raise AnalysisError("universe is empty: pass the genes the model can see (its vocabulary, as symbols)")
    if not feature_genes:
        raise AnalysisError("feature_genes is empty: pass a mapping feature id -> its top gene symbols")
    index = {g: i for i, g in enumerate(universe_genes)}
    n_universe = len(universe_genes)

    features, f_rows, f_cols, n_outside = _gene_lists(feature_genes, index)
    n_genes = np.bincount(f_rows, minlength=len(features))
    example_universe = ", ".join(universe_genes[:3])
    if not f_rows.size:
        some = [g for genes in list(feature_genes.values())[:3] for g in list(genes)[:2]]
        raise AnalysisError(f"no feature gene is in the universe (features have e.g. {some}, the universe "
                            f"{example_universe}, ...): use the same identifiers (gene symbols) for both")
    if (n_genes == 0).any():
        empty = [features[i] for i in np.flatnonzero(n_genes == 0)]
        log.warning("%d feature(s) have no gene in the universe and get no tests: %s", len(empty), empty[:10])
    if n_outside:
        log.info("%d feature gene(s) outside the universe ignored", n_outside)

    set_names, s_rows, s_cols = [], [], []
    n_sets_in_universe = 0
    for name, genes in gene_sets.items():
        inside = {index[g] for g in genes if g in index}
        n_sets_in_universe += bool(inside)
        if len(inside) >= min_overlap:
            s_rows += inside
            s_cols += [len(set_names)] * len(inside)
            set_names.append(name)
    if not set_names:
        some = [g for genes in list(gene_sets.values())[:2] for g in list(genes)[:2]]
        raise AnalysisError(f"no gene set has {min_overlap} or more genes in the universe (sets have e.g. {some}, "
                            f"the universe {example_universe}, ...): use the same identifiers for both")
    feature_matrix = scipy.sparse.csr_matrix((np.ones(f_rows.size, np.int32), (f_rows, f_cols)),
                                             shape=(len(features), n_universe))
    set_matrix = scipy.sparse.csr_matrix((np.ones(len(s_rows), np.int32), (s_rows, s_cols)),
                                         shape=(n_universe, len(set_names)))
    set_sizes = np.asarray(set_matrix.sum(axis=0)).ravel().astype(np.int64)

    overlaps = (feature_matrix @ set_matrix).tocoo()
    tested = overlaps.data >= min_overlap
    feat, sets, k = overlaps.row[tested], overlaps.col[tested], overlaps.data[tested].astype(np.int64)
    n_tests = int(np.count_nonzero(n_genes)) * n_sets_in_universe
    if not k.size:
        return _with_attrs(pd.DataFrame({c: [] for c in COLUMNS}), n_tests, min_overlap)
    n, big_k = n_genes[feat], set_sizes[sets]
    base = n_universe + 1  # k, K, n <= N: one int64 key per distinct (k, K, n), exact up to N ~ 2 M
    combos, inverse = np.unique((k * base + big_k) * base + n, return_inverse=True)
    combo_k, combo_big_k, combo_n = combos // base**2, combos // base % base, combos % base
    p_values = scipy.stats.hypergeom.sf(combo_k - 1, n_universe, combo_big_k, combo_n)[inverse.ravel()]
    fdr = _benjamini_hochberg(p_values, n_tests)

    keep = np.flatnonzero(fdr <= max_fdr)
    keep = keep[np.lexsort((sets[keep], feat[keep], p_values[keep], fdr[keep]))]
    feat, sets, k, n, big_k = feat[keep], sets[keep], k[keep], n[keep], big_k[keep]
    descriptions = getattr(gene_sets, "descriptions", {})
    return _with_attrs(pd.DataFrame({
        "feature": pd.Index(features, tupleize_cols=False).take(feat),
        "gene_set": np.asarray(set_names, dtype=object)[sets],
        "description": np.asarray([descriptions.get(name, "") for name in set_names], dtype=object)[sets],
        "overlap": k, "set_size": big_k, "n_genes": n, "universe": n_universe,
        "fold_enrichment": (k / n) / (big_k / n_universe),
        "p_value": p_values[keep], "fdr": fdr[keep],
        "genes": _shared_genes(f_rows, f_cols, set_matrix, feat, sets, universe_genes),
    }), n_tests, min_overlap)


def _with_attrs(table: pd.DataFrame, n_tests: int, min_overlap: int) -> pd.DataFrame:
    table.attrs.update(n_tests=n_tests, min_overlap=min_overlap, fdr="Benjamini-Hochberg, global")
    return table


def _shared_genes(f_rows, f_cols, set_matrix, feat, sets, universe_genes) -> np.ndarray:
    """For each (feat[i], sets[i]) pair, the shared genes comma-joined, in the feature's rank order.

    Expands each (feature, gene) entry of the returned features into (feature, gene, set) triples through
    the universe x sets CSR rows, keeps the triples whose (feature, set) pair is returned, and groups them.
    """
    if not feat.size:
        return np.empty(0, dtype=object)
    n_sets = set_matrix.shape[1]
    rank = np.arange(f_rows.size) - np.searchsorted(f_rows, f_rows)  # position within the feature's list
    entry = np.isin(f_rows, feat)
    f_entry, gene_entry, rank_entry = f_rows[entry], f_cols[entry], rank[entry]
    per_entry = np.diff(set_matrix.indptr)[gene_entry]
    first_triple = np.cumsum(per_entry) - per_entry
    positions = np.repeat(set_matrix.indptr[gene_entry] - first_triple, per_entry) + np.arange(per_entry.sum())
    triple_key = np.repeat(f_entry, per_entry) * n_sets + set_matrix.indices[positions]
    pair_key = feat.astype(np.int64) * n_sets + sets
    selected = np.isin(triple_key, pair_key)
    triple_key = triple_key[selected]
    triple_gene = np.repeat(gene_entry, per_entry)[selected]
    order = np.lexsort((np.repeat(rank_entry, per_entry)[selected], triple_key))
    triple_key, triple_gene = triple_key[order], triple_gene[order]
    starts = np.flatnonzero(np.r_[True, np.diff(triple_key) != 0])
    names = np.asarray(universe_genes, dtype=object)[triple_gene].tolist()
    joined = np.asarray([",".join(names[a:b]) for a, b in zip(starts.tolist(), [*starts[1:].tolist(), len(names)])],
                        dtype=object)
    return joined[np.searchsorted(triple_key[starts], pair_key)]


def resolve_gene_sets(spec) -> tuple[GeneSets | None, bool]:
    """The gene sets a `gene_sets=` argument (analyze, build_report) names, merged (source["from"]: where each
    part came from), and whether they were asked for explicitly. spec: "go" (the shipped GO BP sets: used
    when the genes have symbols, skipped with a note otherwise), a GMT path, a mapping name -> genes, a list
    of these, or None / [] (no enrichment).
    GMT files are parsed here, so a malformed one is refused before any long step."""
    items = list(spec) if isinstance(spec, (list, tuple)) else ([] if spec is None else [spec])
    if not items:
        return None, False
    merged: dict[str, frozenset[str]] = {}
    descriptions: dict[str, str] = {}
    origins: list[str] = []
    for item in items:
        if isinstance(item, str) and item == "go":
            sets, origin = go_gene_sets(), "GO biological process (shipped with jaxsae)"
        elif isinstance(item, (str, PathLike)):
            sets, origin = read_gmt(item), str(item)
        elif isinstance(item, Mapping):
            sets, origin = item, "given as a mapping"
        else:
            raise AnalysisError(f"gene_sets item {item!r}: expected 'go', a GMT path or a mapping name -> genes")
        merged.update(sets)
        descriptions.update(getattr(sets, "descriptions", {}))
        origins.append(origin)
    required = any(not (isinstance(item, str) and item == "go") for item in items)
    return GeneSets(merged, descriptions, source={"from": origins}), required
