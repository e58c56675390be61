"""The training loop, top to bottom: validate, prepare the run folder, initialise, step, log, save."""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, NamedSharding, PartitionSpec as P

from jaxsae.data.order import BlockShuffleOrder
from jaxsae.data.stream import ActivationStream, StreamState
from jaxsae.dictionary import save_dictionary
from jaxsae.errors import ConfigError, NonFiniteError
from jaxsae.sae.init import geometric_median
from jaxsae.store import StoreError, open_store
from jaxsae.train import checkpoint as checkpoint_lib
from jaxsae.train import distributed
from jaxsae.train import mesh as mesh_lib
from jaxsae.train import metrics as metrics_lib
from jaxsae.train import run_folder
from jaxsae.train.config import TrainConfig
from jaxsae.train.lock import RunLock, RunLockedError
from jaxsae.sae.base import build
from jaxsae.train import optim
from jaxsae.train.state import (init_state, member_groups, member_sae, member_seeds, member_settings, slot_k,
                                state_specs)
from jaxsae.train.step import make_train_step

GEOMETRIC_MEDIAN_ROWS = 4096
NAMED_ROWS = 10

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Where a finished run put things, and its last metrics (one record per member)."""

    run_dir: str
    dictionaries: list[str]
    metrics: list[dict]
    store: str


def validate(cfg: TrainConfig, n_devices: int | None = None):
    """Everything that can be refused before any work: the store, widths, the mesh. Returns (store, mesh).

    n_devices: check the mesh against that many devices (a cluster's, when planning for one) instead of this
    process's; the mesh returned is then abstract."""
    try:
        store = open_store(cfg.data.store)
    except StoreError as e:
        raise ConfigError(f"data.store: {e}") from None
    if not store.is_complete and not cfg.data.allow_incomplete:
        done, total = store.manifest.extraction_progress
        raise ConfigError(
            f"data.store: {cfg.data.store} is incomplete (extraction stopped at cell {done:,} of {total:,}); finish "
            "the extraction (rerun the same jaxsae extract command) or pass --data.allow_incomplete"
        )
    if store.d_model != cfg.sae.d_model:
        raise ConfigError(
            f"sae.d_model={cfg.sae.d_model} does not match the store {cfg.data.store} (d={store.d_model}); "
            f"pass --sae.d_model {store.d_model}"
        )
    if store.n_rows < cfg.data.batch_rows:
        raise ConfigError(
            f"data.batch_rows={cfg.data.batch_rows} is larger than the store ({store.n_rows} rows); lower it"
        )
    if cfg.tensorboard:
        try:
            import tensorboardX  # noqa: F401
        except ImportError:
            raise ConfigError("--tensorboard needs tensorboardX: pip install 'jaxsae[tensorboard]'") from None
    if n_devices is None:
        mesh = mesh_lib.make_mesh(cfg.mesh)
    else:
        mesh = AbstractMesh(mesh_lib.mesh_shape(cfg.mesh, n_devices), mesh_lib.AXES)
    mesh_lib.check_divisibility(mesh, cfg.sae, cfg.n_members, cfg.data.batch_rows)
    return store, mesh


def make_order(cfg: TrainConfig, store) -> BlockShuffleOrder:
    try:
        return BlockShuffleOrder(n_rows=store.n_rows, block_rows=store.chunk_rows,
                                 window_blocks=cfg.data.window_blocks, batch_rows=cfg.data.batch_rows,
                                 streams=cfg.data.streams, seed=cfg.data.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def input_scale(cfg: TrainConfig, store) -> float:
    """x_normalised = scale * x has unit mean squared norm (from the store's statistics)."""
    if not cfg.data.normalise:
        return 1.0
    return float(1.0 / np.sqrt(max(store.norm.mean_sq_norm, 1e-12)))


def initial_b_dec(store, order: BlockShuffleOrder, scale: float) -> np.ndarray:
    """Geometric median of a sample of (normalised) rows: the first batches of epoch 0."""
    rows = order.batch_row_ids(0, 0)[:GEOMETRIC_MEDIAN_ROWS]
    sample = store.read_rows_at(np.sort(rows)) * scale
    return geometric_median(sample).astype(np.float32)


def process_streams(order: BlockShuffleOrder, mesh) -> range:
    """The streams this process reads: those covering the batch rows its devices hold.

    With `data` spanning processes each process reads its own slice; where a process's devices hold the whole
    batch (e.g. only `latent` spans processes) it reads every stream. The rows must fall on stream boundaries.
    """
    sharding = NamedSharding(mesh, P("data", None))
    slices = sharding.addressable_devices_indices_map((order.batch_rows, 1)).values()
    lo = min(s[0].start or 0 for s in slices)
    hi = max(order.batch_rows if s[0].stop is None else s[0].stop for s in slices)
    if lo % order.stream_rows or hi % order.stream_rows:
        raise ConfigError(
            f"data.streams={order.streams}: this process holds batch rows {lo}..{hi}, which do not fall on "
            f"stream boundaries (every {order.stream_rows} rows); make data.streams a multiple of the number "
            f"of processes along the mesh's data axis"
        )
    return range(lo // order.stream_rows, hi // order.stream_rows)


def place_batch(batch: np.ndarray, mesh, global_rows: int) -> jax.Array:
    """This process's rows -> the global [B, d] array sharded on `data`."""
    sharding = NamedSharding(mesh, P("data", None))
    return jax.make_array_from_process_local_data(sharding, batch, (global_rows, batch.shape[1]))


def make_summarise(cfg: TrainConfig, mesh, specs):
    """Jitted `(acc, rows_since_fired) -> Summary`, computed where the arrays live."""

    def local(acc, rows_since_fired):
        return metrics_lib.summarise(acc, rows_since_fired, cfg.sae.dead_after_rows, "latent")

    def summarise(acc, rows_since_fired):
        unsharded = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (acc, rows_since_fired))
        local_shapes = jax.eval_shape(functools.partial(metrics_lib.summarise, latent_axis=None,
                                                        dead_after_rows=cfg.sae.dead_after_rows), *unsharded)
        out_specs = jax.tree.map(lambda _: P("ens"), local_shapes)  # every summary leaf is per member
        return jax.shard_map(local, mesh=mesh, in_specs=(specs.acc, specs.buffers.rows_since_fired),
                             out_specs=out_specs)(acc, rows_since_fired)

    return jax.jit(summarise)


def _to_host(tree):
    """Fully replicated host copies of (possibly multi-host sharded) arrays."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def train(cfg: TrainConfig, *, stop_after: int | None = None, restart: bool = False) -> RunResult:
    """Train `cfg.n_members` dictionaries on `cfg.data.store`; write them and the metrics to `cfg.run_dir`.

    A run folder holding checkpoints of an unfinished run resumes from its newest checkpoint that restores and
    matches its checksums (same result-changing settings, see `run_folder.RESULT_NEUTRAL`; any device count or
    mesh shape). stop_after: leave after that many steps in total with a checkpoint there and without final
    dictionaries (for time-limited jobs; call again to go on). restart: set the run folder's checkpoints aside
    (to checkpoints.skipped/) and start from step 0; needed when checkpoints existed but none restores.
    A non-finite loss or gradient stops the run with `NonFiniteError`; its checkpoints stay as they were.
    """
    distributed.initialize(cfg.distributed)  # before any other JAX call
    store, mesh = validate(cfg)
    order = make_order(cfg, store)
    streams = process_streams(order, mesh)  # refuses a stream layout this mesh cannot read, before any work
    is_writer = jax.process_index() == 0
    lock = _lock_run_folder(cfg.run_dir, is_writer)
    try:
        if is_writer:
            run_folder.prepare(cfg.run_dir, cfg, store_identity(store))
        checkpoints = checkpoint_lib.RunCheckpoints(cfg.run_dir, keep=cfg.keep_checkpoints)
        try:
            if restart:
                checkpoints.set_all_aside()
            return _train_loop(cfg, store, mesh, order, streams, checkpoints, is_writer, stop_after)
        finally:
            checkpoints.close()
    finally:
        if lock is not None:
            lock.release()


def _train_loop(cfg: TrainConfig, store, mesh, order, streams: range, checkpoints, is_writer: bool,
                stop_after: int | None) -> RunResult:
    arch = build(cfg.sae)
    tx = optim.for_config(cfg, arch)
    restored = checkpoints.restore_latest(checkpoint_lib.abstract_state(cfg, mesh))
    if restored is None:
        scale = input_scale(cfg, store)
        state = init_state(arch, tx, mesh, member_seeds(cfg), initial_b_dec(store, order, scale), scale)
        stream_state, start = StreamState(), 0
    else:
        state, stream_state, start = restored.state, restored.stream, restored.step
        if is_writer:
            log.info("resuming from step %d of %d (checkpoint %s)", start, cfg.num_steps, restored.path)
    # Records past the restored step would be written again: drop them (no step appears twice).
    kept_records = checkpoint_lib.truncate_metrics(cfg.run_dir, start) if is_writer else []
    end = cfg.num_steps if stop_after is None else min(cfg.num_steps, stop_after)

    step_fn = make_train_step(arch, tx, mesh, dead_after_rows=cfg.sae.dead_after_rows,
                              groups=member_groups(cfg, arch, dict(mesh.shape)["ens"]))
    settings = jax.device_put(member_settings(cfg, arch), NamedSharding(mesh, P("ens")))
    specs = state_specs(state, arch, tx)
    acc_shardings = mesh_lib.shardings(mesh, specs.acc)
    summarise = make_summarise(cfg, mesh, specs)
    reset_acc = jax.jit(lambda acc: jax.tree.map(jnp.zeros_like, acc), out_shardings=acc_shardings,
                        donate_argnums=0)

    writer = metrics_lib.MetricsWriter(cfg.run_dir, cfg.tensorboard) if is_writer else None
    progress = _progress(cfg, is_writer, start)
    last_step = max((r["step"] for r in kept_records), default=None)
    last_records: list[dict] = [r for r in kept_records if r["step"] == last_step]
    in_flight: collections.deque = collections.deque()
    t_log, rows_at_log = time.perf_counter(), start * cfg.data.batch_rows
    stream = ActivationStream(store, order, streams=streams, state=stream_state,
                              prefetch=cfg.data.prefetch)
    try:
        for step in range(start, end):
            x = place_batch(next(stream), mesh, cfg.data.batch_rows)
            state, step_metrics = step_fn(state, x, settings)
            # Bound how far the host runs ahead of the device without syncing every step; the wait is where
            # the non-finite flag of an older step is looked at (it costs no extra sync).
            in_flight.append(step_metrics["first_nonfinite_step"])
            if len(in_flight) > 2:
                _check_finite(in_flight.popleft(), cfg, store, order, start, stream_state)
            if progress is not None:
                progress.update(1)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.num_steps:
                _check_finite(step_metrics["first_nonfinite_step"], cfg, store, order, start, stream_state)
                summary = _to_host(summarise(state.acc, state.buffers.rows_since_fired))
                now = time.perf_counter()
                rows_seen = done * cfg.data.batch_rows
                rate = (rows_seen - rows_at_log) / max(now - t_log, 1e-9)
                t_log, rows_at_log = now, rows_seen
                last_records = metrics_lib.member_records(summary, done, rows_seen, rate)
                state = state.replace(acc=reset_acc(state.acc))
                if writer is not None:
                    writer.write(last_records)
                if progress is not None:
                    m = last_records[0]
                    progress.set_postfix(rows_s=f"{rate:,.0f}", fvu=f"{m['fvu']:.3f}", l0=f"{m['l0']:.1f}")
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done in (end, cfg.num_steps):
                # Never a checkpoint (nor, after the last one, a dictionary) of a run that met a non-finite step.
                _check_finite(step_metrics["first_nonfinite_step"], cfg, store, order, start, stream_state)
                # Returns once the arrays are copied off the device; files are written in the background.
                checkpoints.save(done, state, stream.state, cfg.to_dict())
    finally:
        stream.close()
        if progress is not None:
            progress.close()
        if writer is not None:
            writer.close()
    if end < cfg.num_steps:
        return RunResult(cfg.run_dir, [], last_records, cfg.data.store)

    checkpoints.wait()
    # Every process takes part in the gather (a collective when the state spans processes); process 0 writes.
    host_state = _to_host((state.params, state.buffers.arch, state.scale))
    dictionaries = save_all(cfg, host_state, store, last_records) if is_writer else []
    if is_writer:
        run_folder.mark_complete(cfg.run_dir, {"steps": cfg.num_steps, "dictionaries": dictionaries,
                                               "store": os.path.abspath(cfg.data.store)})
    return RunResult(cfg.run_dir, dictionaries, last_records, cfg.data.store)


def store_identity(store) -> dict:
    """What tells this store apart from another of the same width: its manifest's creation time and size."""
    return {"created": store.manifest.created, "d_model": store.d_model, "rows_committed": store.n_rows}


def _check_finite(first_nonfinite_step: jax.Array, cfg: TrainConfig, store, order: BlockShuffleOrder,
                  start: int, start_stream: StreamState) -> None:
    """Raise NonFiniteError naming the step (and the batch's non-finite store rows) if the flag is set.

    first_nonfinite_step: [] int32 from the step (-1: every step so far was finite). A host read: call it only
    where the loop waits for the device anyway.
    """
    bad_step = int(_to_host(first_nonfinite_step))
    if bad_step < 0:
        return
    position = start_stream
    for _ in range(bad_step - start):
        position = position.advanced(order)
    rows = np.sort(order.batch_row_ids(position.epoch, position.batch))
    finite_rows = np.isfinite(store.read_rows_at(rows)).all(axis=1)
    bad_rows = rows[~finite_rows]
    if len(bad_rows):
        shown = ", ".join(str(r) for r in bad_rows[:NAMED_ROWS])
        more = f" and {len(bad_rows) - NAMED_ROWS} more" if len(bad_rows) > NAMED_ROWS else ""
        cause = (f"the batch holds {len(bad_rows)} non-finite store rows ({shown}{more}) of {store.path}; "
                 f"repair or re-extract the store")
    else:
        cause = ("the batch's store rows are all finite, so the model diverged; lower optim.lr or set "
                 "optim.grad_clip")
    raise NonFiniteError(
        f"training stopped: non-finite loss or gradient at step {bad_step + 1} of {cfg.num_steps}; {cause}. "
        f"The last checkpoint before it is kept in {checkpoint_lib.checkpoint_dir(cfg.run_dir)}; the run is "
        f"not complete"
    )


def _lock_run_folder(run_dir: str, is_writer: bool) -> RunLock | None:
    """Process 0 locks the run folder; every process learns whether it succeeded (and all refuse if not)."""
    lock, error = None, None
    if is_writer:
        try:
            lock = RunLock(run_dir).acquire()
        except RunLockedError as e:
            error = e
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if failed and error is None:
            raise RunLockedError(f"run_dir: {run_dir} is in use by another trainer (see process 0's message)")
    if error is not None:
        raise error
    return lock


def save_all(cfg: TrainConfig, host_state: tuple, store, records: list[dict]) -> list[str]:
    """One dictionary folder per member, normalisation folded in; its config's sae.k is the member's own k.
    host_state: host (params, architecture buffers, scale)."""
    params, buffers, scale = host_state
    own_k = slot_k(build(cfg.sae))
    paths = []
    for m in range(cfg.n_members):
        hparams = cfg.member_hparams(m)
        member = lambda tree: {k: np.asarray(v)[m] for k, v in tree.items()}  # noqa: E731
        metrics = next((r for r in records if r["member"] == m), {})
        metrics = {k: v for k, v in metrics.items() if k != "density_log10_hist"}
        paths.append(save_dictionary(
            run_folder.dictionary_dir(cfg.run_dir, m), sae=member_sae(cfg.sae, hparams["k"]) if own_k else cfg.sae,
            params=member(params), buffers=member(buffers), hparams=hparams, scale=float(scale),
            source={"store": os.path.abspath(cfg.data.store), **store.source}, metrics=metrics,
            extra={"run_dir": os.path.abspath(cfg.run_dir), "member": m, "steps": cfg.num_steps},
        ))
    return paths


def _progress(cfg: TrainConfig, is_writer: bool, start: int = 0):
    if not (cfg.progress and is_writer):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.num_steps, initial=start, unit="step", dynamic_ncols=True,
                desc=f"train {cfg.sae.architecture}")


fit = train
