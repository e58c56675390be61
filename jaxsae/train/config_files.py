"""Reading a training configuration: TOML/YAML/JSON files, `key=value` overrides, coercion to the schema's
field types (`jaxsae.train.config`), with errors that name the setting."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
import typing
from typing import Any

from jaxsae.errors import ConfigError
from jaxsae.sae.base import SAEConfig
from jaxsae.train.config import (SCHEMA_VERSION, DataConfig, DistributedConfig, MeshConfig, OptimConfig,
                                 TrainConfig)


def _did_you_mean(key: str, known, prefix: str) -> str:
    """"did you mean <prefix><closest>? " for a misspelt setting, or "" when nothing is close."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"did you mean {prefix}{close[0]}? " if close else ""


_SECTIONS = {"sae": SAEConfig, "data": DataConfig, "optim": OptimConfig, "mesh": MeshConfig,
             "distributed": DistributedConfig}


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


def _parse_value(text: str) -> Any:
    """`key=value` override values: JSON/TOML-ish literals, else the raw string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        try:
            return tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            return text


def _build(cls, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"{where}{key}: unknown setting; {_did_you_mean(key, fields, where)}"
                              f"known: {', '.join(sorted(fields))}")
    kwargs = {}
    for key, value in values.items():
        if key in _SECTIONS and cls is TrainConfig:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a table of settings, got {value!r}")
            kwargs[key] = _build(_SECTIONS[key], value, f"{key}.")
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


def apply_overrides(settings: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides to nested settings (copy)."""
    out = json.loads(json.dumps(settings))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. sae.k=32")
        key, text = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = _parse_value(text.strip())
    return out


def make_config(settings: dict) -> TrainConfig:
    """A validated TrainConfig from nested settings (as read from a file, after overrides).

    A run folder's config.json also carries `schema_version` and `store_identity` (see
    `jaxsae.train.run_folder`); they are checked or set aside here, so that file reads back as a config.
    """
    settings = dict(settings)
    version = settings.pop("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ConfigError(f"schema_version: this config was written by a newer jaxsae (schema {version!r}; this "
                          f"jaxsae reads up to {SCHEMA_VERSION}); upgrade jaxsae")
    settings.pop("store_identity", None)
    settings.setdefault("data", {})
    if not isinstance(settings["data"], dict):
        raise ConfigError("data: expected a table of settings")
    return _build(TrainConfig, settings, "")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The CLI's path: file settings, then `key=value` overrides, then validation."""
    return make_config(apply_overrides(load_config_dict(path), overrides or []))
