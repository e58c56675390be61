"""The sweep report: each architecture's L0-FVU Pareto frontier (which members no other member beats on both
sparsity and reconstruction) as a plot and a table, with each member's dead and dense fractions.

Writes `<sweep>/report/pareto.png` and `<sweep>/report/members.csv` (summary.csv plus `on_frontier`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxsae.atomic import atomic_path, write_atomic
from jaxsae.errors import ConfigError
from jaxsae.sweep.run import SUMMARY_FILE


@dataclasses.dataclass(frozen=True)
class SweepReport:
    plot: str
    table: str
    lines: list[str]


def pareto_front(l0: np.ndarray, fvu: np.ndarray) -> np.ndarray:
    """[n] bool: the points no other point dominates (l0 and fvu both <=, one of them <). NaNs never count."""
    l0, fvu = np.asarray(l0, float), np.asarray(fvu, float)
    ok = np.isfinite(l0) & np.isfinite(fvu)
    front = np.zeros(len(l0), bool)
    for i in np.flatnonzero(ok):
        others = ok & (l0 <= l0[i]) & (fvu <= fvu[i]) & ((l0 < l0[i]) | (fvu < fvu[i]))
        front[i] = not others.any()
    return front


def sweep_report(sweep_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> SweepReport:
    """Plot and tabulate a finished sweep's frontier (its summary.csv; `jaxsae sweep run` writes it)."""
    import pandas as pd

    sweep_dir = os.fspath(sweep_dir)
    summary = os.path.join(sweep_dir, SUMMARY_FILE)
    if not os.path.isfile(summary):
        raise ConfigError(f"{sweep_dir}: no {SUMMARY_FILE}; the sweep has not finished (rerun `jaxsae sweep run` "
                          f"with its spec and --out {sweep_dir})")
    rows = pd.read_csv(summary)
    rows["on_frontier"] = False
    for _, group in rows.groupby("architecture"):
        rows.loc[group.index, "on_frontier"] = pareto_front(group["l0"].to_numpy(), group["fvu"].to_numpy())
    out = os.fspath(out) if out is not None else os.path.join(sweep_dir, "report")
    os.makedirs(out, exist_ok=True)
    table = os.path.join(out, "members.csv")
    write_atomic(table, rows.to_csv(index=False))
    plot = os.path.join(out, "pareto.png")
    _plot(rows, plot)
    return SweepReport(plot, table, _lines(rows))


def _lines(rows) -> list[str]:
    out = [f"{'member':<28}{'architecture':<13}{'l0':>8}{'fvu':>9}{'dead':>7}{'dense':>7}  frontier"]
    for _, r in rows.sort_values(["architecture", "l0"]).iterrows():
        out.append(f"{r['member']:<28}{r['architecture']:<13}{r['l0']:>8.2f}{r['fvu']:>9.4f}"
                   f"{r['dead_fraction']:>7.3f}{r['dense_fraction']:>7.3f}  {'*' if r['on_frontier'] else ''}")
    return out


def _plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for arch, group in rows.groupby("architecture"):
        points = ax.scatter(group["l0"], group["fvu"], s=18, alpha=0.6, label=arch)
        front = group[group["on_frontier"]].sort_values("l0")
        ax.plot(front["l0"], front["fvu"], "-o", ms=4, color=points.get_facecolor()[0][:3])
        for _, r in front.iterrows():
            ax.annotate(r["member"], (r["l0"], r["fvu"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("L0 (active latents per row)")
    ax.set_ylabel("FVU (fraction of variance unexplained)")
    ax.set_title("Sparsity vs reconstruction; lines: each architecture's Pareto frontier", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
