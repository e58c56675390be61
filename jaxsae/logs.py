"""Operational messages: one line each, through `logging` under the "jaxsae" logger (no source lines).

Every module logs with `logging.getLogger(__name__)` (jaxsae.*) or `logging.getLogger("jaxsae.extract")`
(the extractor). The "jaxsae" logger gets one handler at import that prints `jaxsae: <message>` to the
current `sys.stderr` at INFO and above, so notices such as "resuming from step 400 of 1000" reach a user of
the CLI and of a notebook alike. It does not propagate to the root logger (no message twice); an application
that wants its own handling can call `logging.getLogger("jaxsae").handlers.clear()` and set `propagate`.
"""

from __future__ import annotations

import logging
import sys

ROOT = "jaxsae"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the message (pytest and notebooks swap it)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def install_default_handler() -> None:
    logger = logging.getLogger(ROOT)
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("jaxsae: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
