"""Load the Geneformer dictionaries (pickles) without executing anything they name.

`pickle.load` runs any callable a pickle names, so a downloaded dictionary could run code. These files
hold plain data: dicts of strings to ints, floats or strings. `load_plain_pickle` uses an Unpickler whose
`find_class` refuses every global except a tight allowlist needed for numpy *numeric scalars* (real
Geneformer median dictionaries store `numpy.float32`/`float64` values). Those few names are not resolved to
the real numpy callables: they map to small functions here that can only build a numeric scalar from raw
bytes of a numeric dtype (bool, int, uint, float), so a pickle can never reach `os.system` or similar. The
result is checked to contain only plain containers, strings and numbers; numpy scalars become Python
`int`/`float`.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from extract.errors import ExtractError

_NUMERIC_KINDS = frozenset("biuf")


class _DtypeSpec:
    """Stand-in for `numpy.dtype(...)` inside a pickle: remembers a numeric dtype, nothing else."""

    def __init__(self, code, align=False, copy=True):
        if not isinstance(code, str):
            raise pickle.UnpicklingError(f"numpy dtype code must be a string, found {type(code).__name__}")
        dtype = np.dtype(code)
        if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
            raise pickle.UnpicklingError(f"only numeric numpy scalars are allowed, found dtype {code!r}")
        self.dtype = dtype

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError("malformed numpy dtype state")
        if state[1] in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(state[1])


def _numpy_scalar(dtype_spec, data=None):
    if not isinstance(dtype_spec, _DtypeSpec) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("numpy scalar must be built from a numeric dtype and raw bytes")
    if len(data) != dtype_spec.dtype.itemsize:
        raise pickle.UnpicklingError("numpy scalar bytes do not match its dtype size")
    return np.frombuffer(data, dtype=dtype_spec.dtype)[0].item()


def _codecs_encode(text, encoding="utf-8"):
    # protocol 2 pickles store bytes as `_codecs.encode(str, 'latin1')`
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("only _codecs.encode(str, 'latin1') is allowed")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy", "dtype"): _DtypeSpec,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): _codecs_encode,
}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only plain data is allowed"
            ) from None

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids: only plain data is allowed")


def _check_plain(obj, depth=0):
    if depth > 8:
        raise ExtractError("pickle nests deeper than plain dictionaries do")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            _check_plain(key, depth + 1)
            _check_plain(value, depth + 1)
        return
    if isinstance(obj, (list, tuple, set, frozenset)):
        for item in obj:
            _check_plain(item, depth + 1)
        return
    raise ExtractError(f"pickle holds a {type(obj).__name__}, expected only containers, strings and numbers")


def load_plain_pickle(path: str | Path) -> object:
    """Unpickle `path`, which must hold only dicts/lists/tuples/sets of str, int, float, bool, None.

    Numeric numpy scalars are accepted and returned as Python numbers. Raises `ExtractError` (nothing is
    executed) for anything else.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ExtractError(f"cannot read dictionary {path}: {err}") from err
    try:
        obj = _PlainDataUnpickler(io.BytesIO(data)).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise ExtractError(f"{path} is not a plain-data pickle ({err}); refusing to load it") from err
    _check_plain(obj)
    return obj


def load_plain_dict(path: str | Path, value_types: tuple[type, ...], what: str) -> dict:
    """Load a pickle that must be a dict of str keys to values of `value_types` (e.g. a token dictionary)."""
    obj = load_plain_pickle(path)
    if not isinstance(obj, dict) or not obj:
        raise ExtractError(f"{path}: expected a non-empty dict ({what}), found {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, str) or isinstance(value, bool) or not isinstance(value, value_types):
            names = "/".join(t.__name__ for t in value_types)
            raise ExtractError(
                f"{path}: {what} must map str to {names}; found {key!r}: {type(value).__name__}"
            )
    return obj
