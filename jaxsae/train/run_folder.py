"""The run folder: what a training run leaves on disk, and the marker that says it is finished.

```
<run_dir>/config.json           the resolved TrainConfig + "schema_version" + "store_identity" (absolute paths)
<run_dir>/metrics.jsonl         one record per member per log read-back
<run_dir>/tensorboard/          event files (when asked for)
<run_dir>/checkpoints/          Orbax checkpoints
<run_dir>/dictionaries/member_000/{dictionary.safetensors, config.json}
<run_dir>/run.json              written last: {"status": "complete", "schema_version", ...}; absent = not finished
```

Resume is all or nothing: a run folder holding an unfinished run is only continued with settings that give the
same result. These may differ between the runs (they change where or how visibly the run goes, not what it
computes): `RESULT_NEUTRAL` below, and the store's path when the store itself (its identity) is the same one,
moved or copied. Everything else (the store's identity, the data order,
sae, optim, hparams, members, seed, steps/total_rows as the number of steps, which sets the LR schedule) must
match, or the rerun is refused before any work with every differing field named `field: old -> new`.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from jaxsae.dictionary import RUN_COMPLETE_FILE as COMPLETE_FILE
from jaxsae.atomic import leftovers, write_atomic
from jaxsae.differences import differences
from jaxsae.errors import ConfigError
from jaxsae.train.config import SCHEMA_VERSION, TrainConfig
from jaxsae.train.config_files import make_config

RESULT_NEUTRAL = ("run_dir", "mesh.*", "distributed.*", "progress", "log_every", "tensorboard", "checkpoint_every",
                  "keep_checkpoints", "data.prefetch", "data.allow_incomplete")
"""Settings a resumed run may change (dotted names; `x.*` is a whole section)."""


def is_complete(run_dir: str) -> bool:
    path = os.path.join(run_dir, COMPLETE_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        record = json.load(f)
    _check_schema(record, path)
    return record.get("status") == "complete"


def _check_schema(record: dict, path: str) -> None:
    version = record.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema_version {version!r} is newer than this jaxsae reads ({SCHEMA_VERSION}); "
                          f"upgrade jaxsae")


def dictionary_dir(run_dir: str, member: int) -> str:
    return os.path.join(run_dir, "dictionaries", f"member_{member:03d}")


def prepare(run_dir: str, cfg: TrainConfig, store_identity: dict) -> None:
    """Create (or reuse) the run folder; refuse one that holds a finished run or an unfinished run whose
    settings differ in anything but `RESULT_NEUTRAL` (config.json is then left as it was).

    store_identity: {"created", "d_model", "rows_committed"} of the store (its manifest), so another store at
    the same path, or a store that grew, is told apart from the one the run started on.
    """
    if is_complete(run_dir):
        raise ConfigError(
            f"run_dir: {run_dir} already holds a finished run; choose a new run_dir (or delete that folder)"
        )
    os.makedirs(run_dir, exist_ok=True)
    cfg_path = os.path.join(run_dir, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            previous = json.load(f)
        _check_schema(previous, cfg_path)
        differing = config_differences(previous, cfg, store_identity)
        if differing:
            raise ConfigError(
                f"run_dir: {run_dir} holds an unfinished run with other settings ({'; '.join(differing)}); "
                f"resume it with the same settings (jaxsae train {cfg_path}) or choose a new run_dir"
            )
    remove_leftovers(run_dir)
    saved = {"schema_version": SCHEMA_VERSION, **cfg.to_dict(), "store_identity": store_identity}
    write_atomic(cfg_path, json.dumps(saved, indent=2, default=str))


def config_differences(previous: dict, cfg: TrainConfig, store_identity: dict) -> list[str]:
    """`field: old -> new` for every result-changing setting in which `cfg` differs from a saved config.json."""
    try:
        old_cfg = make_config(previous)
    except ConfigError as e:
        raise ConfigError(f"run_dir: {cfg.run_dir}/config.json cannot be read back ({e}); choose a new run_dir") from None
    old_store = previous.get("store_identity")
    moved_store = bool(old_store) and old_store == store_identity  # the same store at another path: same result
    differing = differences(_settings(old_cfg), _settings(cfg),
                            ignore=RESULT_NEUTRAL + (("data.store",) if moved_store else ()))
    if old_store and old_store != store_identity and old_cfg.data.store == cfg.data.store:
        describe = lambda s: f"created {s.get('created')}, {s.get('rows_committed')} rows of d={s.get('d_model')}"  # noqa: E731
        differing.append(f"data.store (contents): {describe(old_store)} -> {describe(store_identity)}")
    return differing


def _settings(cfg: TrainConfig) -> dict:
    """Every setting; steps/total_rows as the number of steps they mean."""
    settings = cfg.to_dict()
    settings.pop("total_rows")
    settings["steps"] = cfg.num_steps
    return settings


def remove_leftovers(run_dir: str) -> None:
    """Delete what an interrupted writer leaves: the `.tmp-*` files and half-saved dictionary folders of
    jaxsae.atomic in the run folder and its dictionaries/ folder."""
    for path in leftovers(run_dir) + leftovers(os.path.join(run_dir, "dictionaries")):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def mark_complete(run_dir: str, summary: dict) -> None:
    remove_leftovers(run_dir)
    write_atomic(os.path.join(run_dir, COMPLETE_FILE),
                 json.dumps({"status": "complete", "schema_version": SCHEMA_VERSION,
                             "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary},
                            indent=2, default=str))
