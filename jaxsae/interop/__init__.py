"""Dictionaries to and from SAELens and EleutherAI's sparsify (safetensors + JSON; no torch).

Public API:
    export_dictionary(dictionary_path, out, format="saelens" | "sparsify") -> the folder written
    import_dictionary(path, out) -> the jaxsae dictionary folder written (format detected from the files)
    FORMATS                                        the format names export_dictionary takes
"""

from jaxsae.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "export_dictionary": "jaxsae.interop.convert", "import_dictionary": "jaxsae.interop.convert",
    "FORMATS": "jaxsae.interop.convert",
})
