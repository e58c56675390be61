"""Running a sweep here, pack after pack. Each pack is an ordinary run folder (resumable, locked, marked
complete by `run.json`), so a rerun skips finished packs and resumes the interrupted one exactly.

```
<out>/sweep.json          the spec file, the plan, and each pack's status (rewritten atomically)
<out>/packs/pack000/      a run folder (config.json, checkpoints/, dictionaries/member_000, ..., run.json)
<out>/summary.csv         written when every pack is complete: one row per member, its settings and metrics
```
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os

from jaxsae.atomic import write_atomic
from jaxsae.errors import ConfigError
from jaxsae.sweep.members import SWEEP_FILE
from jaxsae.sweep.plan import Plan, plan_sweep
from jaxsae.sweep.spec import load_spec
from jaxsae.train import run_folder
from jaxsae.train.metrics import read_metrics

SUMMARY_FILE = "summary.csv"
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
    from jaxsae.train.loop import train

    plan = plan_sweep(load_spec(spec_path))
    out = os.path.abspath(os.fspath(out) if out is not None else default_out(plan))
    _claim(out, plan)
    trained, kept = [], []
    for i, pack in enumerate(plan.packs):
        run_dir = pack_dir(out, pack.name)
        if run_folder.is_complete(run_dir):
            kept.append(pack.name)
            continue
        log.info("sweep %s: pack %d of %d (%s: %d members)", plan.spec.name, i + 1, len(plan.packs),
                    pack.name, len(pack.members))
        cfg = pack.config(run_dir)
        train(dataclasses.replace(cfg, progress=progress and cfg.progress))
        trained.append(pack.name)
        _write_status(out, plan)
    return SweepResult(out, write_summary(out, plan), trained, kept)


def pack_dir(out: str, pack: str) -> str:
    return os.path.join(out, "packs", pack)


def write_summary(out: str, plan: Plan) -> str:
    """summary.csv: one row per member (name, pack, architecture, width, its axis settings, its last logged
    metrics, its dictionary folder)."""
    axes = list(dict.fromkeys(k for p in plan.packs for m in p.members for k in m.settings))
    rows = []
    for pack in plan.packs:
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
    writer = csv.DictWriter(buffer, [*fixed, *(a for a in axes if a not in fixed), "step", *METRICS, "dictionary"])
    writer.writeheader()
    writer.writerows(rows)
    path = os.path.join(out, SUMMARY_FILE)
    write_atomic(path, buffer.getvalue())
    return path


def _claim(out: str, plan: Plan) -> None:
    """Create the sweep folder, or reuse it when it holds this very plan; another plan is refused."""
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
    _write_status(out, plan)


def _write_status(out: str, plan: Plan) -> None:
    status = {p.name: "complete" if run_folder.is_complete(pack_dir(out, p.name)) else "pending"
              for p in plan.packs}
    write_atomic(os.path.join(out, SWEEP_FILE),
                 json.dumps({"spec": plan.spec.path, "plan": plan.to_json(), "status": status}, indent=2,
                            default=str))
