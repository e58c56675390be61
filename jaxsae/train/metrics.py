"""Typed metric accumulators and summaries (computed on device), and their writers."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxsae.sae.collectives import psum

# log10 feature density histogram: bins over [-8, 0] in steps of 0.25; never-fired latents counted apart.
DENSITY_EDGES = np.linspace(-8.0, 0.0, 33)
DENSE_ABOVE = 0.1


@flax.struct.dataclass
class Accumulators:
    """Metric sums since the last read-back, on device. Per member: [E]; fire_count [E, n]; rows, steps [].

    terms: the architecture's loss terms by name (`Architecture.loss_terms`), each [E].
    """

    loss: jax.Array
    fvu: jax.Array
    explained_variance: jax.Array
    l0: jax.Array
    terms: dict[str, jax.Array]
    fire_count: jax.Array
    rows: jax.Array
    steps: jax.Array

    @classmethod
    def zeros(cls, n_members: int, n_latents: int, term_names: tuple[str, ...]) -> Accumulators:
        member = jnp.zeros((n_members,), jnp.float32)
        return cls(loss=member, fvu=member, explained_variance=member, l0=member,
                   terms={name: member for name in term_names},
                   fire_count=jnp.zeros((n_members, n_latents), jnp.float32),
                   rows=jnp.zeros((), jnp.float32), steps=jnp.zeros((), jnp.float32))

    def specs(self) -> Accumulators:
        """PartitionSpecs of these accumulators: members on `ens`, fire_count's latents on `latent`."""
        return Accumulators(loss=P("ens"), fvu=P("ens"), explained_variance=P("ens"), l0=P("ens"),
                            terms={name: P("ens") for name in self.terms}, fire_count=P("ens", "latent"),
                            rows=P(), steps=P())


@flax.struct.dataclass
class Summary:
    """Per-member means since the last read-back (each [E]; density_log10_hist [E, bins])."""

    loss: jax.Array
    fvu: jax.Array
    explained_variance: jax.Array
    l0: jax.Array
    terms: dict[str, jax.Array]
    dead_fraction: jax.Array
    dense_fraction: jax.Array
    never_fired_in_window: jax.Array
    density_log10_hist: jax.Array


def summarise(acc: Accumulators, rows_since_fired: jax.Array, dead_after_rows: int,
              latent_axis: str | None = None) -> Summary:
    """Per-member means since the last read-back, from on-device sums.

    Runs on device (inside the trainer's shard_map, with `latent_axis` split); only these small arrays travel
    to the host. acc.fire_count and rows_since_fired are [E, n_local].
    """
    n_latents = psum(rows_since_fired.shape[1], latent_axis)
    steps = jnp.maximum(acc.steps, 1.0)
    density = acc.fire_count / jnp.maximum(acc.rows, 1.0)  # [E, n_local]

    def count(mask):  # [E, n_local] bool -> [E] global count
        return psum(jnp.sum(mask.astype(jnp.int32), axis=1), latent_axis)

    log_density = jnp.log10(jnp.where(density > 0, density, 1.0))
    width = float(DENSITY_EDGES[1] - DENSITY_EDGES[0])
    n_bins = len(DENSITY_EDGES) - 1
    bins = jnp.clip(jnp.floor((log_density - DENSITY_EDGES[0]) / width).astype(jnp.int32), 0, n_bins - 1)
    hist = jax.vmap(lambda b, m: jnp.zeros(n_bins, jnp.int32).at[b].add(m))(bins, (density > 0).astype(jnp.int32))
    return Summary(
        loss=acc.loss / steps, fvu=acc.fvu / steps, explained_variance=acc.explained_variance / steps,
        l0=acc.l0 / steps, terms={name: value / steps for name, value in acc.terms.items()},
        dead_fraction=count(rows_since_fired >= dead_after_rows) / n_latents,
        dense_fraction=count(density > DENSE_ABOVE) / n_latents,
        never_fired_in_window=count(density == 0), density_log10_hist=psum(hist, latent_axis),
    )


def member_records(summary: Summary, step: int, rows_seen: int, rows_per_s: float) -> list[dict]:
    """One JSON-ready record per member from a host copy of `summarise`'s output (loss terms at top level)."""
    columns = {}
    for field in dataclasses.fields(summary):
        value = getattr(summary, field.name)
        columns.update(value if field.name == "terms" else {field.name: value})
    records = []
    for m in range(len(np.asarray(summary.loss))):
        rec = {"step": step, "member": m, "rows_seen": rows_seen, "rows_per_s": round(rows_per_s, 1)}
        for key, value in columns.items():
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
