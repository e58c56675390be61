"""A training configuration's settings as command-line flags, parsed by tyro.

`jaxsae train [CONFIG] [--section.field VALUE ...] [--restart]`: the config file (TOML/YAML/JSON) gives the
defaults, each flag overrides one setting under its dotted name, which is the name it has in the file
(`--sae.k 32`, `--data.store PATH`, `--hparams.aux_coeff 0.1`, `--members '[{"k": 16}, {"k": 32}]'`).
The flags, their types and their help come from the schema's dataclasses and their field docstrings
(`jaxsae.train.config`); `load_config(path, overrides)` reads its overrides through the same parser.

Values are checked once, on the finished settings (`jaxsae.validation.checked`): the file's defaults and tyro's result are
built inside `jaxsae.validation.deferred_checks()`, so a file without `data.store` plus `--data.store PATH`
is fine, and an error names the final value whatever supplied it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing
from typing import Annotated, Any

import tyro

from jaxsae.errors import ConfigError
from jaxsae.flags import parse_flags
from jaxsae.sae import base as sae_base
from jaxsae.train.config import Members, TrainConfig
from jaxsae.train.config_files import build_dataclass, load_config_dict, split_metadata
from jaxsae.validation import checked, deferred_checks

_LEGACY_OVERRIDE = re.compile(r"^[A-Za-z_][\w.-]*=")
RUN_CONFIG = "config.json"


def _members_rule(type_info: tyro.constructors.PrimitiveTypeInfo) -> tyro.constructors.PrimitiveConstructorSpec | None:
    """`--members` takes one JSON list of tables (a member's lr, seed and hyperparameters)."""
    if type_info.type != Members:
        return None

    def parse(args: list[str]) -> tuple:
        try:
            value = json.loads(args[0])
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON ({e}); e.g. '[{{\"k\": 16}}, {{\"k\": 32}}]'") from None
        if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
            raise ValueError(f"expected a JSON list of tables, e.g. '[{{\"k\": 16}}, {{\"k\": 32}}]', got {args[0]!r}")
        return tuple(value)

    return tyro.constructors.PrimitiveConstructorSpec(
        nargs=1, metavar="JSON", instance_from_str=parse,
        is_instance=lambda value: isinstance(value, tuple),
        str_from_instance=lambda value: [json.dumps(list(value))])


_REGISTRY = tyro.constructors.ConstructorRegistry()
_REGISTRY.primitive_rule(_members_rule)


@dataclasses.dataclass(frozen=True)
class TrainCommand:
    """Train sparse autoencoders on an activation store: a config file's settings, then flags, each one setting
    under its dotted name in the file. A run folder's config.json resumes that run where it stopped."""

    settings: Annotated[TrainConfig, tyro.conf.arg(name="")]
    config: Annotated[str | None, tyro.conf.Positional, tyro.conf.arg(metavar="CONFIG")] = None
    """A .toml/.yaml/.json config file, or RUN_DIR/config.json to resume that run (optional; first argument)."""
    restart: bool = False
    """Set the run folder's checkpoints aside and train from step 0 (when none can be restored)."""


def parse_train_command(argv: list[str], prog: str = "jaxsae train") -> tuple[TrainConfig, TrainCommand]:
    """`jaxsae train`'s arguments -> (the validated config, the parsed command). `--help` and malformed flags
    exit as tyro does (status 0 / 2); bad settings raise ConfigError."""
    for i, arg in enumerate(argv):
        follows_flag = i > 0 and argv[i - 1].startswith("--") and "=" not in argv[i - 1]
        if _LEGACY_OVERRIDE.match(arg) and not follows_flag and not os.path.exists(arg):
            key, value = arg.split("=", 1)
            raise ConfigError(f"{arg!r}: settings are flags: write --{key} {value} (or --{key}={value}); "
                              f"see jaxsae train --help")
    path = argv[0] if argv and not argv[0].startswith("-") else None
    settings = load_config_dict(path)
    if path is not None and os.path.basename(path) == RUN_CONFIG:
        run_dir = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(os.path.join(run_dir, "checkpoints")):  # a run folder's own config: resume it in place
            settings = {**settings, "run_dir": run_dir}
    cfg, command = _parse(settings, argv, prog, lambda base: TrainCommand(settings=base, config=path))
    if command.config != path:
        raise ConfigError(f"the config file goes first: jaxsae train {command.config} [flags], not after flags")
    return checked(cfg), command


def parse_overrides(settings: dict, overrides: list[str]) -> TrainConfig:
    """`settings` (as read from a file) with `overrides` applied: flags with or without their leading `--`
    ("sae.k=32", "--sae.k", "32")."""
    argv = [arg if arg.startswith("-") or not _LEGACY_OVERRIDE.match(arg) else "--" + arg for arg in overrides]
    return checked(_parse(settings, argv, "jaxsae train", lambda base: base)[0])


def _parse(settings: dict, argv: list[str], prog: str, wrap) -> tuple[TrainConfig, Any]:
    """(the settings, not yet checked; what tyro parsed: `wrap(settings)`'s type)."""
    argv = [_boolean_flag(arg) for arg in argv]
    with deferred_checks():
        base = build_dataclass(TrainConfig, split_metadata(settings))
        file_hparams = dict(base.hparams)
        unknown = {key: 0.0 for key in _flag_keys(argv, "hparams")}  # reach check_hparams, which names them
        base = dataclasses.replace(base, hparams={**unknown, **_hparam_defaults(base, argv), **file_hparams})
        parsed = parse_flags(type(wrap(base)), argv, prog, default=wrap(base), registry=_REGISTRY)
        cfg = parsed if isinstance(parsed, TrainConfig) else parsed.settings
        given = file_hparams.keys() | _flag_keys(argv, "hparams")  # the rest were shown as defaults only
        cfg = dataclasses.replace(cfg, hparams={k: v for k, v in cfg.hparams.items() if k in given})
    return cfg, parsed


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _boolean_flag(arg: str) -> str:
    """`--progress=false` as tyro's `--no_progress` (and `=true` as `--progress`) for a boolean setting, so a
    setting is written `--name=VALUE` whatever its type, as in the config file."""
    flag, eq, value = arg.partition("=")
    if not (eq and flag.startswith("--") and value.lower() in _TRUE + _FALSE):
        return arg
    *sections, leaf = flag[2:].replace("-", "_").split(".")
    cls = TrainConfig
    for name in sections:
        cls = typing.get_type_hints(cls).get(name)
        if not dataclasses.is_dataclass(cls):
            return arg
    if typing.get_type_hints(cls).get(leaf) is not bool:
        return arg
    return "--" + ".".join([*sections, leaf if value.lower() in _TRUE else "no_" + leaf])


def _hparam_defaults(base: TrainConfig, argv: list[str]) -> dict:
    """The architecture's hyperparameters and defaults, so that each has its flag (`--hparams.k`) and help; the
    architecture is `--sae.architecture`'s when given. {} for an unknown architecture (make_config names it)."""
    name = _flag_value(argv, "sae.architecture") or base.sae.architecture
    try:
        return sae_base.build(dataclasses.replace(base.sae, architecture=name)).default_hparams._asdict()
    except ConfigError:
        return {}


def _flag_value(argv: list[str], name: str) -> str | None:
    spellings = {f"--{name}", f"--{name.replace('_', '-')}"}
    value = None
    for i, arg in enumerate(argv):
        flag, eq, rest = arg.partition("=")
        if flag in spellings:
            value = rest if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return value


def _flag_keys(argv: list[str], section: str) -> set[str]:
    prefix = f"--{section}."
    return {arg[len(prefix):].partition("=")[0].replace("-", "_") for arg in argv if arg.startswith(prefix)}
