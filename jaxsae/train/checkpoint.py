"""Orbax checkpoints of a run: the whole train state, the data-stream position and the config, saved async.

```
<run_dir>/checkpoints/<step>/state/    TrainState: step, params, Adam state, buffers (dead-latent counters,
                                       BatchTopK thresholds, ...), input scale, metric accumulators
<run_dir>/checkpoints/<step>/stream/   {"epoch", "batch"}: the next batch of the data order
<run_dir>/checkpoints/<step>/config/   the run's TrainConfig (for humans and `jaxsae` tools; not re-read)
<run_dir>/checkpoints.skipped/<step>   checkpoints that failed to restore, moved aside (kept for inspection)
```

Orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp` and renames it when every process has finished,
so a crash mid-save leaves no directory that looks complete; such leftovers are named in a warning and
deleted. Every process writes its own array shards; process 0 writes the metadata. `save` returns as soon as
the arrays are copied to host memory (the state may then be donated to the next step); the files are written
by a background thread while training goes on.

Restoring builds abstract arrays with the CURRENT mesh's shardings, so a checkpoint written on 8 devices
restores onto 2 (or onto another mesh shape) unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding

from jaxsae.data.stream import StreamState
from jaxsae.sae.base import ConfigError
from jaxsae.train.config import TrainConfig
from jaxsae.train.step import TrainState, init_state, state_specs

CHECKPOINT_DIR = "checkpoints"
SKIPPED_DIR = "checkpoints.skipped"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


class CheckpointError(ConfigError):
    """Checkpoints exist but none can be restored (or one cannot be written)."""


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored checkpoint: the sharded state, the stream position and the step it was taken at."""

    step: int
    state: TrainState
    stream: StreamState


def checkpoint_dir(run_dir: str) -> str:
    return os.path.abspath(os.path.join(run_dir, CHECKPOINT_DIR))


def abstract_state(cfg: TrainConfig, mesh: Mesh) -> TrainState:
    """The train state's shapes and dtypes as `jax.ShapeDtypeStruct`s carrying their shardings on `mesh`."""
    shapes = jax.eval_shape(lambda b_dec: init_state(cfg, mesh, b_dec, 1.0),
                            jax.ShapeDtypeStruct((cfg.sae.d_model,), jnp.float32))
    specs = state_specs(shapes, cfg.sae.n_latents)
    return jax.tree.map(lambda x, spec: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec)),
                        shapes, specs)


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
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "stream", "config"))

    def _warn_incomplete(self) -> None:
        if not os.path.isdir(self.directory):
            return
        for name in sorted(os.listdir(self.directory)):
            if _TMP_SUFFIX in name:
                warnings.warn(f"checkpoint {os.path.join(self.directory, name)} was never committed (the trainer "
                              f"stopped while saving it); skipping and deleting it", stacklevel=3)

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: TrainState, stream: StreamState, config: dict) -> None:
        """Start saving the state after `step` steps; returns once the arrays are safe to donate."""
        saved = self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), stream=ocp.args.JsonSave(stream.to_dict()),
            config=ocp.args.JsonSave(config)), force=True)
        if not saved:
            raise CheckpointError(f"checkpoint of step {step} in {self.directory} was not written (Orbax refused it)")

    def restore_latest(self, abstract: TrainState) -> Restored | None:
        """The newest checkpoint that restores, onto `abstract`'s shardings; None if there is none.

        A checkpoint that fails to restore is named in a warning, moved to `<run_dir>/checkpoints.skipped/`
        (so a later save of the same step cannot collide with it), and the next older one is tried.
        """
        steps = self.steps()
        skipped = []
        restored = None
        for step in reversed(steps):
            try:
                out = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract), stream=ocp.args.JsonRestore()))
                restored = Restored(step, out["state"], StreamState.from_dict(out["stream"]))
                break
            except Exception as e:  # noqa: BLE001 - Orbax/TensorStore raise many types for damaged files
                path = os.path.join(self.directory, str(step))
                warnings.warn(f"checkpoint {path} could not be restored ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); skipping it", stacklevel=2)
                skipped.append(step)
        if skipped:
            self._move_aside(skipped)
        if steps and restored is None:
            raise CheckpointError(
                f"none of the checkpoints in {self.directory} could be restored (steps {steps}; they were moved "
                f"to {os.path.join(self.run_dir, SKIPPED_DIR)}); delete the run folder or train into a new run_dir"
            )
        if restored is not None and int(jax.device_get(restored.state.step)) != restored.step:
            raise CheckpointError(f"checkpoint {self.directory}/{restored.step} holds a state of step "
                                  f"{int(jax.device_get(restored.state.step))}; the folder was edited by hand")
        return restored

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
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return kept
