"""Dictionary math: one architecture per module, pure functions over per-member parameter pytrees.

`get(name)` finds an architecture's constructor (built-ins: `builtin_names()`; others: `register`);
`build(cfg)` returns its `Architecture` bundle for a static `SAEConfig`.
"""

from jaxsae.sae.base import (Architecture, Axes, ConfigError, LossContext, LossOut, Range, SAEConfig, build,
                             builtin_names, get, register)
from jaxsae.sae.constraints import normalise_rows, remove_parallel_grad
from jaxsae.sae.fold import fold_input_scale
from jaxsae.sae.init import geometric_median

__all__ = [
    "Architecture",
    "Axes",
    "ConfigError",
    "LossContext",
    "LossOut",
    "Range",
    "SAEConfig",
    "build",
    "builtin_names",
    "fold_input_scale",
    "geometric_median",
    "get",
    "normalise_rows",
    "register",
    "remove_parallel_grad",
]
