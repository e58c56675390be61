"""Benchmark: one full TopK training step (sparse and dense paths) vs one dense encoder matmul, same process.

    .venv/bin/python experiments/bench_train.py [--d 512 --n 16384 --k 32 --batch 4096 --arch topk]

Prints rows/s of the jitted, donated trainer step (the real `make_train_step`, one device) for the sparse
(gather/scatter) and dense-reference decode paths, and the ratio step_time / matmul_time where the matmul is
`[batch, d] @ [d, n]` in float32 — the cost floor of any SAE step. Target: sparse TopK step <= 2x matmul.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsae.sae.base import SAEConfig
from jaxsae.train import mesh as mesh_lib
from jaxsae.train.config import DataConfig, MeshConfig, TrainConfig
from jaxsae.train.step import hparam_arrays, init_state, make_train_step


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` (which must block) over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_step(cfg: TrainConfig, x: np.ndarray, repeats: int) -> float:
    mesh = mesh_lib.make_mesh(cfg.mesh, jax.devices()[:1])
    state = init_state(cfg, mesh, np.zeros(cfg.sae.d_model, np.float32), 1.0)
    step = make_train_step(cfg, mesh, state)
    hp = {k: jax.device_put(v, NamedSharding(mesh, P("ens"))) for k, v in hparam_arrays(cfg).items()}
    xb = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    holder = [state]

    def run():
        holder[0], _ = step(holder[0], xb, hp)
        holder[0].step.block_until_ready()

    return timed(run, repeats)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--auxk", action="store_true", help="every latent counts as dead: AuxK runs every step")
    ap.add_argument("--members", type=int, default=1, help="ensemble members trained in one vmapped step")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.d)).astype(np.float32) / np.sqrt(args.d)
    w = rng.standard_normal((args.d, args.n)).astype(np.float32)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    matmul = jax.jit(lambda a, b: a @ b)
    t_mm = timed(lambda: matmul(xj, wj).block_until_ready(), args.repeats)

    base = TrainConfig(
        run_dir="unused", sae=SAEConfig(architecture=args.arch, d_model=args.d, n_latents=args.n, k=args.k,
                                        dead_after_rows=1 if args.auxk else 10_000_000),
        data=DataConfig(store="unused", batch_rows=args.batch), mesh=MeshConfig(data=1), steps=10_000,
        members=tuple({} for _ in range(args.members)),
    )
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.arch} d={args.d} n={args.n} "
          f"k={args.k} batch={args.batch} members={args.members}{' with AuxK every step' if args.auxk else ''}")
    print(f"dense encoder matmul [{args.batch},{args.d}]@[{args.d},{args.n}]: {t_mm * 1e3:.1f} ms")
    for name, sparse in (("sparse", True), ("dense", False)):
        cfg = dataclasses.replace(base, sae=dataclasses.replace(base.sae, sparse_decode=sparse))
        t = bench_step(cfg, x, args.repeats)
        print(f"{name:6s} step: {t * 1e3:8.1f} ms  {args.batch / t:12,.0f} rows/s  "
              f"{args.batch * args.members / t:12,.0f} member-rows/s  step/(members x matmul) = "
              f"{t / (t_mm * args.members):.2f}")


if __name__ == "__main__":
    main()
