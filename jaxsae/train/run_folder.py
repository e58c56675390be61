"""The run folder: what a training run leaves on disk, and the marker that says it is finished.

```
<run_dir>/config.json           the resolved TrainConfig
<run_dir>/metrics.jsonl         one record per member per log read-back
<run_dir>/tensorboard/          event files (when asked for)
<run_dir>/checkpoints/          Orbax checkpoints
<run_dir>/dictionaries/member_000/{dictionary.safetensors, config.json}
<run_dir>/run.json              written last: {"status": "complete", ...}; absent = not finished
```
"""

from __future__ import annotations

import json
import os
import time

from jaxsae.sae.base import ConfigError

COMPLETE_FILE = "run.json"


def is_complete(run_dir: str) -> bool:
    path = os.path.join(run_dir, COMPLETE_FILE)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("status") == "complete"


def dictionary_dir(run_dir: str, member: int) -> str:
    return os.path.join(run_dir, "dictionaries", f"member_{member:03d}")


def write_json_atomic(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prepare(run_dir: str, config: dict) -> None:
    """Create (or reuse) the run folder; refuse one that holds a finished run or another run's config."""
    if is_complete(run_dir):
        raise ConfigError(
            f"run_dir: {run_dir} already holds a finished run; choose a new run_dir (or delete that folder)"
        )
    os.makedirs(run_dir, exist_ok=True)
    cfg_path = os.path.join(run_dir, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            previous = json.load(f)
        if _shape_defining(previous) != _shape_defining(config):
            raise ConfigError(
                f"run_dir: {run_dir} holds an unfinished run with a different sae/members/data config; "
                f"resume it with its own config.json or choose a new run_dir"
            )
    write_json_atomic(cfg_path, config)


def _shape_defining(cfg: dict) -> tuple:
    return (json.dumps(cfg.get("sae"), sort_keys=True), json.dumps(cfg.get("members"), sort_keys=True),
            cfg.get("data", {}).get("batch_rows"), cfg.get("data", {}).get("streams"))


def mark_complete(run_dir: str, summary: dict) -> None:
    write_json_atomic(os.path.join(run_dir, COMPLETE_FILE),
                      {"status": "complete", "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       **summary})
