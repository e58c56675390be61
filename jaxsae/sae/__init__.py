"""Dictionary math: one architecture per module, pure functions over per-member parameter pytrees."""

from jaxsae.sae.base import ARCHITECTURES, Axes, ConfigError, LossOut, SAEConfig, get
from jaxsae.sae.constraints import normalise_rows, remove_parallel_grad
from jaxsae.sae.fold import fold_input_scale
from jaxsae.sae.init import geometric_median

__all__ = [
    "ARCHITECTURES",
    "Axes",
    "ConfigError",
    "LossOut",
    "SAEConfig",
    "fold_input_scale",
    "geometric_median",
    "get",
    "normalise_rows",
    "remove_parallel_grad",
]
