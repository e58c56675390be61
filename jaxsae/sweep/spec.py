"""A sweep spec: a base training config plus axes, expanded into named members (each one training config's
settings). Read from TOML/YAML/JSON; every member's config is built and validated before anything runs.

```toml
name = "topk-k-lr"             # the sweep's folder name (default: the spec file's stem)
base = "topk.toml"             # a config file (relative to this spec), and/or a [base] table on top of it
max_pack = 8                   # most members trained together in one vmapped pack (memory may lower it)

[base.data]
store = "runs/synth-store"

[grid]                         # every combination of these settings (dotted names, as in a config file)
"hparams.k" = [8, 16, 32, 64]
"optim.lr" = [4e-4, 1e-3]

[random]                       # optional: `samples` draws for every grid point, seeded by `draw_seed`
samples = 4
draw_seed = 0
"hparams.aux_coeff" = {uniform = [0.0, 0.1]}
"optim.lr" = {log_uniform = [1e-4, 1e-2]}
"seed" = {choice = [0, 1, 2]}
```
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from typing import Any

import numpy as np

from jaxsae.errors import ConfigError
from jaxsae.train.config_files import load_config_dict

DISTRIBUTIONS = ("uniform", "log_uniform", "choice")
_NOT_AXES = ("run_dir", "members")  # the sweep sets these itself


@dataclasses.dataclass(frozen=True)
class Member:
    """One point of the sweep: its name (from its axis values) and the settings it sets (dotted name -> value)."""

    name: str
    settings: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class SweepSpec:
    """A parsed spec: `base` (nested settings, as a config file), the axes, and the packing limit."""

    name: str
    base: dict
    grid: dict[str, list]
    random: dict[str, dict]
    samples: int
    random_seed: int
    max_pack: int
    path: str = ""

    def members(self) -> list[Member]:
        """Every member, in a deterministic order: the grid's combinations (last axis fastest), each with
        `samples` random draws when there are random axes. A drawn member's name starts with its draw's
        index (`r002_k16_lr0.00123`): rounded values alone could make two draws' names equal."""
        combos = [dict(zip(self.grid, values)) for values in itertools.product(*self.grid.values())] or [{}]
        rng = np.random.default_rng(self.random_seed)
        members = []
        for combo in combos:
            if not self.random:
                members.append(Member(member_name(combo), combo))
                continue
            for j in range(self.samples):
                point = {**combo, **_draw(self.random, rng)}
                members.append(Member(f"r{j:03d}_{member_name(point)}", point))
        names = [m.name for m in members]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"sweep: members {duplicates[:3]} appear more than once (the same values twice in "
                              f"an axis?); each member must differ in at least one setting")
        return members


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and check a spec file (see the module docstring); errors name the entry and the fix."""
    path = os.path.abspath(os.fspath(path))
    raw = load_config_dict(path)
    known = {"name", "base", "max_pack", "grid", "random"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"sweep spec {path}: unknown entry {key!r}; known: {', '.join(sorted(known))}")
    base = raw.get("base", {})
    if isinstance(base, str):  # a config file, relative to the spec
        base = load_config_dict(os.path.join(os.path.dirname(path), base))
    elif isinstance(base, dict) and isinstance(base.get("file"), str):
        base = _merge(load_config_dict(os.path.join(os.path.dirname(path), base["file"])),
                      {k: v for k, v in base.items() if k != "file"})
    if not isinstance(base, dict):
        raise ConfigError(f"sweep spec {path}: base must be a config file name or a table of settings")
    grid = raw.get("grid", {})
    if not isinstance(grid, dict):
        raise ConfigError("sweep grid: expected a table of `setting = [values]`")
    for key, values in grid.items():
        _check_axis(key, "grid")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep grid.{key}: expected a non-empty list of values, got {values!r}")
    random = dict(raw.get("random", {}))
    samples, seed = random.pop("samples", 1), random.pop("draw_seed", 0)
    if not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"sweep random.samples: expected an integer >= 1, got {samples!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"sweep random.draw_seed: expected an integer >= 0, got {seed!r}")
    for key, dist in random.items():
        _check_axis(key, "random")
        _check_distribution(key, dist)
    overlap = set(grid) & set(random)
    if overlap:
        raise ConfigError(f"sweep: {sorted(overlap)} are both grid and random axes; choose one for each")
    max_pack = raw.get("max_pack", 8)
    if not isinstance(max_pack, int) or max_pack < 1:
        raise ConfigError(f"sweep max_pack: expected an integer >= 1, got {max_pack!r}")
    name = raw.get("name") or os.path.splitext(os.path.basename(path))[0]
    return SweepSpec(name=str(name), base=base, grid=grid, random=random, samples=samples, random_seed=int(seed),
                     max_pack=max_pack, path=path)


def member_name(settings: dict[str, Any]) -> str:
    """A member's name from its axis values, in axis order: `k16_lr0.001_seed0`; a string value (an
    architecture, a store) appears as itself (a path as its last two parts)."""
    parts = []
    for key, value in settings.items():
        short = key.rsplit(".", 1)[-1]
        if isinstance(value, str):  # a path by its last two parts: layer_2-tokens
            parts.append("-".join(p for p in value.strip("/").split("/")[-2:] if p) or value)
        elif isinstance(value, float):
            parts.append(f"{short}{value:.3g}")
        else:
            parts.append(f"{short}{value}")
    return "_".join(parts).replace("/", "-") or "default"


def set_dotted(settings: dict, key: str, value: Any) -> dict:
    """A copy of nested `settings` with `key` ("a.b.c") set to `value`."""
    out = dict(settings)
    head, _, rest = key.partition(".")
    out[head] = set_dotted(out.get(head) if isinstance(out.get(head), dict) else {}, rest, value) if rest else value
    return out


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _check_axis(key: str, where: str) -> None:
    if not isinstance(key, str) or not key or key.split(".")[0] in _NOT_AXES:
        raise ConfigError(f"sweep {where}.{key}: not an axis; the sweep sets run_dir and members itself "
                          f"(sweep lr, seed and hparams.* directly)")


def _check_distribution(key: str, dist: Any) -> None:
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise ConfigError(f"sweep random.{key}: expected one of {{uniform = [lo, hi]}}, {{log_uniform = [lo, hi]}}, "
                          f"{{choice = [values]}}; got {dist!r}")
    kind, args = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"sweep random.{key}.choice: expected a non-empty list, got {args!r}")
        return
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)
            and args[0] < args[1] and (kind == "uniform" or args[0] > 0)):
        raise ConfigError(f"sweep random.{key}.{kind}: expected [lo, hi] with lo < hi"
                          f"{' and lo > 0' if kind == 'log_uniform' else ''}, got {args!r}")


def _draw(random: dict[str, dict], rng: np.random.Generator) -> dict[str, Any]:
    out = {}
    for key, dist in random.items():
        kind, args = next(iter(dist.items()))
        if kind == "choice":
            out[key] = args[int(rng.integers(len(args)))]
        elif kind == "uniform":
            out[key] = float(rng.uniform(args[0], args[1]))
        else:
            out[key] = float(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
    return out
