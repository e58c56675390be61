"""The store manifest (`manifest.json`): schema, sizes, committed row count, norm statistics, progress."""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxsae.atomic import write_atomic
from jaxsae.errors import StoreError
from jaxsae.store import exact
from jaxsae.store.exact import Expansion

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
ACTS_DTYPES = ("float32", "bfloat16")
NORM_FIELDS = ("count", "sum", "sum_sq_norm", "exact_sum", "exact_sum_sq_norm")


@dataclasses.dataclass(frozen=True)
class NormStats:
    """Running sums over the committed rows, enough for a mean and a global scale.

    count: number of rows summed.
    sum: [d_model] float64 per-dimension sum of the rows (a tuple, so the record stays immutable).
    sum_sq_norm: float64 sum over rows of ||x||^2.
    exact_sum: [d_model] expansions (jaxsae.store.exact) whose exact sums are the per-dimension sums of the
        commits' float64 sums; exact_sum_sq_norm: the same for sum_sq_norm. `sum` and `sum_sq_norm` are them
        correctly rounded, so statistics of parts combine bitwise (`combined`). None in stores written before
        them (a writer reopening such a store starts its expansions from the float sums).
    """

    count: int
    sum: tuple[float, ...]
    sum_sq_norm: float
    exact_sum: tuple[Expansion, ...] | None = None
    exact_sum_sq_norm: Expansion | None = None

    @classmethod
    def zeros(cls, d_model: int) -> NormStats:
        return cls.from_exact(0, ((0.0,),) * d_model, (0.0,))

    @classmethod
    def from_exact(cls, count: int, exact_sum: tuple[Expansion, ...], exact_sum_sq_norm: Expansion) -> NormStats:
        """Statistics of `count` rows whose sums are these expansions (the floats are them correctly rounded)."""
        return cls(count=int(count), sum=tuple(exact.value(p) for p in exact_sum),
                   sum_sq_norm=exact.value(exact_sum_sq_norm), exact_sum=tuple(exact_sum),
                   exact_sum_sq_norm=tuple(exact_sum_sq_norm))

    def plus(self, count: int, row_sum: np.ndarray, sum_sq_norm: float) -> NormStats:
        """These statistics with `count` more rows whose float64 sums are `row_sum: [d]` and `sum_sq_norm`
        (added exactly)."""
        sums, sq = self.expansions()
        return NormStats.from_exact(self.count + int(count), tuple(exact.grow(p, (v,)) for p, v in zip(sums, row_sum)),
                                    exact.grow(sq, (sum_sq_norm,)))

    @classmethod
    def combined(cls, parts: list[NormStats]) -> NormStats:
        """The statistics of all `parts`' rows together: bitwise those of one store that committed the same
        float64 sums (e.g. an extraction cut into parts at window boundaries), for parts with exact sums."""
        total = cls.zeros(len(parts[0].sum))
        for part in parts:
            sums, sq = part.expansions()
            total = cls.from_exact(total.count + part.count,
                                   tuple(exact.grow(a, b) for a, b in zip(total.exact_sum, sums)),
                                   exact.grow(total.exact_sum_sq_norm, sq))
        return total

    def expansions(self) -> tuple[tuple[Expansion, ...], Expansion]:
        """(per-dimension sums, sum of squared norms) as expansions; a store written before exact sums gives
        its float sums (so it continues exactly from them)."""
        if self.exact_sum is not None:
            return self.exact_sum, self.exact_sum_sq_norm
        return tuple((v,) for v in self.sum), (self.sum_sq_norm,)

    def _require_rows(self) -> None:
        if self.count == 0:
            raise StoreError(
                "norm statistics were asked of a store with 0 committed rows; "
                "expected at least 1 row: append rows and commit before reading statistics"
            )

    @property
    def mean(self) -> np.ndarray:
        """[d_model] float64 mean row."""
        self._require_rows()
        return np.asarray(self.sum, dtype=np.float64) / self.count

    @property
    def mean_sq_norm(self) -> float:
        """Mean over rows of ||x||^2; a trainer scales rows by 1/sqrt(mean_sq_norm) for unit mean square norm."""
        self._require_rows()
        return self.sum_sq_norm / self.count

    def to_dict(self) -> dict[str, Any]:
        fields = {"count": self.count, "sum": list(self.sum), "sum_sq_norm": self.sum_sq_norm}
        if self.exact_sum is not None:
            fields |= {"exact_sum": [list(p) for p in self.exact_sum],
                       "exact_sum_sq_norm": list(self.exact_sum_sq_norm)}
        return fields


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Everything a reader needs to trust a store; rewritten atomically on every commit.

    rows_committed: rows [0, rows_committed) are fully on disk; anything past them is garbage.
    shard_rows / chunk_rows: rows per shard (write unit) and per inner chunk (read unit).
    source: free-form provenance from the writer (model, layer, kind, hashes, tokenizer settings).
    progress: free-form dict committed together with the rows (e.g. {"cells_done": 123}).
    created / updated: ISO-8601 UTC timestamps.
    """

    schema_version: int
    d_model: int
    dtype: str
    rows_committed: int
    shard_rows: int
    chunk_rows: int
    source: dict
    norm: NormStats
    progress: dict
    created: str
    updated: str

    def __post_init__(self) -> None:
        _check_manifest(self)

    @classmethod
    def new(
        cls, *, d_model: int, dtype: str, shard_rows: int, chunk_rows: int, source: dict | None
    ) -> Manifest:
        if not _is_count(d_model):
            raise StoreError(f"d_model is {d_model!r}; expected a positive integer (the activation width)")
        now = utc_now()
        return cls(
            schema_version=SCHEMA_VERSION,
            d_model=d_model,
            dtype=dtype,
            rows_committed=0,
            shard_rows=shard_rows,
            chunk_rows=chunk_rows,
            source=dict(source or {}),
            norm=NormStats.zeros(d_model),
            progress={},
            created=now,
            updated=now,
        )

    @property
    def extraction_progress(self) -> tuple[int, int] | None:
        """(cells_done, cells_total) of a store written by an extraction (progress["cells_done"]; the total from
        progress["cells_total"] or source["adata"]["n_cells"]); None for stores written otherwise."""
        done = self.progress.get("cells_done")
        total = self.progress.get("cells_total", (self.source.get("adata") or {}).get("n_cells"))
        if not isinstance(done, int) or not isinstance(total, int):
            return None
        return done, total

    @property
    def is_complete(self) -> bool:
        """False only for an extraction store whose extraction stopped before its last cell."""
        progress = self.extraction_progress
        return progress is None or progress[0] >= progress[1]

    @property
    def status(self) -> str:
        """"complete", or "INCOMPLETE: extraction stopped at cell k of N; ..." (what `store info` prints)."""
        if self.is_complete:
            return "complete"
        done, total = self.extraction_progress
        return f"INCOMPLETE: extraction stopped at cell {done:,} of {total:,}; rerun the extract command to finish it"

    def to_json(self) -> str:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["norm"] = self.norm.to_dict()
        return json.dumps(fields, indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, text: str, *, where: str = "manifest.json") -> Manifest:
        """Parse and validate; `where` names the file in error messages."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise StoreError(
                f"{where}: found text that is not valid JSON ({err}); expected a jaxsae store manifest; "
                "the store was damaged outside jaxsae: re-run the extraction into a fresh store"
            ) from None
        if not isinstance(raw, dict):
            raise StoreError(
                f"{where}: found a JSON {type(raw).__name__}; expected an object; re-run the extraction"
            )
        version = raw.get("schema_version")
        if not _is_count(version):
            raise StoreError(
                f"{where}: schema_version is {version!r}; expected a positive integer; re-run the extraction"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{where}: schema_version {version} was written by a newer jaxsae; this jaxsae reads up to "
                f"{SCHEMA_VERSION}: upgrade jaxsae (pip install -U jaxsae)"
            )
        expected = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(expected - raw.keys())
        if missing:
            raise StoreError(
                f"{where}: fields {missing} are missing; expected all of {sorted(expected)}; re-run the extraction"
            )
        norm = raw["norm"]
        if not isinstance(norm, dict) or set(norm) not in (set(NORM_FIELDS[:3]), set(NORM_FIELDS)):
            raise StoreError(
                f"{where}: norm is {norm!r:.80}; expected {{count, sum, sum_sq_norm}} (plus exact_sum, "
                "exact_sum_sq_norm); re-run the extraction"
            )
        numbers = norm["sum"] + [norm["sum_sq_norm"]] if isinstance(norm["sum"], list) else None
        if numbers is None or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
            raise StoreError(f"{where}: norm.sum / norm.sum_sq_norm are not numbers; re-run the extraction")
        values = {name: raw[name] for name in expected}
        values["norm"] = NormStats(
            count=norm["count"], sum=tuple(float(v) for v in norm["sum"]), sum_sq_norm=norm["sum_sq_norm"],
            **_exact_fields(norm, where),
        )
        try:
            return cls(**values)
        except StoreError as err:
            raise StoreError(f"{where}: {err}") from None


def _exact_fields(norm: dict, where: str) -> dict:
    """The expansions of a manifest's norm record ({} for a store written before them)."""
    if "exact_sum" not in norm:
        return {}
    expansions = [*norm["exact_sum"], norm["exact_sum_sq_norm"]] if isinstance(norm["exact_sum"], list) else [None]
    if not all(isinstance(p, list) and p and all(_is_number(v) for v in p) for p in expansions):
        raise StoreError(f"{where}: norm.exact_sum / exact_sum_sq_norm are not lists of numbers; re-run the "
                         "extraction")
    return {"exact_sum": tuple(tuple(float(v) for v in p) for p in expansions[:-1]),
            "exact_sum_sq_norm": tuple(float(v) for v in expansions[-1])}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_manifest(m: Manifest) -> None:
    """Raise StoreError naming the first field that breaks the manifest's invariants."""
    fix = "re-run the extraction into a fresh store"
    if not _is_count(m.d_model):
        raise StoreError(f"d_model is {m.d_model!r}; expected a positive integer; {fix}")
    if m.dtype not in ACTS_DTYPES:
        raise StoreError(f"dtype is {m.dtype!r}; expected one of {ACTS_DTYPES}; {fix}")
    if not _is_count(m.chunk_rows) or not _is_count(m.shard_rows) or m.shard_rows % m.chunk_rows:
        raise StoreError(
            f"shard_rows={m.shard_rows!r}, chunk_rows={m.chunk_rows!r}; expected positive integers with "
            f"shard_rows a multiple of chunk_rows; choose e.g. shard_rows=16384, chunk_rows=1024"
        )
    if not isinstance(m.rows_committed, int) or isinstance(m.rows_committed, bool) or m.rows_committed < 0:
        raise StoreError(f"rows_committed is {m.rows_committed!r}; expected an integer >= 0; {fix}")
    check_json_object("source", m.source)
    check_json_object("progress", m.progress)
    if m.norm.count != m.rows_committed or len(m.norm.sum) != m.d_model:
        raise StoreError(
            f"norm stats cover {m.norm.count} rows of width {len(m.norm.sum)}; expected {m.rows_committed} rows "
            f"of width {m.d_model}; {fix}"
        )
    if m.norm.exact_sum is not None and len(m.norm.exact_sum) != m.d_model:
        raise StoreError(f"norm exact sums have width {len(m.norm.exact_sum)}; expected {m.d_model}; {fix}")
    if not math.isfinite(float(m.norm.sum_sq_norm)) or not all(math.isfinite(v) for v in m.norm.sum):
        raise StoreError(f"norm stats hold a non-finite value; expected finite sums; {fix}")


def check_json_object(name: str, value: object) -> None:
    """Raise StoreError unless `value` is a dict that JSON can store (no NaN, no numpy scalars)."""
    try:
        ok = isinstance(value, dict) and json.dumps(value, allow_nan=False) is not None
    except (TypeError, ValueError) as err:
        raise StoreError(
            f"{name} holds a value JSON cannot store ({err}); expected plain str/int/float/bool/list/dict values; "
            "convert numpy scalars with int() / float()"
        ) from None
    if not ok:
        raise StoreError(f"{name} is a {type(value).__name__}; expected a dict; pass a dict")


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (source["adata"]["sha256"] is this of the AnnData file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def obs_names_sha256(obs_names) -> str:
    """source["adata"]["obs_names_sha256"]: sha256 of the AnnData's obs_names joined by "\\n" (UTF-8), which
    identifies the cells (and their order) independently of the file's bytes."""
    return hashlib.sha256("\n".join(str(name) for name in obs_names).encode()).hexdigest()


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_manifest(store_path: Path) -> Manifest:
    """The validated manifest of the store folder `store_path`."""
    if not store_path.is_dir():
        raise StoreError(
            f"store {store_path}: the folder does not exist (or is not a folder); expected an activation store "
            "folder holding manifest.json; check the path or run the extraction to create it"
        )
    manifest_path = store_path / MANIFEST_NAME
    if not manifest_path.is_file():
        inner = sorted(p.name for p in store_path.iterdir() if (p / MANIFEST_NAME).is_file())
        if inner:  # an extraction's layer folder, which holds one store per kind of row
            raise StoreError(f"store {store_path}: not a store but a folder of stores ({', '.join(inner)}); pass one "
                             f"of them, e.g. {store_path / inner[-1]}")
        raise StoreError(
            f"store {store_path}: {MANIFEST_NAME} is missing; expected one in every store (it is written at the "
            "first commit); the folder is not a jaxsae store or its extraction never committed: re-run the extraction"
        )
    return Manifest.from_json(manifest_path.read_text(), where=str(manifest_path))


def write_manifest(store_path: Path, manifest: Manifest) -> None:
    """Atomically replace `store_path/manifest.json` (jaxsae.atomic: fsynced temporary, rename, fsynced folder)."""
    write_atomic(store_path / MANIFEST_NAME, manifest.to_json())
