"""Running a sweep's packs. Each pack is an ordinary run folder (resumable, locked, marked complete by
`run.json`), so a rerun skips finished packs and resumes the interrupted one exactly. `run_sweep` plans and
trains every pack here, one after another; `run_packs` trains some packs of a sweep folder from the plan it
records (a scheduler's task, `jaxsae sweep launch`), and `summarize` writes summary.csv once all are done.

```
<out>/sweep.json          the spec file, the plan, and each pack's status (rewritten atomically)
<out>/packs/pack000/      a run folder (config.json, checkpoints/, dictionaries/member_000, ..., run.json)
<out>/summary.csv         written when every pack is complete: one row per member, its settings and metrics
<out>/summary.parquet     the same table, when pyarrow imports (the `analysis` extra)
```
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import json
import logging
import os
from collections.abc import Sequence

from jaxsae.atomic import atomic_path, write_atomic
from jaxsae.errors import ConfigError
from jaxsae.sweep.members import SWEEP_FILE
from jaxsae.sweep.plan import Pack, Plan, packs_from_json, plan_sweep
from jaxsae.sweep.spec import load_spec
from jaxsae.train import run_folder
from jaxsae.train.metrics import read_metrics

SUMMARY_FILE = "summary.csv"
SUMMARY_PARQUET = "summary.parquet"
METRICS = ("fvu", "explained_variance", "l0", "dead_fraction", "dense_fraction")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SweepResult:
    out: str
    summary: str
    trained: list[str]   # packs trained (or resumed) by this call
    kept: list[str]      # packs that were already complete


def default_out(plan: Plan) -> str:
    return os.path.join("runs", "sweeps", plan.spec.name)


def run_sweep(spec_path: str | os.PathLike, out: str | os.PathLike | None = None, *,
              progress: bool = True) -> SweepResult:
    """Plan the spec (refusing bad specs before any work) and train every pack not yet complete, in order."""
    return run_plan(plan_sweep(load_spec(spec_path)), out, progress=progress)


def run_plan(plan: Plan, out: str | os.PathLike | None = None, *, progress: bool = True) -> SweepResult:
    """Train every pack of `plan` not yet complete into `out`, in order; then write summary.csv."""
    out = claim(plan, out)
    trained, kept = [], []
    for pack in plan.packs:
        if train_pack(out, pack, progress=progress):
            trained.append(pack.name)
            _write_status(out, plan.spec.path, plan.to_json())
        else:
            kept.append(pack.name)
    return SweepResult(out, write_summary(out, plan.packs), trained, kept)


def run_packs(out: str | os.PathLike, names: Sequence[str] = (), *,
              progress: bool = True) -> tuple[list[str], list[str]]:
    """Train the named packs (default: every one, in order) of the sweep folder `out` from the plan its
    sweep.json records, without planning again: what a scheduler's task runs. Writes only those packs' run
    folders (sweep.json and summary.csv are left to `summarize`); a complete pack is skipped.
    Returns (packs trained, packs already complete)."""
    out = os.path.abspath(os.fspath(out))
    packs = {p.name: p for p in recorded_packs(out)[1]}
    unknown = [name for name in names if name not in packs]
    if unknown:
        raise ConfigError(f"sweep {out}: no pack named {unknown[0]!r}; its packs are {', '.join(list(packs)[:4])}"
                          f"{', ...' if len(packs) > 4 else ''} (see {SWEEP_FILE})")
    trained, kept = [], []
    for name in names or list(packs):
        (trained if train_pack(out, packs[name], progress=progress) else kept).append(name)
    return trained, kept


def train_pack(out: str, pack: Pack, *, progress: bool = True) -> bool:
    """Train (or resume) one pack's run folder; False when it is already complete."""
    from jaxsae.train.loop import train

    run_dir = pack_dir(out, pack.name)
    if run_folder.is_complete(run_dir):
        return False
    log.info("sweep: pack %s (%d members) in %s", pack.name, len(pack.members), run_dir)
    cfg = pack.config(run_dir)
    train(dataclasses.replace(cfg, progress=progress and cfg.progress))
    return True


def summarize(out: str | os.PathLike) -> str:
    """Write OUT/summary.csv (and the status in sweep.json) once every pack of the sweep folder is complete,
    wherever the packs ran; trains nothing. Returns the summary's path."""
    out = os.path.abspath(os.fspath(out))
    record, packs = recorded_packs(out)
    pending = [p.name for p in packs if not run_folder.is_complete(pack_dir(out, p.name))]
    if pending:
        raise ConfigError(f"sweep {out}: {len(pending)} of {len(packs)} packs are not complete "
                          f"({', '.join(pending[:4])}{', ...' if len(pending) > 4 else ''}); wait for their jobs, "
                          f"or train one here: jaxsae sweep run-pack {out} {pending[0]}")
    _write_status(out, record["spec"], record["plan"])
    return write_summary(out, packs)


def recorded_packs(out: str) -> tuple[dict, tuple[Pack, ...]]:
    """(sweep.json's record, the packs of the plan it holds) of the sweep folder `out`."""
    path = os.path.join(out, SWEEP_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"sweep {out}: no {SWEEP_FILE} there; launch the sweep into it first "
                          f"(jaxsae sweep launch SPEC --out {out})")
    with open(path) as f:
        record = json.load(f)
    return record, packs_from_json(record["plan"])


def pack_dir(out: str, pack: str) -> str:
    return os.path.join(out, "packs", pack)


def write_summary(out: str, packs: Sequence[Pack]) -> str:
    """summary.csv: one row per member (name, pack, architecture, width, its axis settings, its last logged
    metrics, its dictionary folder); the same table as summary.parquet when pyarrow imports (it is in the
    `analysis` extra, not a core dependency: the trainer does not need it). Returns the csv's path."""
    axes = list(dict.fromkeys(k for p in packs for m in p.members for k in m.settings))
    rows = []
    for pack in packs:
        run_dir = pack_dir(out, pack.name)
        last = {}
        for record in read_metrics(run_dir):
            last[record["member"]] = record
        for i, member in enumerate(pack.members):
            record = last.get(i, {})
            sae = pack.settings.get("sae", {})
            rows.append({"member": member.name, "pack": pack.name, "architecture": sae.get("architecture", "topk"),
                         "n_latents": sae.get("n_latents"), **member.settings,
                         "step": record.get("step"), **{k: record.get(k) for k in METRICS},
                         "dictionary": run_folder.dictionary_dir(run_dir, i)})
    buffer = io.StringIO()
    fixed = ["member", "pack", "architecture", "n_latents"]
    columns = [*fixed, *(a for a in axes if a not in fixed), "step", *METRICS, "dictionary"]
    writer = csv.DictWriter(buffer, columns)
    writer.writeheader()
    writer.writerows(rows)
    path = os.path.join(out, SUMMARY_FILE)
    write_atomic(path, buffer.getvalue())
    if importlib.util.find_spec("pyarrow") is not None:
        import pandas as pd

        with atomic_path(os.path.join(out, SUMMARY_PARQUET)) as tmp:
            pd.DataFrame(rows, columns=columns).to_parquet(tmp, index=False)
    return path


def claim(plan: Plan, out: str | os.PathLike | None = None) -> str:
    """Create the sweep folder (default: runs/sweeps/<name>) and record the plan in its sweep.json, or reuse
    it when it holds this very plan (the same packs and members); another plan is refused. Returns its
    absolute path."""
    out = os.path.abspath(os.fspath(out) if out is not None else default_out(plan))
    path = os.path.join(out, SWEEP_FILE)
    if os.path.exists(path):
        with open(path) as f:
            previous = json.load(f)
        old = {p["name"]: p["members"] for p in previous.get("plan", {}).get("packs", [])}
        new = {p.name: [m.name for m in p.members] for p in plan.packs}
        if old != new:
            raise ConfigError(f"sweep: {out} holds another sweep's plan ({len(old)} packs: "
                              f"{', '.join(sorted(old)[:3])}...); choose another --out, or rerun its own spec")
    os.makedirs(out, exist_ok=True)
    _write_status(out, plan.spec.path, plan.to_json())
    return out


def _write_status(out: str, spec_path: str, plan: dict) -> None:
    status = {p["name"]: "complete" if run_folder.is_complete(pack_dir(out, p["name"])) else "pending"
              for p in plan["packs"]}
    write_atomic(os.path.join(out, SWEEP_FILE),
                 json.dumps({"spec": spec_path, "plan": plan, "status": status}, indent=2, default=str))
