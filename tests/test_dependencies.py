"""The trainer installs and runs on the core dependencies alone: no anndata, torch, scanpy, h5py, transformers."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from test_cli_errors import ENV, REFUSE

REPO = Path(__file__).resolve().parent.parent
OPTIONAL = ("anndata", "torch", "scanpy", "h5py", "transformers")
TRAIN_WITHOUT_EXTRAS = REFUSE + """
import jaxsae
from jaxsae.cli import main
store, run_dir = sys.argv[1], sys.argv[2]
assert main(["synth", store, "--rows", "2048", "--d-model", "8", "--n-features", "16"]) == 0
assert main(["train", f"--data.store={store}", f"--run_dir={run_dir}", "--sae.d_model=8", "--sae.n_latents=16",
             "--sae.k=2", "--steps=4", "--log_every=2", "--no_progress", "--data.batch_rows=256"]) == 0
print("loaded:", sorted(BLOCKED & {name.split(".")[0] for name in sys.modules}))
"""


def test_synth_and_train_run_without_the_optional_packages(tmp_path):
    run = subprocess.run([sys.executable, "-c", TRAIN_WITHOUT_EXTRAS, ",".join(OPTIONAL), tmp_path / "store",
                          tmp_path / "run"], capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "loaded: []" in run.stdout
    assert (tmp_path / "run" / "run.json").is_file()
    assert (tmp_path / "run" / "dictionaries" / "member_000" / "dictionary.safetensors").is_file()


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0] for spec in requirements}


def test_what_the_code_imports_is_declared_where_it_is_used():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core, extras = _names(project["dependencies"]), {k: _names(v) for k, v in project["optional-dependencies"].items()}
    assert {"ml_dtypes", "flax"} <= core  # jaxsae.store.writer imports ml_dtypes; flax.struct in the trainer
    assert not set(OPTIONAL) & core  # the trainer needs none of them (test above)
    assert {"anndata", "h5py", "torch", "transformers", "scanpy"} <= extras["extract"]  # extract.counts reads h5py
    assert {"anndata", "scanpy", "matplotlib"} <= extras["analysis"]
    flax = next(s for s in project["dependencies"] if s.startswith("flax"))
    assert "==" not in flax, flax  # a range, not one release
