"""Training: config, state, the jitted step, the loop, run folders, metrics."""

import importlib

_EXPORTS = {"DataConfig": "config", "MeshConfig": "config", "OptimConfig": "config", "TrainConfig": "config",
            "load_config": "config_files", "make_config": "config_files", "RunResult": "loop", "train": "loop"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"jaxsae.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'jaxsae.train' has no attribute {name!r}")
