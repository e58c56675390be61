"""The HTML report of a trained dictionary: what a biologist opens to see what the model learned.

    build_report(run_or_dictionary, store, adata, ...) -> Path     build.py  gathers data, writes the file
    render_report(path, title=..., summary=..., ...)   -> Path     html.py   pure rendering, atomic write
    plots.training_curves / density_histogram / feature_umap / activation_histogram -> PNG bytes
"""

from jaxsae.lazy import lazy_exports

_EXPORTS = {"build_report": "jaxsae.report.build", "render_report": "jaxsae.report.html"}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
