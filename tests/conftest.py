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
