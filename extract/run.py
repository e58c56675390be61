"""Extraction: AnnData of raw counts (one .h5ad or many) + model folder -> activation stores (one per layer
and kind).

Inputs: one .h5ad, a folder, a glob or a list file (extract.inputs); several files are read as one matrix,
rows in file order (global cell g = first_cell of its file + its row there), each file in backed mode, one
block of rows at a time; files with different genes are refused (extract.counts.CountSources).

Output folder:
    out_dir/layer_{L}/tokens/      one row per gene token of every cell (plus <cls>/<eos> rows with
                                   include_special_tokens): the residual stream after block L at that position
    out_dir/layer_{L}/cell_mean/   one row per cell: the unweighted mean over the cell's gene-token positions
                                   of that residual stream (special tokens and padding excluded, whatever
                                   include_special_tokens says; token_id = position = -1)
    out_dir/layer_{L}/cell_cls/    one row per cell: the residual stream at position 0, the <cls> token
                                   (models with one: Geneformer V2, scGPT; token_id = <cls>, position = 0)
    out_dir/layer_{L}/{kind}/genes.tsv  the model's token id -> gene table (jaxsae.store.genes), written when
                                   the store is created, before any commit can mark it complete
    out_dir/skipped_cells.json     cells with no expressed model gene (skipped, with a logged notice)
    out_dir/extract.lock           while an extraction runs: its pid, host and token (one extraction per out_dir)
    out_dir/extraction.json        written last, when every store is complete: {"complete": true, ...}
With workers (--worker i/N, SLURM arrays, torchrun) each {kind} folder is a dataset of part stores instead
(extract.parts): layer_{L}/{kind}/dataset.json + part-{i:04d}-of-{N:04d}/, and no extraction.json; the
workers share one cell scan, out_dir/cell_scan/{key}.npz (extract.scan).
Every store's manifest `source` holds the model, checkpoint sha256, layer, kind, tokeniser settings and the
AnnData file's sha256 (plus the model and AnnData paths, for people only); rows carry cell_index (AnnData
row; with several files the global cell), token_id (model token) and position (in the model input, special
tokens counted). With several files `source["adata"]["files"]` lists each file's identity (extract.inputs),
n_cells and first_cell, so a global cell maps back to (file, row) (`extract.inputs.locate_cells`).

Reuse and refusal: an existing output is matched by content (checkpoint sha256, AnnData sha256, tokeniser
and extraction settings), never by how a path is spelled. One that differs is refused before anything on disk
changes, naming each differing field (old -> new).

Order and resume: cells are processed in windows of `cells_per_commit` consecutive AnnData rows; inside a
window, cells are sorted by length (longest first, ties by row) and cut into batches of at most
tokens_per_batch padded tokens (and batch_size cells; extract.windows.batch_cuts), which limits padding. After
each window every store commits, in a fixed order, with progress {"cells_done": end of window,
"cells_total": cells in the AnnData} (a store with cells_done < cells_total is incomplete). A rerun
opens the stores, restarts at the smallest cells_done, and appends to each store only the windows it has
not committed, so an interrupted run ends identical to an uninterrupted one (no duplicates, no gaps). A
worker does the same over its own cells [first, stop): progress {"cells_done", "cells_total": stop, "part",
"cells_first": first}.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from extract.config import ExtractConfig
from extract.counts import CountSources
from extract.errors import ExtractError
from extract.inputs import resolve_inputs
from extract.models import load_model
from extract.parts import Worker, finish_dataset, join_dataset, partition, resolve_worker
from extract.scan import CellScan, scan_cells, shared_scan
from extract.windows import Stores, run_windows
from jaxsae.atomic import write_atomic
from jaxsae.differences import differences
from jaxsae.store import FolderLock, StoreError, StoreWriteError
from jaxsae.store.genes import write_genes
from jaxsae.store.manifest import read_manifest

INDEX_FILE = "extraction.json"
SKIPPED_FILE = "skipped_cells.json"
LOCK_FILE = "extract.lock"
# recorded for people, never compared: outputs match by content
PATH_FIELDS = ("model_dir", "adata.path", "adata.paths")
# Derived from fields that are compared (adata.sha256), and absent from outputs written before it was recorded.
DERIVED_FIELDS = ("adata.obs_names_sha256",)
NOT_COMPARED = PATH_FIELDS + DERIVED_FIELDS
log = logging.getLogger("jaxsae.extract")


class ExtractionLock(FolderLock):
    """`<out_dir>/extract.lock` (a worker: `extract.part-0003-of-0008.lock`): one extraction (or worker i) per
    output folder; a second one gets an ExtractError."""

    locked_error = ExtractError

    def __init__(self, out_dir: Path, worker: Worker | None = None):
        name = LOCK_FILE if worker is None else f"extract.{worker.name}.lock"
        super().__init__(out_dir, name, "extraction" if worker is None else "extraction worker", field="out_dir")


def store_paths(out_dir: Path, layers: list[int], kinds: list[str]) -> dict[tuple[int, str], Path]:
    """{(layer, kind): store folder}, in the fixed commit order."""
    return {(layer, kind): out_dir / f"layer_{layer}" / kind for layer in layers for kind in kinds}


def _refuse(where: Path, diffs: list[str]) -> ExtractError:
    return ExtractError(
        f"{where} holds an extraction that differs from this one in {len(diffs)} field(s): {'; '.join(diffs)}; "
        "nothing was changed; pass overwrite=True (--overwrite) to replace it, or choose another out_dir"
    )


def check_existing(out_dir: Path, paths: dict, sources: dict, common: dict) -> None:
    """Refuse (ExtractError naming the differing fields) when the index or any existing store of `out_dir`
    belongs to another extraction; reads only, so a refusal leaves everything as it was."""
    index = out_dir / INDEX_FILE
    if index.is_file():
        try:
            previous = json.loads(index.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ExtractError(f"{index} cannot be read ({err}); pass --overwrite to redo the extraction") from None
        diffs = differences(previous.get("source", {}), common, ignore=NOT_COMPARED)
        if diffs:
            raise _refuse(out_dir, diffs)
    for key, path in paths.items():
        if not (path / "manifest.json").is_file():
            continue
        try:
            manifest = read_manifest(path)
        except StoreError as err:
            raise ExtractError(f"cannot open store {path}: {err}") from None
        diffs = differences(manifest.source, sources[key], ignore=NOT_COMPARED)
        if diffs:
            raise _refuse(path, diffs)


def extract(
    adata_path: str | Path,
    model_path: str | Path,
    out_dir: str | Path,
    layers: list[int] | tuple[int, ...] = (-1,),
    config: ExtractConfig | None = None,
    **options,
) -> dict[int, Path]:
    """Extract activations of `layers` for every cell of `adata_path` into stores under `out_dir`.

    adata_path: .h5ad files of raw integer counts: one file, a folder, a glob, a text file listing them, or a
    list of paths (extract.inputs.resolve_inputs), read as one matrix in file order. model_path: a Geneformer
    or scGPT model folder. layers: block indices (layer L = residual stream after block L; negative counts
    from the end). options: fields of `ExtractConfig` (or pass `config`; `worker="i/N"` writes part i of a
    dataset, extract.parts). Returns {layer: path of its token store} (a worker: its part of the token
    dataset). Reruns with the same inputs (matched by content, not path) resume an interrupted extraction; a
    finished one is returned as is. Raises ExtractError before writing anything when an input cannot work
    (naming the file), when out_dir holds another extraction, or when another extraction is running there; a
    failed write (e.g. a full disk) is an ExtractError too, and the stores keep their last commit for the rerun.
    """
    config = config or ExtractConfig(**options)
    out_dir = Path(out_dir)
    if not Path(model_path).is_dir():
        raise ExtractError(f"model folder {model_path} does not exist (or is not a folder); pass the folder that "
                           "holds the model (Geneformer: config.json + weights; scGPT: args.json, vocab.json, "
                           "best_model.pt)")
    # AnnData problems surface before the model loads
    with CountSources(resolve_inputs(adata_path), config.counts_layer, config.gene_column) as source:
        geneformer_files = {
            k: getattr(config, k) for k in ("token_dictionary", "gene_median_dictionary", "gene_name_dictionary")
            if getattr(config, k) is not None
        }
        model = load_model(model_path, device=config.device, **geneformer_files)
        layers = model.check_layers(list(layers))
        tokenizer = model.make_tokenizer(source.var, counts_source=source, **config.tokenizer_options())
        worker = resolve_worker(config.worker)
        scan = (scan_cells(source, tokenizer) if worker is None else  # workers share one scan (extract.scan)
                shared_scan(out_dir, source, config.gene_column, tokenizer, model.describe()))
        n_tokens, n_expressed = scan.n_tokens, scan.n_expressed
        skipped = np.flatnonzero(n_expressed == 0)
        has_cls = getattr(model, "cls_token_id", None) is not None
        kinds = ["tokens"] + (["cell_mean"] + (["cell_cls"] if has_cls else []) if config.cell_embeddings else [])
        common = {
            **model.describe(),
            "tokenizer": tokenizer.settings(),
            "adata": adata_source(source, scan, len(skipped)),
            "extraction": {"cells_per_commit": config.cells_per_commit, "batch_size": config.batch_size,
                           "include_special_tokens": config.include_special_tokens,
                           "compute_dtype": config.compute_dtype,
                           # fixed batches recorded by absence, as by the extractions written before the setting
                           # existed, so those resume with --tokens_per_batch None --batch_size 16
                           **({} if config.tokens_per_batch is None else
                              {"tokens_per_batch": config.tokens_per_batch})},
        }
        datasets = store_paths(out_dir, layers, kinds)  # with workers: dataset folders, holding the parts
        sources = {(layer, kind): {**common, "layer": layer, "kind": kind} for layer, kind in datasets}
        cells, part_progress, paths = range(source.n_cells), {}, datasets
        if worker is not None:
            bounds = partition(np.where(n_expressed > 0, n_tokens, 0), config.cells_per_commit, worker.count)
            cells = range(int(bounds[worker.index]), int(bounds[worker.index + 1]))
            part_progress = {"part": worker.name, "cells_first": cells.start}
            paths = {key: folder / worker.name for key, folder in datasets.items()}
        result = {layer: paths[(layer, "tokens")] for layer in layers}
        with ExtractionLock(out_dir, worker):
            if not config.overwrite:
                check_existing(out_dir, paths, sources, common)
                if worker is None and _finished(out_dir, layers, kinds):
                    return result
            if worker is not None:
                join_dataset(out_dir, datasets, sources, bounds, worker, NOT_COMPARED)
            if len(skipped):
                log.warning(f"skipping {len(skipped)} of {source.n_cells} cells with no expressed model gene "
                            f"(listed in {out_dir / SKIPPED_FILE})")
            try:
                if worker is None:
                    (out_dir / INDEX_FILE).unlink(missing_ok=True)
                write_atomic(out_dir / SKIPPED_FILE, json.dumps({"reason": "no expressed model gene",
                                                                 "cell_index": skipped.tolist()}, indent=2))
                genes = model.gene_table()
                stores = Stores(paths, sources, model.d_model, config, cells, genes, part_progress)
                run_windows(model, tokenizer, source, stores, layers, n_tokens, n_expressed, config, has_cls)
                stores.close()
                if worker is not None:
                    for folder in datasets.values():
                        write_genes(folder, genes)  # the dataset's own table, for readers of the whole dataset
                    finish_dataset(out_dir, datasets)
                else:
                    write_atomic(out_dir / INDEX_FILE, json.dumps({
                        "complete": True, "layers": layers, "kinds": kinds, "source": common,
                        "stores": {f"{layer}/{kind}": str(path) for (layer, kind), path in paths.items()},
                    }, indent=2, default=str))
            except (OSError, StoreWriteError) as err:
                reason = err.reason if isinstance(err, StoreWriteError) else str(err)
                raise ExtractError(
                    f"writing the stores under {out_dir} failed ({reason}); each store keeps its last commit and "
                    f"none is marked complete; free disk space (or fix the cause), then rerun the same jaxsae "
                    "extract command: it resumes where the stores stopped"
                ) from err
            except StoreError as err:  # e.g. non-finite activations, refused by the writer before buffering
                raise ExtractError(
                    f"storing the activations under {out_dir} failed: {err}; the stores keep their last commit and "
                    "none is marked complete"
                ) from err
    return result


def adata_source(source: CountSources, scan: CellScan, n_skipped: int) -> dict:
    """The manifest's source["adata"]: one file as {path, sha256, obs_names_sha256, n_cells, counts_layer,
    n_cells_skipped}; several as {paths, files: [{identity, n_cells, first_cell, obs_names_sha256}], n_cells,
    counts_layer, n_cells_skipped} (identity: `extract.inputs.file_identity`, from the scan; paths are never
    compared)."""
    totals = {"n_cells": source.n_cells, "counts_layer": source.counts_layer, "n_cells_skipped": int(n_skipped)}
    files = [dict(entry) for entry in scan.files]
    if len(files) == 1:
        return {"path": str(source.paths[0].resolve()), **files[0], **totals}
    for f, entry in enumerate(files):
        entry |= {"n_cells": int(source.first_cell[f + 1] - source.first_cell[f]),
                  "first_cell": int(source.first_cell[f])}
    return {"paths": [str(p.resolve()) for p in source.paths], "files": files, **totals}


def _finished(out_dir: Path, layers: list[int], kinds: list[str]) -> bool:
    """Whether out_dir's index says a finished extraction (already checked to match) covers these layers/kinds."""
    index = out_dir / INDEX_FILE
    if not index.is_file():
        return False
    previous = json.loads(index.read_text())
    return bool(previous.get("complete")) and set(layers) <= set(previous.get("layers", [])) \
        and previous.get("kinds") == kinds
