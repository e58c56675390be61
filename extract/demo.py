"""Offline demo inputs: scanpy's bundled pbmc68k_reduced as raw counts, and small models pretrained on it.

`prepare_demo(cache_dir, model_kind="geneformer" | "scgpt")` returns (adata_path, model_dir):
  * adata_path: 700 PBMCs x 765 genes of raw integer counts, recovered from `raw.X` (log1p of counts per
    10,000) as round(expm1(raw.X) x n_counts / 10,000) and refused unless they come out integral (within 0.1,
    the float32 rounding of the stored logs). var: gene symbols as index plus an `ensembl_id` column;
    obs: bulk_labels (10 cell types), louvain, n_counts.
  * model_dir: the demo model in the folder layout users download, assembled from the weights committed in
    `extract/demo_weights/<kind>/` (produced by `python -m extract.demo_pretrain KIND OUT`, which records
    its seed, steps and held-out losses in `pretraining.json`) plus the vocabulary computed from the cells:
      - geneformer: a Geneformer V2-layout folder (config.json, model.safetensors, token / gene-median /
        gene-name dictionaries) holding a 4-layer BertForMaskedLM pretrained with 15% masked-gene prediction;
      - scgpt: an scGPT folder (args.json, vocab.json, best_model.pt) holding a 4-layer TransformerModel
        pretrained with scGPT's masked expression-value prediction (GEP + MVC).
    The vocabulary must hash to what pretraining recorded, else the weights do not fit and it is refused.
THE ENSEMBL IDS ARE MADE UP: no symbol -> Ensembl mapping is available offline, so each symbol gets a
synthetic ID `ENSG99` + 9 digits (its rank in alphabetical order; no real gene has an ENSG99... ID), and the
Geneformer folder's `gene_name_id_dict_demo.pkl` holds that mapping. Do not join these IDs with real annotations.

Everything is cached under cache_dir/pbmc68k_<kind> (built in a temporary folder, then renamed into place
with a COMPLETE marker written last); a later call with the same settings (kind, hash of the committed
weights) reuses it, a half-written or different-settings cache is rebuilt. Nothing is trained here.
`python -m extract.demo CACHE_DIR OUT_DIR [--model-kind K]` also extracts a middle layer.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from extract.errors import ExtractError
from jaxsae.atomic import atomic_folder

MARKER = "COMPLETE.json"
COUNTS_FILE = "pbmc68k_counts.h5ad"
MODEL_FOLDER = "model"
RECORD_FILE = "pretraining.json"
INTEGRAL_TOLERANCE = 0.1
CACHE_FORMAT = 2
MODEL_KINDS = ("geneformer", "scgpt")
WEIGHTS_DIR = Path(__file__).parent / "demo_weights"
WEIGHT_FILES = {"geneformer": ("config.json", "model.safetensors"), "scgpt": ("args.json", "best_model.pt")}
SCGPT_SPECIALS = ("<pad>", "<cls>", "<eoc>")


def check_kind(model_kind: str) -> str:
    if model_kind not in MODEL_KINDS:
        raise ExtractError(f"model_kind={model_kind!r}; expected one of {list(MODEL_KINDS)}")
    return model_kind


def pbmc_counts() -> "anndata.AnnData":  # noqa: F821
    """pbmc68k_reduced (shipped inside scanpy, no network) as raw integer counts with symbols + synthetic IDs."""
    import anndata
    import scanpy as sc

    reduced = sc.datasets.pbmc68k_reduced()
    logs = reduced.raw.X.toarray() if sp.issparse(reduced.raw.X) else np.asarray(reduced.raw.X)
    n_counts = reduced.obs["n_counts"].to_numpy(np.float64)[:, None]
    values = np.expm1(logs.astype(np.float64)) * n_counts / 1e4
    counts = np.round(values)
    worst = float(np.abs(values - counts).max())
    if worst > INTEGRAL_TOLERANCE or counts.min() < 0:
        raise ExtractError(
            f"pbmc68k_reduced raw.X does not invert to integer counts (max distance {worst:.3f} > "
            f"{INTEGRAL_TOLERANCE}); this scanpy version ships different data"
        )
    symbols = [str(s) for s in reduced.raw.var_names]
    synthetic = {s: f"ENSG99{i:09d}" for i, s in enumerate(sorted(symbols))}
    var = pd.DataFrame({"ensembl_id": [synthetic[s] for s in symbols]}, index=symbols)
    obs = reduced.obs[["bulk_labels", "louvain"]].copy()
    obs["n_counts"] = counts.sum(1)
    return anndata.AnnData(X=sp.csr_matrix(counts.astype(np.float32)), obs=obs, var=var)


def gene_medians(counts: sp.csr_matrix, target_sum: float = 1e4) -> np.ndarray:
    """[n_genes] Geneformer gene medians: per gene, the median of its non-zero counts per `target_sum`."""
    normalised = sp.csr_matrix(counts.multiply(target_sum / counts.sum(1))).tocsc()
    return np.array([np.median(normalised[:, j].data) if normalised[:, j].nnz else 1.0
                     for j in range(normalised.shape[1])])


def write_vocabulary(model_kind: str, folder: Path, adata) -> str:
    """Write the model's vocabulary files computed from the cells; returns the sha256 of the token mapping.

    geneformer: token dictionary (<pad> <mask> <cls> <eos>, then the synthetic IDs sorted), gene medians and
    the symbol -> ID dictionary, as pickles. scgpt: vocab.json (symbols in var order, then <pad> <cls> <eoc>).
    """
    from extract.testing import geneformer_token_dictionary, write_geneformer_dictionaries

    folder.mkdir(parents=True, exist_ok=True)
    if check_kind(model_kind) == "geneformer":
        ids = adata.var["ensembl_id"].tolist()
        token_ids = geneformer_token_dictionary(sorted(ids), special_tokens=True)
        medians = dict(zip(ids, gene_medians(adata.X).tolist()))
        write_geneformer_dictionaries(folder, token_ids, medians, dict(zip(adata.var_names, ids)), suffix="demo")
    else:
        token_ids = {g: i for i, g in enumerate([*map(str, adata.var_names), *SCGPT_SPECIALS])}
        (folder / "vocab.json").write_text(json.dumps(token_ids))
    return hashlib.sha256(json.dumps(token_ids, sort_keys=True).encode()).hexdigest()


def committed_record(model_kind: str, weights_dir: Path | None = None) -> dict:
    """The `pretraining.json` recorded next to the committed weights of `model_kind`."""
    weights_dir = weights_dir or WEIGHTS_DIR / check_kind(model_kind)
    path = weights_dir / RECORD_FILE
    if not path.is_file():
        raise ExtractError(f"the demo weights are missing: {path} does not exist; reinstall jaxsae or run "
                           f"`python -m extract.demo_pretrain {model_kind} {weights_dir}`")
    return json.loads(path.read_text())


def assemble_model(model_kind: str, folder: Path, adata, weights_dir: Path | None = None) -> Path:
    """Write the demo model folder of `model_kind`: committed weight files + vocabulary computed from `adata`."""
    weights_dir = weights_dir or WEIGHTS_DIR / check_kind(model_kind)
    record = committed_record(model_kind, weights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*WEIGHT_FILES[model_kind], RECORD_FILE):
        shutil.copyfile(weights_dir / name, folder / name)
    digest = write_vocabulary(model_kind, folder, adata)
    if digest != record["vocabulary_sha256"]:
        raise ExtractError(
            f"the {model_kind} demo vocabulary computed from pbmc68k_reduced (sha256 {digest[:12]}) is not the one "
            f"the committed weights were pretrained with ({record['vocabulary_sha256'][:12]}); this scanpy version "
            f"ships different data: rerun `python -m extract.demo_pretrain {model_kind} OUT`"
        )
    return folder


def weights_digest(model_kind: str) -> str:
    """sha256 over the committed weight files and record of `model_kind` (the cache's settings key)."""
    from extract.models.base import sha256_files

    names = (*WEIGHT_FILES[model_kind], RECORD_FILE)
    return sha256_files([WEIGHTS_DIR / model_kind / n for n in names])


def prepare_demo(cache_dir: str | Path, model_kind: str = "geneformer") -> tuple[Path, Path]:
    """(adata_path, model_dir) of the demo with the `model_kind` model, built on first use and cached."""
    from extract.models import load_model

    check_kind(model_kind)
    cache_dir = Path(cache_dir)
    final = cache_dir / f"pbmc68k_{model_kind}"
    settings = {"format": CACHE_FORMAT, "model_kind": model_kind, "weights_sha256": weights_digest(model_kind)}
    marker = final / MARKER
    if marker.is_file():
        try:
            done = json.loads(marker.read_text())
        except json.JSONDecodeError:
            done = {}
        if done.get("settings") == settings and (final / COUNTS_FILE).is_file() and (final / MODEL_FOLDER).is_dir():
            return final / COUNTS_FILE, final / MODEL_FOLDER
    with atomic_folder(final) as building:  # replaces a half-written or stale cache
        adata = pbmc_counts()
        adata.write_h5ad(building / COUNTS_FILE)
        assemble_model(model_kind, building / MODEL_FOLDER, adata)
        load_model(building / MODEL_FOLDER)  # the folder must load through the public loader before it is complete
        (building / MARKER).write_text(json.dumps({"settings": settings,
                                                   "pretraining": committed_record(model_kind)}, indent=2))
    return final / COUNTS_FILE, final / MODEL_FOLDER


def main(argv: list[str] | None = None) -> None:
    """python -m extract.demo CACHE_DIR OUT_DIR: prepare the demo and extract layer n_layers // 2."""
    import argparse

    from extract.models import load_model
    from extract.run import extract

    parser = argparse.ArgumentParser(prog="python -m extract.demo", description=main.__doc__)
    parser.add_argument("cache_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--model-kind", choices=MODEL_KINDS, default="geneformer")
    args = parser.parse_args(argv)
    adata_path, model_dir = prepare_demo(args.cache_dir, args.model_kind)
    record = committed_record(args.model_kind)
    print({k: record[k] for k in ("steps", "heldout") if k in record})
    layer = load_model(model_dir).n_layers // 2
    stores = extract(adata_path, model_dir, args.out_dir, layers=[layer])
    print(f"adata: {adata_path}\nmodel: {model_dir}\nlayer {layer} token store: {stores[layer]}")


if __name__ == "__main__":
    main()
