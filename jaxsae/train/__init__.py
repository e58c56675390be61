"""Training: config, state, the jitted step, the loop, run folders, metrics."""

from jaxsae.lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("DataConfig", "MeshConfig", "OptimConfig", "TrainConfig"), "jaxsae.train.config"),
    "load_config": "jaxsae.train.config_files", "make_config": "jaxsae.train.config_files",
    "RunResult": "jaxsae.train.loop", "train": "jaxsae.train.loop",
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
