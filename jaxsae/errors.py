"""The error families a user can cause (bad config, store, dictionary, extraction input); the CLI prints them."""

from __future__ import annotations

from jaxsae.analysis.errors import AnalysisError
from jaxsae.dictionary import DictionaryError
from jaxsae.sae.base import ConfigError
from jaxsae.store import StoreError

USER_ERRORS: tuple[type[Exception], ...] = (ConfigError, StoreError, DictionaryError, AnalysisError)
try:  # the extractor's errors, when the extract package is present (it needs no torch to import its errors)
    from extract.errors import ExtractError

    USER_ERRORS += (ExtractError,)
except ImportError:
    pass
