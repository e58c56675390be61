"""Feature ablation and steering inside the model: `intervene`, run by the extractor (PyTorch), found through
its entry point (jaxsae.plugins) so that jaxsae imports neither torch nor `extract`."""

from __future__ import annotations

from jaxsae.plugins import intervene_function


def intervene(model, dictionary, adata, feature, scale: float = 0.0, **options):
    """The genes whose masked predictions move most when `feature` (an int or a list) of `dictionary` is scaled
    by `scale` (0 ablates) inside the model, the SAE error added back: x' = x + (scale - 1) f_i(x) d_i.

    model: the model folder the dictionary's store was extracted with; dictionary: a folder or a loaded
    Dictionary; adata: an .h5ad of raw counts. options: cells (how many to sample, default 64), seed, obs
    (per label too), top, layer, batch_size, device. Returns a DataFrame (group, direction, rank, token_id,
    gene_id, symbol, delta, clean, intervened, n_positions); see `extract.intervene` for the units.
    Raises AnalysisError when the extractor (`jaxsae[extract]`) is not installed.
    """
    return intervene_function()(model, dictionary, adata, feature, scale, **options)
