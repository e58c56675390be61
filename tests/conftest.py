"""Test setup: 8 simulated CPU devices, strict JAX numerics and one persistent compilation cache for the whole
run, set before JAX is imported.

The compilation cache: every `train()` call, CLI subprocess and benchmark script jits its step afresh, and most
of them compile the same programs; JAX's persistent cache serves the repeats from disk. The environment
variables below are read by JAX at import in this process and inherited by every subprocess a test starts
(README blocks, CLI runs, multi-process workers), so they all share the cache. By default the cache is a fresh
folder per test run, removed at the end; set JAX_COMPILATION_CACHE_DIR to keep one between runs.
"""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxsae-tests-jax-cache-")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the tests' programs are small but many
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"  # cache every size, on any filesystem

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def pbmc_cells():
    """scanpy's pbmc68k_reduced as raw counts (700 cells x 765 genes, obs bulk_labels; `extract.demo.pbmc_counts`),
    built once per run. Shared: tests that change it work on `pbmc_cells.copy()`."""
    from extract.demo import pbmc_counts

    return pbmc_counts()


SWEEP_D, SWEEP_N = 16, 64  # the sweep tests' tiny dictionaries: d_model, n_latents


@pytest.fixture(scope="session")
def sweep_store(tmp_path_factory):
    """A small synthetic store (4,096 rows, d 16) for the sweep tests, built once per run."""
    from jaxsae.data.synthetic import SynthConfig, synthesize

    return synthesize(tmp_path_factory.mktemp("sweep") / "store",
                      SynthConfig(rows=4_096, d_model=SWEEP_D, n_features=48, active_per_row=3))


@pytest.fixture(scope="session")
def sweep_spec(sweep_store):
    """write(folder, grid, extra="", base="") -> the path of a spec "t": 12 steps of d 16 / 64 latents on
    `sweep_store`, with the given [grid] lines, top-level entries and [base] settings."""
    def write(folder, grid: str, extra: str = "", base: str = "") -> str:
        path = folder / "spec.toml"
        path.write_text(f"""name = "t"
{extra}
[base]
steps = 12
log_every = 4
progress = false
{base}
[base.sae]
d_model = {SWEEP_D}
n_latents = {SWEEP_N}
[base.data]
store = "{sweep_store}"
batch_rows = 256
[grid]
{grid}
""")
        return str(path)

    return write


@pytest.fixture
def slurm(tmp_path, monkeypatch):
    """A running one-node SLURM cluster for this test (tests/slurm_cluster.py); yields the folder of its logs."""
    from slurm_cluster import running_cluster

    with running_cluster(tmp_path / "slurm", monkeypatch) as root:
        yield root
