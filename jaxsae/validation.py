"""Deferred validation of the config dataclasses (a leaf module: imports nothing from jaxsae).

Every config dataclass checks its values in `__post_init__`. The command line builds its defaults and its
parse result before every value is known (a config file without `data.store`, then `--data.store PATH`); it
does so inside `deferred_checks()`, where those checks are skipped, and then validates the finished settings
once (`jaxsae.train.make_config`), so an error names the final value, whatever supplied it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

_DEFERRED = contextvars.ContextVar("jaxsae_deferred_checks", default=False)


def checks_deferred() -> bool:
    """True inside `deferred_checks()`: a config's `__post_init__` then only normalises (e.g. absolute paths)."""
    return _DEFERRED.get()


@contextlib.contextmanager
def deferred_checks() -> Iterator[None]:
    """Build config dataclasses without their value checks; validate the result afterwards."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def checked(config):
    """`config` (a dataclass built inside `deferred_checks()`) rebuilt with its checks, nested ones first."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
    return type(config)(**{name: checked(v) if dataclasses.is_dataclass(v) else v for name, v in values.items()})
