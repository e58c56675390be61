"""Benchmark: encoding a whole store into sparse codes (peak memory, rows/s), and sparse vs dense encode.

    python experiments/bench_encode.py [--rows 1000000] [--cache DIR] [--n-latents 16384] [--k 32]

Inputs, built once and reused from --cache (default: a temporary folder): a synthetic store of --rows rows,
d_model 128 (`jaxsae.synthesize`), and a TopK dictionary of --n-latents latents, k = --k, initialised (not
trained) and written with the real `save_dictionary`.

Measured in a fresh child process, so its peak RSS is the encoding's alone (JAX import included):
  1. `encode_store(store, dictionary)` over every row: wall time, rows/s, peak RSS (getrusage ru_maxrss,
     read before step 2), non-zeros. The one-off XLA compilation is paid first, on the first 8,192 rows.
  2. On the same first --compare-rows rows (65,536), already in RAM: sparse = `Dictionary.encode(x,
     sparse=True)` (CSR on the host); dense = `Dictionary.encode(block, sparse=False)` on 4,096-row blocks,
     i.e. the dense path with its latents copied to a host ndarray, each block dropped after the copy (keeping
     all of them would need n_latents * 4 bytes per row: 4 GiB here). Best of --repeats, interleaved.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

D_MODEL = 128
RSS_LIMIT_GB = 2.0


def build_inputs(cache: Path, rows: int, n_latents: int, k: int) -> tuple[Path, Path]:
    """(store, dictionary) under `cache`, made unless a previous run left them there."""
    import jax
    import jax.numpy as jnp

    import jaxsae
    from jaxsae.dictionary import save_dictionary
    from jaxsae.sae.base import SAEConfig, build

    store = cache / f"store_{rows}_d{D_MODEL}"
    try:
        reuse = jaxsae.open_store(store).n_rows == rows
    except jaxsae.StoreError:
        reuse = False
    if not reuse:
        t = time.perf_counter()
        jaxsae.synthesize(store, jaxsae.SynthConfig(rows=rows, d_model=D_MODEL, n_features=512, seed=0),
                          overwrite=True)
        print(f"built store {store} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    dictionary = cache / f"topk_n{n_latents}_k{k}"
    if not (dictionary / "config.json").is_file():
        cfg = SAEConfig(architecture="topk", d_model=D_MODEL, n_latents=n_latents, k=k)
        params = build(cfg).init(jax.random.key(0), jnp.zeros(D_MODEL))
        save_dictionary(dictionary, sae=cfg, params=params, buffers={}, hparams={"k": k}, scale=1.0)
    return store, dictionary


def measure(store: str, dictionary: str, compare_rows: int, repeats: int) -> dict:
    """Steps 1 and 2 of the module docstring, in this (fresh) process."""
    import numpy as np

    import jaxsae
    from jaxsae.analysis import encode_store

    d = jaxsae.load(dictionary)
    s = jaxsae.open_store(store)
    encode_store(s, d, progress=False, rows=slice(0, min(8192, s.n_rows)))  # compile
    t = time.perf_counter()
    codes = encode_store(s, d, progress=False).codes
    seconds = time.perf_counter() - t
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: kilobytes
    result = {"rows": s.n_rows, "seconds": seconds, "rows_per_s": s.n_rows / seconds, "peak_rss_gb": peak_gb,
              "nnz": int(codes.nnz), "csr_mb": (codes.data.nbytes + codes.indices.nbytes + codes.indptr.nbytes) / 1e6}
    del codes
    x = s.read_rows(0, min(compare_rows, s.n_rows))
    d.encode(x[:4096], sparse=True)
    d.encode(x[:4096], sparse=False)
    sparse_s, dense_s = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        d.encode(x, sparse=True)
        sparse_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        for lo in range(0, len(x), 4096):
            np.asarray(d.encode(x[lo : lo + 4096], sparse=False))
        dense_s.append(time.perf_counter() - t)
    result.update(compare_rows=len(x), sparse_rows_per_s=len(x) / min(sparse_s),
                  dense_rows_per_s=len(x) / min(dense_s))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cache", type=Path, default=None, help="folder that keeps the store and dictionary")
    parser.add_argument("--n-latents", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--compare-rows", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", nargs=2, metavar=("STORE", "DICTIONARY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.compare_rows, args.repeats)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or Path(tmp)
        cache.mkdir(parents=True, exist_ok=True)
        store, dictionary = build_inputs(cache, args.rows, args.n_latents, args.k)
        child = subprocess.run([sys.executable, __file__, "--measure", str(store), str(dictionary),
                                "--compare-rows", str(args.compare_rows), "--repeats", str(args.repeats)],
                               capture_output=True, text=True, env=os.environ)
        if child.returncode:
            sys.exit(child.stderr)
        r = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"store: {r['rows']:,} rows x d {D_MODEL}; dictionary: TopK n={args.n_latents:,} k={args.k} "
          f"(initialised); CPU devices: {os.cpu_count()}")
    print(f"encode_store: {r['seconds']:.1f} s, {r['rows_per_s']:,.0f} rows/s, peak RSS {r['peak_rss_gb']:.2f} GB "
          f"({'under' if r['peak_rss_gb'] < RSS_LIMIT_GB else 'OVER'} the {RSS_LIMIT_GB:g} GB limit), "
          f"{r['nnz']:,} non-zeros ({r['nnz'] / r['rows']:.1f} per row), CSR {r['csr_mb']:,.0f} MB")
    print(f"same {r['compare_rows']:,} rows in RAM: sparse {r['sparse_rows_per_s']:,.0f} rows/s, dense to host "
          f"{r['dense_rows_per_s']:,.0f} rows/s; sparse / dense throughput = "
          f"{r['sparse_rows_per_s'] / r['dense_rows_per_s']:.2f}")


if __name__ == "__main__":
    main()
