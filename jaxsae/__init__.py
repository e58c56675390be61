"""jaxsae: sparse autoencoders in JAX for the activations of single-cell foundation models.

Public API (imported lazily, so `import jaxsae.store` stays light):
    jaxsae.fit(config) / jaxsae.load_config(path, overrides)     train dictionaries (= jaxsae.train.train)
    jaxsae.load(path) -> Dictionary                              a trained dictionary (encode/decode)
    jaxsae.open_store(path)                                      an activation store
    jaxsae.load_genes(store) -> DataFrame                        token id -> gene_id, symbol of a store
    jaxsae.interop.export_dictionary / import_dictionary         to and from SAELens and sparsify
    jaxsae.synthesize(path, SynthConfig(...))                    synthetic ground-truth activations
    jaxsae.JaxsaeError and its families (ConfigError, StoreError, CheckpointError, LockError, TrainingError,
    DictionaryError, AnalysisError, ExtractError, SchedulerError)  every error raised on purpose (jaxsae.errors)
"""

from jaxsae.lazy import lazy_exports

from jaxsae.logs import install_default_handler

__version__ = "0.1.0"
install_default_handler()

_ERRORS = ("JaxsaeError", "ConfigError", "StoreError", "CheckpointError", "LockError", "TrainingError",
           "DictionaryError", "AnalysisError", "ExtractError", "SchedulerError")
_EXPORTS = {
    **dict.fromkeys(_ERRORS, "jaxsae.errors"), "SAEConfig": "jaxsae.sae.base",
    "Dictionary": "jaxsae.dictionary", "load": "jaxsae.dictionary",
    "open_store": "jaxsae.store", "load_genes": "jaxsae.store.genes",
    "SynthConfig": "jaxsae.data.synthetic", "synthesize": "jaxsae.data.synthetic",
    "feature_recovery": "jaxsae.data.synthetic", "load_truth": "jaxsae.data.synthetic",
    "TrainConfig": "jaxsae.train.config",
    "load_config": "jaxsae.train.config_files", "make_config": "jaxsae.train.config_files",
    "fit": "jaxsae.train.loop", "RunResult": "jaxsae.train.loop",
}

__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
