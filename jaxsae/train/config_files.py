"""Reading a training configuration from settings: TOML/YAML/JSON files and nested dicts, coerced to the
schema's field types (`jaxsae.train.config`) with errors that name the setting. Command-line flags on top of
them are `jaxsae.train.config_flags` (tyro)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
import typing
from typing import Any

from jaxsae.errors import ConfigError
from jaxsae.train.config import SCHEMA_VERSION, TrainConfig


def _did_you_mean(key: str, known, prefix: str) -> str:
    """"did you mean <prefix><closest>? " for a misspelt setting, or "" when nothing is close."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"did you mean {prefix}{close[0]}? " if close else ""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Turn a parsed value into the field's declared type; errors name the field."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        return None
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        return _coerce(value, args[0], where)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) else int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
        if origin is tuple or hint is tuple:
            if isinstance(value, str):
                value = json.loads(value)
            return tuple(value)
        if hint is dict or origin is dict:
            if isinstance(value, str):
                value = json.loads(value)
            return dict(value)
    except (TypeError, ValueError, json.JSONDecodeError):
        raise ConfigError(f"{where}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None
    return value


def build_dataclass(cls, values: dict, where: str = ""):
    """`cls(**values)` with each value coerced to its field's type and sections (nested dataclasses) built from
    their tables; unknown keys are refused with the closest known one. `where` prefixes messages ("data.")."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"{where}{key}: unknown setting; {_did_you_mean(key, fields, where)}"
                              f"known: {', '.join(sorted(fields))}")
    kwargs = {}
    for key, value in values.items():
        if dataclasses.is_dataclass(hints[key]):  # a section: sae, data, optim, mesh, distributed
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key}: expected a table of settings, got {value!r}")
            kwargs[key] = build_dataclass(hints[key], value, f"{where}{key}.")
        elif key == "members" and cls is TrainConfig:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, (list, tuple)) or not all(isinstance(m, dict) for m in value):
                raise ConfigError(f"members: expected a list of tables, got {value!r}")
            kwargs[key] = tuple(dict(m) for m in value)
        else:
            kwargs[key] = _coerce(value, hints[key], f"{where}{key}")
    return cls(**kwargs)


def load_config_dict(path: str | os.PathLike | None) -> dict:
    """Raw settings from a .toml / .yaml / .json file (empty without a file)."""
    if path is None:
        return {}
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if path.endswith(".toml"):
            return tomllib.loads(raw.decode())
        if path.endswith((".yaml", ".yml")):
            import yaml

            return yaml.safe_load(raw) or {}
        if path.endswith(".json"):
            return json.loads(raw)
    except Exception as e:  # noqa: BLE001 - parser errors differ per format
        raise ConfigError(f"config file {path!r} could not be parsed: {e}") from None
    raise ConfigError(f"config file {path!r}: use a .toml, .yaml or .json file")


def split_metadata(settings: dict) -> dict:
    """The settings without the metadata a run folder's config.json also carries (`schema_version`, checked
    here, and `store_identity`; see `jaxsae.train.run_folder`), so that file reads back as a config."""
    settings = dict(settings)
    version = settings.pop("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ConfigError(f"schema_version: this config was written by a newer jaxsae (schema {version!r}; this "
                          f"jaxsae reads up to {SCHEMA_VERSION}); upgrade jaxsae")
    settings.pop("store_identity", None)
    return settings


def make_config(settings: dict) -> TrainConfig:
    """A validated TrainConfig from nested settings (as read from a file, or a run folder's config.json)."""
    return build_dataclass(TrainConfig, split_metadata(settings))


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A validated TrainConfig: the file's settings (TOML/YAML/JSON; none without a file), then `overrides`,
    the command line's flags with or without their leading `--` (e.g. "sae.k=32", "--data.store=PATH",
    'members=[{"k": 16}, {"k": 32}]'), read by the same parser as `jaxsae train`."""
    from jaxsae.train.config_flags import parse_overrides

    return parse_overrides(load_config_dict(path), list(overrides or []))
