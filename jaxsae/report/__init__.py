"""The HTML report of a trained dictionary: what a biologist opens to see what the model learned.

    build_report(run_or_dictionary, store, adata, ...) -> Path     build.py  gathers data, writes the file
    render_report(path, title=..., summary=..., ...)   -> Path     html.py   pure rendering, atomic write
    plots.training_curves / density_histogram / feature_umap / activation_histogram -> PNG bytes
"""

import importlib

_EXPORTS = {"build_report": "jaxsae.report.build", "render_report": "jaxsae.report.html"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jaxsae.report' has no attribute {name!r}")


def __dir__():
    return __all__
