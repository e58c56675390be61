"""Lazy public names for package `__init__` modules: a name is imported from its module on first use, so
`import jaxsae` stays light (no JAX compile, no scanpy) until something is asked for."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[list[str], Callable, Callable]:
    """(__all__, __getattr__, __dir__) for `package` whose public names live in modules: exports maps each
    name to the module (absolute name) that defines it."""

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    names = sorted(exports)
    return names, __getattr__, lambda: names
