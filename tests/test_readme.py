"""The README is executable documentation: every fenced code block runs, in order, as a user would type it.

A sandbox folder stands in for the user's clone: `experiments/` and `Makefile` link to the repository, and
the README's placeholders (`cells.h5ad`, `path/to/model`, ...) are tiny real files made here. Shell blocks
run line by line with the virtual environment's `bin/` first on PATH (so `jaxsae` is the installed console
script); Python blocks run as scripts; TOML blocks are config fragments, appended to the TopK example config
and trained on 8 simulated devices. Only sizes are shrunk (`SHRINK`: fewer steps, smaller benchmarks), each
rule must still match the README, and a block no runner understands fails the test.

Two chains of commands run side by side, each in README order: `make demo` with the blocks that read its output
(`runs/quickstart`), and every other block. They share no files, and on a 2-core machine the second core
otherwise idles while a chain waits on one single-threaded process after another.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # ~30 user commands in fresh processes, and `make demo`: ~80 s

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

# Placeholders of the README -> files made by the `sandbox` fixture (relative to it).
PLACEHOLDERS = {
    "path/to/model": "fixtures/geneformer",
    "PATH/TO/Geneformer": "fixtures/geneformer",
    "path/to/scgpt": "fixtures/scgpt",
    "cells.h5ad": "fixtures/cells.h5ad",
    "atlas-files/": "fixtures/atlas-files/",  # cells.h5ad's cells split over three files
}

# (pattern, replacement): sizes only. Each pattern must match the README somewhere (see test below).
SHRINK = [
    (r"^(jaxsae train \S+\.toml.*?)(\s+#.*)?$", r"\1 --steps 30 --log_every 10\2"),
    (r'("run_dir=runs/topk-py")\]', r'\1, "steps=30", "log_every=10"]'),
    (r"^(\.venv/bin/python experiments/quickstart\.py --model .*?)(\s+#.*)?$", r"\1 --steps 20 --out runs/qs\2"),
    (r"topk-layer2-n1024-k16-steps1000", "topk-layer2-n1024-k16-steps20"),  # the demo's run, trained 20 steps
    (r"\.cache/demo/pbmc68k_", "runs/demo-cache/pbmc68k_"),  # where the README's `make demo` caches the demo
    (r"^(jaxsae (?:eval|intervene) .*?)--cells 200", r"\1--cells 8"),
    (r"experiments/configs/sweep_topk\.toml", "fixtures/sweep_topk.toml"),  # the same spec, 20 steps
    (r"^(\.venv/bin/python experiments/bench_train\.py)(.*?)(\s+#.*)?$",
     r"\1\2 --d 32 --n 512 --k 8 --batch 256 --repeats 1\3"),
    (r"^(\.venv/bin/python experiments/bench_scale\.py)(.*?)(\s+#.*)?$",
     r"\1\2 --d 16 --n 256 --k 4 --batch 256 --repeats 1 --skip-memory\3"),
    (r"^(\.venv/bin/python experiments/bench_encode\.py)(.*?)(\s+#.*)?$",
     r"\1\2 --rows 20000 --n-latents 512 --k 8 --compare-rows 4096 --repeats 1\3"),
    (r"^(\.venv/bin/python experiments/bench_sweep\.py)(.*?)(\s+#.*)?$",
     r"\1\2 --members 2 --steps 10 --batch 256 --repeats 1\3"),
    (r"^(\.venv/bin/python experiments/bench_vs_sparsify\.py)(.*?)(\s+#.*)?$",
     r"\1\2 --d 16 --n 128 --k 4 --batch 128 --steps 16 --rounds 1 --features 64 --heldout 256\3"),
    (r"(--data\.store out-atlas/layer_4/tokens)", r"\1 --sae.d_model 16 --data.batch_rows 256"),
    # the SLURM script's extraction: as two array tasks, one after the other, on the CPU
    (r"^(jaxsae extract atlas-files/ .*? --device) cuda --compute_dtype bfloat16 (--no_progress_bar)$",
     r"for i in 0 1; do SLURM_ARRAY_TASK_ID=$i SLURM_ARRAY_TASK_COUNT=2 \1 cpu \2; done"),
    (r"^(\.venv/bin/python experiments/bench_extract\.py)(.*?)(\s+#.*)?$",
     r"\1\2 --cells 24 --genes 120 --n-layers 2 --d-model 16 --layers 1 --repeats 1\3"),
]


def readme_blocks() -> list[tuple[str, str, int]]:
    """(language, text, line number) of every fenced block of the README."""
    text = README.read_text()
    return [(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def shrink(text: str) -> str:
    for pattern, replacement in SHRINK:
        text = re.sub(pattern, replacement, text, flags=re.M)
    return text


def localise(text: str, sandbox: Path) -> str:
    for placeholder, target in PLACEHOLDERS.items():
        text = text.replace(placeholder, str(sandbox / target))
    return text.replace(".venv/bin/python", sys.executable)


def commands(block: str) -> list[str]:
    """The commands of a shell block: one per non-empty line, comments dropped."""
    out = []
    for line in block.splitlines():
        parts = shlex.split(line, comments=True)
        if parts:
            out.append(line)
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A user's clone as far as the README needs it, plus the files its placeholders name."""
    import anndata
    import numpy as np

    from extract.testing import write_counts_h5ad, write_geneformer_folder, write_scgpt_folder

    root = tmp_path_factory.mktemp("readme")
    for name in ("experiments", "Makefile", "pyproject.toml"):
        (root / name).symlink_to(REPO / name)
    (root / ".venv").symlink_to(Path(sys.prefix))
    fixtures = root / "fixtures"
    fixtures.mkdir()
    ids = [f"ENSG{i:011d}" for i in range(60)]
    import pandas as pd

    write_geneformer_folder(fixtures / "geneformer", ids, n_layers=6, d_model=16, n_heads=2, d_ff=32,
                            max_positions=64)
    symbols = [f"GENE{i}" for i in range(60)]
    write_scgpt_folder(fixtures / "scgpt", symbols, n_layers=2, d_model=16, n_heads=2, d_hid=32)
    cells = write_counts_h5ad(fixtures / "cells.h5ad", 40, symbols, mean=1.0,
                              var=pd.DataFrame({"ensembl_id": ids}, index=symbols))
    spec = (REPO / "experiments/configs/sweep_topk.toml").read_text()
    assert "steps = 2000" in spec
    (fixtures / "sweep_topk.toml").write_text(spec.replace("steps = 2000", "steps = 20"))
    # a user's AnnData usually carries its UMAP; the report computes one when it is missing (the demo's cells,
    # test_report_build.py) and that costs a numba compile per process, so this file brings its own
    adata = anndata.read_h5ad(cells)
    adata.obsm["X_umap"] = np.random.default_rng(0).normal(size=(adata.n_obs, 2))
    adata.write_h5ad(cells)
    (fixtures / "atlas-files").mkdir()
    for i, (start, stop) in enumerate([(0, 13), (13, 27), (27, adata.n_obs)]):
        adata[start:stop].copy().write_h5ad(fixtures / "atlas-files" / f"donor_{i}.h5ad")
    return root


def environment(sandbox: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}".rstrip(os.pathsep)
    env.pop("XLA_FLAGS", None)  # blocks run as a user's fresh processes do (one CPU device)
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run(command: str, sandbox: Path, env: dict, where: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, shell=True, cwd=sandbox, env=env, capture_output=True, text=True, timeout=900,
                          executable="/bin/bash")
    assert proc.returncode == 0, (
        f"README {where}: `{command}` exited {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n"
        f"--- stderr\n{proc.stderr[-3000:]}"
    )
    return proc


def run_make(command: str, sandbox: Path, env: dict, where: str) -> None:
    """`make demo` runs for real on a small budget (outputs in the sandbox); `make test` is this very suite,
    so its recipe is checked with a dry run instead of recursing."""
    target = command.split()[1]
    stamp = f"{sys.prefix}/.jaxsae-installed"  # never reinstall the environment the tests run in
    make = f"make -o {stamp} VENV={sys.prefix}"
    if target == "test":
        dry = run(f"{make} -n test", sandbox, env, where)
        assert re.search(r"python -m pytest", dry.stdout), dry.stdout
        return
    assert target == "demo", f"README {where}: no runner for `{command}`"
    args = "--cache runs/demo-cache --out runs/quickstart --steps 20"
    proc = run(f'{make} demo ARGS="{args}"', sandbox, env, where)
    assert "dictionary:" in proc.stdout and "activation store:" in proc.stdout, proc.stdout
    assert "best feature per bulk_labels" in proc.stdout and "CD19+ B: feature " in proc.stdout, proc.stdout


def run_toml(block: str, sandbox: Path, env: dict, where: str) -> None:
    """A config fragment: the TopK example with the fragment appended trains on 8 simulated devices."""
    config = sandbox / f"fragment_{where.replace(' ', '_')}.toml"
    base = (REPO / "experiments/configs/topk.toml").read_text()
    config.write_text(base + "\n" + block)
    env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    run(f"jaxsae train {config} --data.store runs/synth-store --run_dir runs/{config.stem} --steps 5 --log_every 5",
        sandbox, env, where)


def test_every_shrink_rule_still_matches_the_readme():
    text = README.read_text()
    for pattern, _ in SHRINK:
        assert re.search(pattern, text, flags=re.M), f"SHRINK rule {pattern!r} matches nothing in README.md"


def steps(block: str, language: str, line: int, sandbox: Path, env: dict) -> list[tuple[str, object]]:
    """(the command or block text, a function that runs it) for every step of a (shrunk, localised) block."""
    where = f"line {line}"
    if language in ("bash", "sh", "shell"):
        return [(command, (lambda c=command: (run_make if c.startswith("make ") else run)(c, sandbox, env, where)))
                for command in commands(block)]
    if language == "python":
        script = sandbox / f"block_{line}.py"
        script.write_text(block)
        return [(block, lambda: run(f"{sys.executable} {script}", sandbox, env, where))]
    if language == "toml":
        return [(block, lambda: run_toml(block, sandbox, env, where))]
    pytest.fail(f"README line {line}: a ```{language} block that no runner understands")


def run_in_order(chain: list) -> None:
    for _, step in chain:
        step()


def test_every_readme_block_runs(sandbox):
    env = environment(sandbox)
    blocks = readme_blocks()
    assert blocks, "README.md has no code blocks"
    every = [s for language, text, line in blocks
             for s in steps(localise(shrink(text), sandbox), language, line, sandbox, env)]
    demo = [s for s in every if s[0].startswith("make demo") or "runs/quickstart" in s[0]]
    rest = [s for s in every if s not in demo]
    assert demo and rest
    with ThreadPoolExecutor(max_workers=1) as side:
        demo_done = side.submit(run_in_order, demo)
        try:
            run_in_order(rest)
        finally:
            demo_done.result()
