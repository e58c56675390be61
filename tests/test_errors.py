"""The error family (jaxsae.errors) and the package rooms: who may import whom, where errors are defined."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import jaxsae
from jaxsae import errors

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("ConfigError", "StoreError", "CheckpointError", "LockError", "TrainingError", "DictionaryError",
            "AnalysisError", "ExtractError", "SchedulerError")
SPECIFIC = {"StoreWriteError": "StoreError", "FolderLockedError": "LockError", "RunLockedError": "LockError",
            "NonFiniteError": "TrainingError"}
# What extract/ may import of jaxsae (DESIGN.md, rooms): the store, the dictionary, and leaf modules.
# jaxsae.slurm: the scheduler code `jaxsae extract --launch slurm` shares with `jaxsae sweep launch` (no JAX in it)
EXTRACT_MAY_IMPORT = ("jaxsae.store", "jaxsae.dictionary", "jaxsae.errors", "jaxsae.atomic", "jaxsae.differences",
                      "jaxsae.validation", "jaxsae.flags", "jaxsae.sae.portable", "jaxsae.slurm")
LEAF_MODULES = ("errors.py", "atomic.py", "differences.py", "validation.py")


def _imports(path: Path) -> list[str]:
    """Every module `path` imports (absolute names), wherever the import statement sits."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_every_family_is_a_jaxsae_error_and_a_value_error():
    for name in FAMILIES:
        family = getattr(errors, name)
        assert issubclass(family, errors.JaxsaeError) and issubclass(family, ValueError), name
        assert getattr(jaxsae, name) is family  # the public API
    assert jaxsae.JaxsaeError is errors.JaxsaeError
    for name, family in SPECIFIC.items():
        assert issubclass(getattr(errors, name), getattr(errors, family)), name
    assert not issubclass(errors.CheckpointError, errors.ConfigError)  # no longer the tangle of before
    assert not issubclass(errors.NonFiniteError, errors.ConfigError)


def test_the_old_import_locations_name_the_same_classes():
    from extract.errors import ExtractError
    from jaxsae.analysis import AnalysisError
    from jaxsae.dictionary import DictionaryError
    from jaxsae.sae.base import ConfigError
    from jaxsae.store import FolderLockedError, StoreError, StoreWriteError
    from jaxsae.train.checkpoint import CheckpointError
    from jaxsae.train.lock import RunLockedError
    from jaxsae.train.loop import NonFiniteError

    for cls in (ExtractError, AnalysisError, DictionaryError, ConfigError, FolderLockedError, StoreError,
                StoreWriteError, CheckpointError, RunLockedError, NonFiniteError):
        assert getattr(errors, cls.__name__) is cls


def test_each_error_class_is_defined_once_in_the_leaf_module():
    defined = {}
    for path in [*(REPO / "jaxsae").rglob("*.py"), *(REPO / "extract").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                defined.setdefault(node.name, []).append(str(path.relative_to(REPO)))
    assert defined and all(places == ["jaxsae/errors.py"] for places in defined.values()), defined


def test_jaxsae_never_imports_extract():
    offenders = [f"{path.relative_to(REPO)}: {name}" for path in (REPO / "jaxsae").rglob("*.py")
                 for name in _imports(path) if name == "extract" or name.startswith("extract.")]
    assert offenders == []


def test_extract_imports_only_the_allowed_jaxsae_modules():
    seen, offenders = set(), []
    for path in (REPO / "extract").rglob("*.py"):
        for name in _imports(path):
            if name == "jaxsae" or name.startswith("jaxsae."):
                seen.add(name)
                if not any(name == ok or name.startswith(ok + ".") for ok in EXTRACT_MAY_IMPORT):
                    offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert offenders == []
    assert {"jaxsae.store", "jaxsae.errors"} <= seen  # the scan sees extract's real imports


def test_leaf_modules_import_nothing_of_jaxsae():
    for name in LEAF_MODULES:
        assert [m for m in _imports(REPO / "jaxsae" / name) if m.split(".")[0] in ("jaxsae", "extract")] == [], name


def test_a_dictionary_refuses_input_of_the_wrong_width(tmp_path):
    from jaxsae.dictionary import load, save_dictionary
    from jaxsae.sae.base import SAEConfig

    d, n = 4, 8
    rng = np.random.default_rng(0)
    params = {"W_enc": rng.standard_normal((d, n)), "b_enc": np.zeros(n), "W_dec": rng.standard_normal((n, d)),
              "b_dec": np.zeros(d)}
    path = save_dictionary(tmp_path / "dict", sae=SAEConfig(architecture="topk", d_model=d, n_latents=n, k=2),
                           params=params, buffers={}, hparams={"k": 2}, scale=1.0)
    dictionary = load(path)
    assert dictionary.encode(np.ones((3, d)), sparse=False).shape == (3, n)
    with pytest.raises(errors.DictionaryError, match=r"x: expected shape \[rows, 4\], got \[3, 5\]"):
        dictionary.encode(np.ones((3, 5)))
    with pytest.raises(errors.DictionaryError, match="batch_rows"):
        dictionary.encode(np.ones((3, d)), batch_rows=0)
