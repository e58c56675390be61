"""Orbax checkpoints of a run: the whole train state, the data-stream position and the config, saved async.

```
<run_dir>/checkpoints/<step>/state/    TrainState: step, params, Adam state, buffers (dead-latent counters,
                                       BatchTopK thresholds, ...), input scale, metric accumulators
<run_dir>/checkpoints/<step>/stream/   {"epoch", "batch"}: the next batch of the data order
<run_dir>/checkpoints/<step>/config/   the run's TrainConfig (for humans and `jaxsae` tools; not re-read)
<run_dir>/checkpoints/<step>/checksums/ {leaf path: 64-bit hash} of every state array, taken at save time
<run_dir>/checkpoints.skipped/<step>-<time>  checkpoints that failed to restore or to verify, moved aside
                                       (kept for inspection), and those set aside by a restart
```

Orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp` and renames it when every process has finished,
so a crash mid-save leaves no directory that looks complete; such leftovers are named in a log line and
deleted. A restored state is hashed again and compared with its checksums: a file damaged in place (same size,
other bytes) is caught there, not only a truncated or missing one. A checkpoint that fails either way is
moved aside with one log line and the next older one is tried. If checkpoints existed (or were set aside
before) and none restores, the run is refused rather than silently restarted from step 0; `restart=True`
(`jaxsae train --restart`) sets them aside and starts afresh. Every process writes its own array shards; process 0 writes the metadata. `save` returns as soon as
the arrays are copied to host memory (the state may then be donated to the next step); the files are written
by a background thread while training goes on.

Restoring builds abstract arrays with the CURRENT mesh's shardings, so a checkpoint written on 8 devices
restores onto 2 (or onto another mesh shape) unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding

from jaxsae.atomic import write_atomic
from jaxsae.data.stream import StreamState
from jaxsae.errors import CheckpointError
from jaxsae.train.config import TrainConfig
from jaxsae.sae.base import build
from jaxsae.train import optim
from jaxsae.train.state import TrainState, init_state, member_seeds, state_specs

CHECKPOINT_DIR = "checkpoints"
SKIPPED_DIR = "checkpoints.skipped"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
_ITEMS = ("state", "stream", "config", "checksums")
# Loggers that print pages of tracebacks while a damaged checkpoint fails to restore (the failure is reported
# in one line of ours instead).
_NOISY_LOGGERS = ("absl", "asyncio", "orbax", "orbax.checkpoint", "jax._src.distributed")

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored checkpoint: the sharded state, the stream position and the step it was taken at."""

    step: int
    state: TrainState
    stream: StreamState
    path: str


def checkpoint_dir(run_dir: str) -> str:
    return os.path.abspath(os.path.join(run_dir, CHECKPOINT_DIR))


def abstract_state(cfg: TrainConfig, mesh: Mesh) -> TrainState:
    """The train state's shapes and dtypes as `jax.ShapeDtypeStruct`s carrying their shardings on `mesh`."""
    arch = build(cfg.sae)
    tx = optim.for_config(cfg, arch)
    shapes = jax.eval_shape(lambda b_dec: init_state(arch, tx, mesh, member_seeds(cfg), b_dec, 1.0),
                            jax.ShapeDtypeStruct((cfg.sae.d_model,), jnp.float32))
    specs = state_specs(shapes, arch, tx)
    return jax.tree.map(lambda x, spec: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec)),
                        shapes, specs)


def _hash_leaf(x: jax.Array) -> jax.Array:
    """[2] uint32 hash of an array's bits: two position-dependent mixes summed with wraparound.

    Sums do not depend on the order of the reduction, so the hash is the same for any sharding, device count
    or number of processes (jit computes the global sum).
    """
    if x.dtype.itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    elif x.dtype.itemsize == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    elif x.dtype.itemsize == 1:
        bits = x.astype(jnp.uint8) if x.dtype == jnp.bool_ else jax.lax.bitcast_convert_type(x, jnp.uint8)
        bits = bits.astype(jnp.uint32)
    else:
        raise CheckpointError(f"checksum: state leaves of {x.dtype} are not supported; expected 1, 2 or 4 bytes")
    # The flat index of every element, built with the array's own sharding (no reshape, no gather).
    sharding = jax.typeof(bits).sharding
    position = jnp.zeros(bits.shape, jnp.uint32, out_sharding=sharding)
    for dim, size in enumerate(bits.shape):
        stride = int(np.prod(bits.shape[dim + 1:], dtype=np.int64)) % 2**32
        position = position + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, dim,
                                                       out_sharding=sharding) * jnp.uint32(stride)

    def mix(v, multiplier, salt):
        v = (v ^ (position * jnp.uint32(salt))) * jnp.uint32(multiplier)
        v = (v ^ (v >> 15)) * ((position << 1) | jnp.uint32(1))  # odd, position-dependent
        return jnp.sum(v ^ (v >> 13), dtype=jnp.uint32)

    return jnp.stack([mix(bits, 0x85EBCA6B, 0x9E3779B9), mix(bits, 0xC2B2AE35, 0x27D4EB2F)])


@jax.jit
def _hash_tree(tree) -> dict:
    return jax.tree.map(_hash_leaf, tree)


def checksums(state: TrainState) -> dict[str, str]:
    """{leaf path (e.g. "params.W_enc"): 16 hex digits} of every array of the state, computed on device."""
    hashes = jax.device_get(_hash_tree(state))
    return {jax.tree_util.keystr(path, simple=True, separator="."): "".join(f"{int(h):08x}" for h in np.asarray(v))
            for path, v in jax.tree_util.tree_leaves_with_path(hashes)}


@contextlib.contextmanager
def _quiet_restore():
    """Silence the libraries' own error output while possibly damaged checkpoints are read: their loggers, and
    the "Exception ignored in <coroutine ...>" pages Python prints when Orbax's failed reads are collected."""
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    unraisablehook = sys.unraisablehook
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        gc.collect()  # the failed reads' coroutines are reported while the hook is still ours
        sys.unraisablehook = _without_failed_read_noise(unraisablehook)
        asyncio_log = logging.getLogger("asyncio")
        if not any(isinstance(f, _DropFailedReadNoise) for f in asyncio_log.filters):
            asyncio_log.addFilter(_DropFailedReadNoise())
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _raised_in_orbax(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from) passed through Orbax's code: a failed read."""
    while exc is not None:
        tb = exc.__traceback__
        while tb is not None:
            if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return False


def _is_failed_read_noise(unraisable) -> bool:
    """A report left by the reads of a restore that already failed (and was named in one line): Orbax's read
    coroutines collected with their exception, or TensorStore callbacks into the event loop that has gone."""
    exc, code = unraisable.exc_value, getattr(unraisable.object, "cr_code", None)
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    return (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename) or _raised_in_orbax(exc)


class _DropFailedReadNoise(logging.Filter):
    """On the asyncio logger: drops "Task exception was never retrieved" for a failed restore's read tasks,
    which the garbage collector can report any time later, down to interpreter exit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _raised_in_orbax(record.exc_info[1]))


def _without_failed_read_noise(hook):
    """`hook`, minus the failed reads' reports, which threads can deliver any time until the process exits."""
    if getattr(hook, "drops_failed_read_noise", False):
        return hook

    def filtered(unraisable):
        if not _is_failed_read_noise(unraisable):
            hook(unraisable)

    filtered.drops_failed_read_noise = True
    return filtered


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class RunCheckpoints:
    """The checkpoints of one run folder.

    run_dir:     the run folder (checkpoints go to `<run_dir>/checkpoints`).
    keep:        how many of the newest checkpoints to keep.
    async_save:  write in a background thread (False: `save` returns once the files are committed).
    """

    def __init__(self, run_dir: str, *, keep: int, async_save: bool = True):
        self.run_dir = run_dir
        self.directory = checkpoint_dir(run_dir)
        if jax.process_index() == 0:
            self._warn_incomplete()
        _barrier("jaxsae-checkpoints-open")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, cleanup_tmp_directories=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def _warn_incomplete(self) -> None:
        if not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            if _TMP_SUFFIX in name:
                log.warning("checkpoint %s was never committed (the trainer stopped while saving it); skipping "
                            "and deleting it", os.path.join(self.directory, name))

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState, stream: StreamState, config: dict) -> None:
        """Start saving the state after `step` steps; returns once the arrays are safe to donate."""
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), stream=ocp.args.JsonSave(stream.to_dict()),
            config=ocp.args.JsonSave(config), checksums=ocp.args.JsonSave(checksums(state))), force=True)
        if not saved:
            raise CheckpointError(f"checkpoint of step {step} in {self.directory} was not written (Orbax refused it)")

    def restore_latest(self, abstract: TrainState) -> Restored | None:
        """The newest checkpoint that restores and matches its checksums, onto `abstract`'s shardings.

        None when the run folder never had a checkpoint. A checkpoint that fails is named in one log line,
        moved to `<run_dir>/checkpoints.skipped/` (so a later save of the same step cannot collide with it),
        and the next older one is tried; if none is left, CheckpointError (see `set_all_aside`).
        """
        steps = self.steps()
        skipped = []
        restored = None
        with _quiet_restore():
            for step in reversed(steps):
                path = os.path.join(self.directory, str(step))
                older = [s for s in steps if s < step]
                fallback = f"falling back to step {older[-1]}" if older else "no older checkpoint"
                try:
                    out = self.manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), stream=ocp.args.JsonRestore(),
                        checksums=ocp.args.JsonRestore()))
                except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types for damaged files
                    first_line = (str(e).splitlines() or [""])[0].split(" See full TensorStore details")[0]
                    log.warning("checkpoint %s could not be restored (%s: %s); %s", path, type(e).__name__,
                                first_line[:160], fallback)
                    skipped.append(step)
                    continue
                damaged = _first_mismatch(out["checksums"], checksums(out["state"]))
                if damaged is not None:
                    log.warning("checkpoint %s is damaged (checksum of %s differs); %s", path, damaged, fallback)
                    skipped.append(step)
                    continue
                restored = Restored(step, out["state"], StreamState.from_dict(out["stream"]), path)
                break
        if skipped:
            self._move_aside(skipped)
        if restored is None and (steps or self._had_checkpoints()):
            raise CheckpointError(
                f"no checkpoint of the run in {self.run_dir} can be restored (the failed ones are in "
                f"{os.path.join(self.run_dir, SKIPPED_DIR)}; a checkpoint written by an older jaxsae, whose "
                f"train state had another layout, fails the same way); to train it again from step 0, rerun with "
                f"--restart (train(cfg, restart=True)), or train into a new run_dir"
            )
        if restored is not None and int(jax.device_get(restored.state.step)) != restored.step:
            raise CheckpointError(f"checkpoint {self.directory}/{restored.step} holds a state of step "
                                  f"{int(jax.device_get(restored.state.step))}; the folder was edited by hand")
        return restored

    def _had_checkpoints(self) -> bool:
        skipped = os.path.join(self.run_dir, SKIPPED_DIR)
        return os.path.isdir(skipped) and bool(os.listdir(skipped))

    def set_all_aside(self) -> None:
        """Move every checkpoint (and the record of failed ones) out of the way so that training restarts."""
        self.manager.wait_until_finished()
        steps = self.steps()
        if steps:
            log.info("restarting from step 0: checkpoints of steps %s moved to %s", steps,
                     os.path.join(self.run_dir, SKIPPED_DIR))
            self._move_aside(steps)
        if jax.process_index() == 0 and self._had_checkpoints():
            target = os.path.join(self.run_dir, SKIPPED_DIR)
            os.rename(target, f"{target}.before-restart-{time.strftime('%Y%m%dT%H%M%S')}")
        _barrier("jaxsae-checkpoints-restart")

    def _move_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            target = os.path.join(self.run_dir, SKIPPED_DIR)
            os.makedirs(target, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for step in steps:
                shutil.move(os.path.join(self.directory, str(step)), os.path.join(target, f"{step}-{stamp}"))
        _barrier("jaxsae-checkpoints-skipped")
        self.manager.reload()

    def wait(self) -> None:
        """Block until every started save is committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _first_mismatch(saved: dict, computed: dict[str, str]) -> str | None:
    """The first leaf whose checksum differs from (or is missing in) the saved ones; None if all match."""
    for name, value in computed.items():
        if saved.get(name) != value:
            return name
    return None


def truncate_metrics(run_dir: str, last_step: int) -> list[dict]:
    """Drop the records of `<run_dir>/metrics.jsonl` logged after `last_step` (they will be logged again by
    the resumed run); returns the records kept. A torn last line (the trainer died mid-write) is dropped too."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    kept, lines, dropped = [], [], 0
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if record.get("step", 0) <= last_step:
                kept.append(record)
                lines.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        write_atomic(path, "".join(lines))
    return kept
