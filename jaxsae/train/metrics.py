"""Metric summaries (computed on device from the state's accumulators) and their writers."""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsae.sae.collectives import psum

# log10 feature density histogram: bins over [-8, 0] in steps of 0.25; never-fired latents counted apart.
DENSITY_EDGES = np.linspace(-8.0, 0.0, 33)
DENSE_ABOVE = 0.1


def summarise(acc: dict, rows_since_fired: jax.Array, dead_after_rows: int, latent_axis: str | None = None) -> dict:
    """Per-member means since the last read-back, from on-device sums. All outputs are [E] or [E, bins].

    Runs on device (inside the trainer's shard_map, with `latent_axis` split); only these small arrays travel
    to the host. acc["fire_count"] and rows_since_fired are [E, n_local].
    """
    n_latents = psum(rows_since_fired.shape[1], latent_axis)
    steps = jnp.maximum(acc["steps"], 1.0)
    out = {k: v / steps for k, v in acc.items() if k not in ("fire_count", "rows", "steps")}
    density = acc["fire_count"] / jnp.maximum(acc["rows"], 1.0)  # [E, n_local]

    def count(mask):  # [E, n_local] bool -> [E] global count
        return psum(jnp.sum(mask.astype(jnp.int32), axis=1), latent_axis)

    out["dead_fraction"] = count(rows_since_fired >= dead_after_rows) / n_latents
    out["dense_fraction"] = count(density > DENSE_ABOVE) / n_latents
    out["never_fired_in_window"] = count(density == 0)
    log_density = jnp.log10(jnp.where(density > 0, density, 1.0))
    width = float(DENSITY_EDGES[1] - DENSITY_EDGES[0])
    n_bins = len(DENSITY_EDGES) - 1
    bins = jnp.clip(jnp.floor((log_density - DENSITY_EDGES[0]) / width).astype(jnp.int32), 0, n_bins - 1)
    hist = jax.vmap(lambda b, m: jnp.zeros(n_bins, jnp.int32).at[b].add(m))(bins, (density > 0).astype(jnp.int32))
    out["density_log10_hist"] = psum(hist, latent_axis)
    return out


def member_records(summary: dict, step: int, rows_seen: int, rows_per_s: float) -> list[dict]:
    """One JSON-ready record per member from a host copy of `summarise`'s output."""
    n_members = len(np.asarray(summary["loss"]))
    records = []
    for m in range(n_members):
        rec = {"step": step, "member": m, "rows_seen": rows_seen, "rows_per_s": round(rows_per_s, 1)}
        for key, value in summary.items():
            v = np.asarray(value)[m]
            rec[key] = v.tolist() if v.ndim else (int(v) if np.issubdtype(v.dtype, np.integer) else float(v))
        records.append(rec)
    return records


class MetricsWriter:
    """Appends records to `metrics.jsonl` (flushed per write) and, if asked, TensorBoard event files."""

    def __init__(self, run_dir: str, tensorboard: bool = False):
        self.path = os.path.join(run_dir, "metrics.jsonl")
        self._file = open(self.path, "a", buffering=1)
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(run_dir, "tensorboard"))

    def write(self, records: list[dict]) -> None:
        for rec in records:
            self._file.write(json.dumps({"time": round(time.time(), 3), **rec}) + "\n")
            if self._tb is not None:
                for key, value in rec.items():
                    if isinstance(value, (int, float)) and key not in ("step", "member"):
                        self._tb.add_scalar(f"member_{rec['member']:03d}/{key}", value, rec["step"])
                hist = rec.get("density_log10_hist")
                if hist is not None and sum(hist):
                    centres = (DENSITY_EDGES[:-1] + DENSITY_EDGES[1:]) / 2
                    self._tb.add_histogram(f"member_{rec['member']:03d}/log10_density",
                                           np.repeat(centres, hist), rec["step"])
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: str) -> list[dict]:
    """All records of a run's metrics.jsonl."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]
