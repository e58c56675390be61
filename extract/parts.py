"""Many workers, one dataset: which worker this is, its contiguous token-balanced slice of cells, and dataset.json.

Layout of a dataset written by N workers (`--worker i/N`, or SLURM array / torchrun variables):
    out_dir/layer_{L}/{kind}/dataset.json                 the parts and the shared source; "complete" once every
                                                          part is
    out_dir/layer_{L}/{kind}/part-{i:04d}-of-{N:04d}/      worker i's store (resumes like any extraction store)
    out_dir/extract.part-{i:04d}-of-{N:04d}.lock          while worker i runs
Worker i extracts the global cells [bounds[i], bounds[i + 1]) (`partition`): contiguous, cut at multiples of
cells_per_commit, so the parts' rows concatenated in part order are row for row those of a single-process
extraction (same windows, same batches, same commits), and their statistics combine bitwise
(jaxsae.store.NormStats.combined). Every worker computes the same bounds from the same cell scan, which the
first worker writes into out_dir and the others reuse (extract.scan).

dataset.json is created by the first worker to arrive and checked by every later one under an flock on
out_dir: a worker whose extraction source (model, inputs, tokeniser and extraction settings) or worker count
differs is refused, naming the differing settings. Completion: each worker, when its part is done, checks
every part's manifest under the same flock, and the one that finds them all complete marks dataset.json
complete (so whichever worker finishes last does it; a rerun of any worker does it too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extract.errors import ExtractError
from jaxsae.atomic import write_atomic
from jaxsae.differences import differences
from jaxsae.store.dataset import DATASET_FILE
from jaxsae.store.lock import folder_flock
from jaxsae.store.manifest import read_manifest

DATASET_FORMAT = "jaxsae dataset"
# (index variable, count variable, first index variable or None): SLURM job arrays, then torchrun
WORKER_ENVIRONMENTS = (("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN"),
                       ("RANK", "WORLD_SIZE", None))


@dataclass(frozen=True)
class Worker:
    """Worker `index` of `count` (0 <= index < count)."""

    index: int
    count: int

    @property
    def name(self) -> str:
        """Its part's folder name: part-0003-of-0008."""
        return f"part-{self.index:04d}-of-{self.count:04d}"


def parse_worker(text: str) -> Worker:
    """"i/N" -> Worker(i, N); ExtractError unless 0 <= i < N."""
    index, _, count = str(text).partition("/")
    try:
        worker = Worker(int(index), int(count))
    except ValueError:
        worker = None
    if worker is None or not 0 <= worker.index < worker.count:
        raise ExtractError(f"worker is {text!r}; expected i/N with 0 <= i < N (e.g. --worker 0/8 for the first of "
                           "8 workers)")
    return worker


def resolve_worker(flag: str | None, environ: Mapping[str, str] = os.environ) -> Worker | None:
    """The worker this process is: `flag` ("i/N") when given, else from a SLURM job array
    (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT) or torchrun (RANK of WORLD_SIZE);
    None (a single-process extraction) when neither names more than one worker."""
    if flag is not None:
        return parse_worker(flag)
    for index_var, count_var, first_var in WORKER_ENVIRONMENTS:
        if index_var in environ and count_var in environ:
            first = int(environ.get(first_var, 0)) if first_var else 0
            text = f"{int(environ[index_var]) - first}/{environ[count_var]}"
            worker = parse_worker(text)
            return worker if worker.count > 1 else None
    return None


def partition(cell_rows: np.ndarray, window: int, n_parts: int) -> np.ndarray:
    """[n_parts + 1] int64 cell bounds: part i holds cells [bounds[i], bounds[i + 1]).

    cell_rows: [n_cells] int64 rows (tokens) each cell adds. The parts are contiguous, every bound is a
    multiple of `window` (or n_cells), and the cumulative rows at bound i are the nearest such cut to
    i / n_parts of the total (ties: the earlier cut). Parts may be empty when there are fewer windows than parts.
    """
    n_cells = len(cell_rows)
    ends = np.r_[np.arange(0, n_cells, window), n_cells].astype(np.int64)  # the possible cuts
    cumulative = np.r_[0, np.cumsum(cell_rows, dtype=np.int64)][ends]
    bounds = [0]
    for i in range(1, n_parts):
        target = cumulative[-1] * i / n_parts
        j = int(np.searchsorted(cumulative, target))
        if j > 0 and (j == len(ends) or target - cumulative[j - 1] <= cumulative[j] - target):
            j -= 1
        bounds.append(max(bounds[-1], int(ends[j])))
    return np.array([*bounds, n_cells], np.int64)


def dataset_record(source: dict, bounds: np.ndarray, complete: bool = False) -> dict:
    """dataset.json's content: format, the parts (folder name and global cell range), source, complete."""
    n_parts = len(bounds) - 1
    parts = [{"path": Worker(i, n_parts).name, "cells": [int(bounds[i]), int(bounds[i + 1])]} for i in range(n_parts)]
    return {"format": DATASET_FORMAT, "complete": complete, "n_parts": n_parts, "parts": parts, "source": source}


def join_dataset(out_dir: Path, folders: dict, sources: dict, bounds: np.ndarray, worker: Worker,
                 ignore: tuple[str, ...]) -> None:
    """Create each dataset folder's dataset.json, or check that this worker belongs to the existing one.

    folders: {(layer, kind): dataset folder}; sources: {(layer, kind): store source}. Raises ExtractError
    naming each differing setting (ignoring the fields `ignore`) or the worker count; writes nothing then.
    """
    with folder_flock(str(out_dir)):
        for key, folder in folders.items():
            path = folder / DATASET_FILE
            if not path.is_file():
                continue
            existing = json.loads(path.read_text())
            if existing.get("n_parts") != worker.count:
                raise ExtractError(
                    f"worker {worker.index}/{worker.count}: dataset {folder} was started by {existing.get('n_parts')} "
                    f"workers, not {worker.count}; start every worker with the same --worker i/N count (only i "
                    "differs), or choose another out_dir")
            diffs = differences(existing["source"], sources[key], ignore=ignore)
            if diffs:
                raise ExtractError(
                    f"worker {worker.index}/{worker.count}: dataset {folder} was started with different settings: "
                    f"{'; '.join(diffs)}; start every worker with the same command (only --worker differs), or "
                    "choose another out_dir")
        for key, folder in folders.items():
            if not (folder / DATASET_FILE).is_file():
                folder.mkdir(parents=True, exist_ok=True)
                write_atomic(folder / DATASET_FILE, json.dumps(dataset_record(sources[key], bounds), indent=1))


def finish_dataset(out_dir: Path, folders: dict) -> bool:
    """Mark each dataset.json complete when every one of its parts is complete; returns whether all are."""
    done = True
    with folder_flock(str(out_dir)):
        for folder in folders.values():
            record = json.loads((folder / DATASET_FILE).read_text())
            complete = all((folder / part["path"] / "manifest.json").is_file()
                           and read_manifest(folder / part["path"]).is_complete for part in record["parts"])
            if complete and not record["complete"]:
                write_atomic(folder / DATASET_FILE, json.dumps({**record, "complete": True}, indent=1))
            done &= complete
    return done
