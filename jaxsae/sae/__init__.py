"""Dictionary math: one architecture per module, pure functions over per-member parameter pytrees."""

from jaxsae.sae.base import ARCHITECTURES, Axes, ConfigError, LossOut, SAEConfig, get

__all__ = ["ARCHITECTURES", "Axes", "ConfigError", "LossOut", "SAEConfig", "get"]
