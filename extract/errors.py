"""The one exception family of the extraction side."""


class ExtractError(Exception):
    """Input to extraction that cannot work: bad AnnData, model folder, dictionary or option.

    Raised before any work starts; the message names what was found, what was expected and the fix.
    """
