"""What the report is about: the dictionary folder a run folder or path names, and its training record."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from jaxsae.dictionary import CONFIG_FILE, RUN_COMPLETE_FILE, WEIGHTS_FILE, Dictionary, DictionaryError, load

SUMMARY_METRICS = ("fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction", "loss", "rows_seen")
"""Final metrics shown in the summary, in this order, when the run recorded them."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A loaded dictionary and its history.

    dictionary_dir: the dictionary folder; run_dir: its run folder (None for a stand-alone dictionary);
    member / n_members: which member of the run; records: that member's metrics.jsonl records (empty when
    there is no run folder); final: the final metrics (the dictionary's config.json "metrics").
    """

    dictionary: Dictionary
    dictionary_dir: Path
    run_dir: Path | None
    member: int
    n_members: int
    records: list[dict]
    final: dict
    finished_at: str | None


def resolve(run_or_dictionary: str | os.PathLike, member: int = 0) -> Source:
    """Load the dictionary `run_or_dictionary` names: a finished run folder (its member `member`), one of its
    `dictionaries/member_NNN` folders, or a stand-alone dictionary folder. Raises DictionaryError with the fix."""
    path = Path(run_or_dictionary).resolve()
    if not path.exists():
        raise DictionaryError(f"{path}: no such run or dictionary folder")
    run_dir = _run_folder(path)
    if run_dir is not None and not (run_dir / RUN_COMPLETE_FILE).is_file():
        raise DictionaryError(
            f"{run_dir}: this run has not finished training (no {RUN_COMPLETE_FILE}), so it has no dictionary to "
            f"report on yet; finish it with `jaxsae train {run_dir / CONFIG_FILE}` and run `jaxsae report` again"
        )
    members = sorted(p for p in (run_dir / "dictionaries").glob("member_*") if p.is_dir()) if run_dir else []
    if run_dir is not None and path == run_dir:
        if not 0 <= member < len(members):
            raise DictionaryError(
                f"{run_dir}: --member {member} does not exist; this run has {len(members)} member(s) "
                f"({', '.join(p.name for p in members) or 'none'}): pick one with --member 0..{len(members) - 1}"
            )
        dictionary_dir = members[member]
    else:
        dictionary_dir = path
        if not (path / WEIGHTS_FILE).is_file():
            raise DictionaryError(f"{path}: neither a run folder (no metrics.jsonl or dictionaries/) nor a "
                                  f"dictionary folder (no {WEIGHTS_FILE}); pass one of those")
    dictionary = load(dictionary_dir)
    member = int(dictionary.config.get("member", member if run_dir else 0))
    records, finished_at = [], None
    if run_dir is not None:
        metrics_path = run_dir / "metrics.jsonl"
        if metrics_path.is_file():
            with open(metrics_path) as f:
                records = [r for r in (json.loads(line) for line in f if line.strip()) if r.get("member", 0) == member]
        with open(run_dir / RUN_COMPLETE_FILE) as f:
            finished_at = json.load(f).get("finished_at")
    final = dict(dictionary.config.get("metrics") or (records[-1] if records else {}))
    return Source(dictionary=dictionary, dictionary_dir=dictionary_dir, run_dir=run_dir, member=member,
                  n_members=max(1, len(members)), records=records, final=final, finished_at=finished_at)


def _run_folder(path: Path) -> Path | None:
    """The run folder `path` is, or whose dictionaries/member_NNN it is; None for a stand-alone dictionary."""
    for candidate in (path, path.parent.parent if path.parent.name == "dictionaries" else None):
        if candidate is not None and any((candidate / name).exists()
                                         for name in ("checkpoints", "metrics.jsonl", "dictionaries")):
            return candidate
    return None


def summary(source: Source) -> dict[str, object]:
    """{label: value} for the report's summary table: what was trained on what, and how well."""
    d = source.dictionary
    sae_cfg = d.config.get("sae", {})
    origin = d.config.get("source", {})
    items: dict[str, object] = {
        "dictionary": str(source.dictionary_dir),
        "run folder": str(source.run_dir) if source.run_dir else "(stand-alone dictionary)",
    }
    if source.n_members > 1:
        items["member"] = f"{source.member} of {source.n_members} (choose another with --member)"
    items |= {
        "architecture": d.sae.architecture, "latents x d_model": f"{d.n_latents:,} x {d.d_model}",
        "k": sae_cfg.get("k"), "hyperparameters": d.hparams, "steps": d.config.get("steps"),
        "trained on": origin.get("store"), "model": origin.get("model"), "model folder": origin.get("model_dir"),
        "layer": origin.get("layer"), "finished": source.finished_at,
    }
    for key in SUMMARY_METRICS:
        if key in source.final:
            items[f"final {key}"] = source.final[key]
    return {k: v for k, v in items.items() if v not in (None, "", {})}
