"""Build the shipped human GO gene sets, jaxsae/analysis/data/go_bp_human.{gmt.gz,json}, from Debian's files.

    python experiments/build_go_gene_sets.py [--out-dir jaxsae/analysis/data]

Needs the Debian packages r-bioc-org.hs.eg.db and r-bioc-go.db (`apt-get install r-bioc-org.hs.eg.db
r-bioc-go.db`); reads their SQLite files with Python's sqlite3, no R:

    org.Hs.eg.db  extdata/org.Hs.eg.sqlite  gene_info (Entrez id -> symbol), go_bp_all (gene -> GO id, evidence)
    GO.db         extdata/GO.sqlite         go_term (GO id -> term name)

What a set is: the gene SYMBOLS annotated to a GO biological-process term, with PROPAGATED annotation
(table go_bp_all: a gene annotated to a term also counts for every ancestor of that term along is_a and
part_of), all evidence codes except ND ("no biological data available", which only ever marks the root).
Symbols of distinct Entrez ids that share a symbol are merged. The file keeps sets of SHIPPED_MIN_SIZE to
SHIPPED_MAX_SIZE distinct symbols, sorted by GO id, symbols sorted, so the output is a pure function of the
two SQLite files; `go_gene_sets()` then filters to 5-500 by default. GMT line: GO id, term name, symbols.

tests/test_enrich.py checks that the committed files equal what `build()` produces here (except build_date).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gzip
import hashlib
import json
import re
import sqlite3
import subprocess
from pathlib import Path

SITE_LIBRARY = Path("/usr/lib/R/site-library")
ORG_DB = SITE_LIBRARY / "org.Hs.eg.db" / "extdata" / "org.Hs.eg.sqlite"
GO_DB = SITE_LIBRARY / "GO.db" / "extdata" / "GO.sqlite"
DEBIAN_PACKAGES = {"org.Hs.eg.db": "r-bioc-org.hs.eg.db", "GO.db": "r-bioc-go.db"}
OUT_DIR = Path(__file__).resolve().parents[1] / "jaxsae" / "analysis" / "data"
GMT_NAME, JSON_NAME = "go_bp_human.gmt.gz", "go_bp_human.json"
SHIPPED_MIN_SIZE, SHIPPED_MAX_SIZE = 3, 2000
EXCLUDED_EVIDENCE = ("ND",)
GO_DATA_LICENSE = ("CC BY 4.0 (Gene Ontology Consortium; cite per "
                   "http://geneontology.org/docs/go-citation-policy/)")


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise SystemExit(f"{path} not found: install the Debian packages with "
                         f"`apt-get install {' '.join(DEBIAN_PACKAGES.values())}`")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _description(package_dir: Path) -> dict[str, str]:
    """The package's DESCRIPTION file (Debian control format) as a dict."""
    fields: dict[str, str] = {}
    for line in (package_dir / "DESCRIPTION").read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z][\w.@]*):\s*(.*)$", line)
        if match:
            key = match.group(1)
            fields[key] = match.group(2).strip()
        elif line.startswith((" ", "\t")) and fields:
            fields[key] += " " + line.strip()
    return fields


def _debian_version(package: str) -> str | None:
    try:
        result = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                                capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return None
    return result.stdout.strip() or None


def _package_provenance(name: str, sqlite_path: Path, db: sqlite3.Connection) -> dict:
    description = _description(sqlite_path.parents[1])
    return {
        "version": description.get("Version"),
        "license": description.get("License"),
        "packaged": description.get("Packaged"),
        "debian_package": DEBIAN_PACKAGES[name],
        "debian_version": _debian_version(DEBIAN_PACKAGES[name]),
        "sqlite": str(sqlite_path),
        "metadata": dict(sorted(db.execute("SELECT name, value FROM metadata").fetchall())),
    }


def build(org_db: Path = ORG_DB, go_db: Path = GO_DB) -> tuple[str, dict]:
    """The GMT text and the provenance dict (everything but build_date)."""
    org, go = _connect(org_db), _connect(go_db)
    placeholders = ",".join("?" * len(EXCLUDED_EVIDENCE))
    rows = org.execute(
        "SELECT a.go_id, g.symbol FROM go_bp_all AS a JOIN gene_info AS g ON a._id = g._id "
        f"WHERE a.evidence NOT IN ({placeholders})", EXCLUDED_EVIDENCE)
    sets: dict[str, set[str]] = collections.defaultdict(set)
    for go_id, symbol in rows:
        sets[go_id].add(symbol)
    terms = dict(go.execute("SELECT go_id, term FROM go_term WHERE ontology = 'BP'").fetchall())
    lines, genes = [], set()
    for go_id in sorted(sets):
        symbols = sets[go_id]
        if not SHIPPED_MIN_SIZE <= len(symbols) <= SHIPPED_MAX_SIZE or go_id not in terms:
            continue
        genes |= symbols
        term = " ".join(terms[go_id].split())  # no tabs or newlines inside a GMT field
        lines.append("\t".join([go_id, term, *sorted(symbols)]))
    text = "\n".join(lines) + "\n"
    org_meta = dict(org.execute("SELECT name, value FROM metadata").fetchall())
    provenance = {
        "name": "Gene Ontology biological process, human, gene symbols",
        "aspect": "BP",
        "organism": org_meta.get("ORGANISM"),
        "taxid": org_meta.get("TAXID"),
        "go_release": org_meta.get("GOSOURCEDATE"),
        "gene_annotation_date": org_meta.get("GOEGSOURCEDATE"),
        "annotation": ("propagated (org.Hs.eg.db table go_bp_all): a gene annotated to a term counts for "
                       "every ancestor term (is_a, part_of)"),
        "evidence": f"all evidence codes except {', '.join(EXCLUDED_EVIDENCE)}",
        "identifiers": "HGNC/NCBI gene symbols (org.Hs.eg.db gene_info.symbol); set name = GO id, "
                       "description = GO term name (GO.db go_term)",
        "shipped_min_size": SHIPPED_MIN_SIZE,
        "shipped_max_size": SHIPPED_MAX_SIZE,
        "n_sets": len(lines),
        "n_genes": len(genes),
        "gmt_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "licenses": {
            "GO data (terms and annotations)": GO_DATA_LICENSE,
            "org.Hs.eg.db": _description(org_db.parents[1]).get("License"),
            "GO.db": _description(go_db.parents[1]).get("License"),
        },
        "packages": {"org.Hs.eg.db": _package_provenance("org.Hs.eg.db", org_db, org),
                     "GO.db": _package_provenance("GO.db", go_db, go)},
        "builder": "experiments/build_go_gene_sets.py",
    }
    return text, provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--org-db", type=Path, default=ORG_DB)
    parser.add_argument("--go-db", type=Path, default=GO_DB)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    text, provenance = build(args.org_db, args.go_db)
    provenance["build_date"] = datetime.date.today().isoformat()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    gmt_path = args.out_dir / GMT_NAME
    with open(gmt_path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                     compresslevel=9, mtime=0) as out:
        out.write(text.encode("utf-8"))
    (args.out_dir / JSON_NAME).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    print(f"{gmt_path}: {provenance['n_sets']} sets, {provenance['n_genes']} genes, "
          f"{gmt_path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
