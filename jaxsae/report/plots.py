"""The report's figures: matplotlib (Agg, no display) functions that return PNG bytes.

Figures are small (about 3-7 inches at 90 dpi, a few tens of kB each) so that a report with dozens of feature
cards stays a file that opens quickly; every function draws from plain numpy inputs and keeps no state.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

DPI = 90
CURVES = (("loss", "loss"), ("fvu", "fraction of variance unexplained"), ("l0", "L0 (active latents per row)"),
          ("dead_fraction", "dead latent fraction"))
"""(metrics.jsonl key, axis title) of the training curves, in panel order."""


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def training_curves(records: Sequence[dict], *, member: int = 0) -> bytes | None:
    """Loss, FVU, L0 and dead fraction against step for one member, from metrics.jsonl records
    ({"step", "member", "loss", "fvu", "l0", "dead_fraction", ...}); None when the member has no records."""
    from matplotlib.ticker import NullFormatter

    mine = sorted((r for r in records if r.get("member", 0) == member), key=lambda r: r["step"])
    panels = [(key, title) for key, title in CURVES if any(key in r for r in mine)]
    if not mine or not panels:
        return None
    fig = _figure(3.0 * len(panels), 2.6)
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        points = [(r["step"], r[key]) for r in mine if isinstance(r.get(key), (int, float))]
        steps, values = zip(*points) if points else ((), ())
        ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, color="tab:blue")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if key in ("loss", "fvu") and values and min(values) > 0 and max(values) / min(values) > 20:
            ax.set_yscale("log")
            ax.yaxis.set_minor_formatter(NullFormatter())  # labelled decades only: minor labels overlap
        else:
            ax.ticklabel_format(axis="y", useOffset=False)  # a flat curve (L0 = k) reads as k, not k + 1e-5 offsets
            if values and max(values) - min(values) <= 1e-3 * max(1.0, abs(max(values))):
                middle = float(np.mean(values))
                ax.set_ylim(middle - max(1.0, abs(middle)) * 0.1, middle + max(1.0, abs(middle)) * 0.1)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return _png(fig)


def density_histogram(frequencies: dict[str, np.ndarray]) -> bytes:
    """Histogram of log10 firing frequency per feature, one outline per kind of frequency.

    frequencies: {label: [n_latents] fraction of rows (cells or tokens) on which each feature fired, in
    [0, 1]}. Features that never fired have no logarithm; their number is given in the legend.
    """
    fig = _figure(5.5, 3.0)
    ax = fig.add_subplot()
    finite = [np.log10(f[f > 0]) for f in (np.asarray(v, np.float64) for v in frequencies.values()) if (f > 0).any()]
    low = min([-6.0] + [float(np.floor(x.min())) for x in finite])
    edges = np.linspace(low, 0.0, int(round(-low * 4)) + 1)
    for (label, freq), colour in zip(frequencies.items(), ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        freq = np.asarray(freq, np.float64)
        never = int((freq <= 0).sum())
        ax.hist(np.log10(freq[freq > 0]), bins=edges, histtype="step", linewidth=1.5, color=colour,
                label=f"{label} ({never:,} of {len(freq):,} never fired)")
    ax.set_xlabel("log10 firing frequency", fontsize=8)
    ax.set_ylabel("features", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    ax.grid(alpha=0.3)
    return _png(fig)


def feature_umap(umap: np.ndarray, activation: np.ndarray, *, title: str = "") -> bytes:
    """Cells on the UMAP coloured by one feature's activation.

    umap: [n_cells, 2] coordinates; activation: [n_cells] the feature's per-cell activation (0 = silent).
    Active cells are drawn last (above the silent ones) in increasing order, so the strongest stay visible.
    """
    umap, activation = np.asarray(umap, np.float64), np.asarray(activation, np.float64)
    order = np.argsort(activation, kind="stable")
    fig = _figure(3.4, 3.0)
    ax = fig.add_subplot()
    silent = activation[order] <= 0
    ax.scatter(umap[order][silent, 0], umap[order][silent, 1], s=4, c="#d9d9d9", linewidths=0)
    top = float(activation.max()) if activation.size and activation.max() > 0 else 1.0
    points = ax.scatter(umap[order][~silent, 0], umap[order][~silent, 1], s=6, c=activation[order][~silent],
                        cmap="viridis", vmin=0.0, vmax=top, linewidths=0)
    fig.colorbar(points, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
    ax.set_title(title or "activation on UMAP", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP1", fontsize=8)
    ax.set_ylabel("UMAP2", fontsize=8)
    return _png(fig)


def activation_histogram(activation: np.ndarray, *, unit: str = "cells") -> bytes:
    """Histogram of one feature's non-zero activations; the number of silent `unit` is in the title.

    activation: [n] the feature's activation per cell (or per token)."""
    activation = np.asarray(activation, np.float64)
    active = activation[activation > 0]
    fig = _figure(3.4, 3.0)
    ax = fig.add_subplot()
    if active.size:
        ax.hist(active, bins=min(40, max(5, active.size // 5)), color="tab:blue")
    ax.set_title(f"active in {active.size:,} of {activation.size:,} {unit}", fontsize=9)
    ax.set_xlabel("activation", fontsize=8)
    ax.set_ylabel(unit, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)
