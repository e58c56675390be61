"""The extraction side's error family, `jaxsae.errors.ExtractError` (defined there, in the leaf module)."""

from jaxsae.errors import ExtractError

__all__ = ["ExtractError"]
