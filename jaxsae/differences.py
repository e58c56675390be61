"""`field: old -> new` lists of two nested settings records (run configs, extraction sources); a leaf module."""

from __future__ import annotations

import json

UNSET = "(unset)"
SHOWN_CHARS = 80


def flatten(record: dict) -> dict[str, str]:
    """Dotted name -> JSON text of every leaf of `record` (nested dicts; a list of dicts as `name[i].field`
    plus `len(name)`; other lists and empty dicts are leaves; non-JSON values as their str)."""
    flat: dict[str, str] = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        elif isinstance(node, (list, tuple)) and all(isinstance(item, dict) for item in node):
            for i, item in enumerate(node):
                walk(f"{prefix[:-1]}[{i}].", item)
            flat[f"len({prefix[:-1]})"] = str(len(node))
        else:
            flat[prefix[:-1]] = json.dumps(node, sort_keys=True, default=str)

    walk("", record)
    return flat


def differences(old: dict, new: dict, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """`field: old -> new` for every differing leaf (see `flatten`), sorted by field; a field missing on one
    side shows as (unset). ignore: dotted names never compared; `section.*` ignores a whole section."""
    a, b = flatten(old), flatten(new)
    return [f"{key}: {_short(a.get(key, UNSET))} -> {_short(b.get(key, UNSET))}"
            for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key) and not _ignored(key, ignore)]


def _ignored(key: str, ignore: tuple[str, ...]) -> bool:
    return any(key == name or (name.endswith(".*") and key.startswith(name[:-1])) for name in ignore)


def _short(text: str) -> str:
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "..."
