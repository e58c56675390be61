"""Benchmark: one full TopK training step (sparse and dense paths) vs one dense encoder matmul, same process.

    .venv/bin/python experiments/bench_train.py [--d 512 --n 16384 --k 32 --batch 4096 --arch topk]
                                                [--compute_dtype bfloat16]   (bf16 matmul inputs: for GPUs/TPUs)

Prints rows/s of the jitted, donated trainer step (the real `jaxsae.train.step.make_train_step`, one device) for the sparse
(gather/scatter) and dense-reference decode paths, and the ratio step_time / matmul_time where the matmul is
`[batch, d] @ [d, n]` with the step's compute_dtype inputs, float32 out — the cost floor of any SAE step.
Target: sparse TopK step <= 2x matmul.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxsae.sae.base import SAEConfig, build, hparams_as_arrays
from jaxsae.sae.common import matmul as sae_matmul
from jaxsae.train import mesh as mesh_lib
from jaxsae.train.config import MeshConfig, OptimConfig
from jaxsae.train.optim import make_optimizer
from jaxsae.train.state import MemberSettings, init_state
from jaxsae.train.step import make_train_step


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` (which must block) over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def bench_step(sae: SAEConfig, members: int, x: np.ndarray, repeats: int) -> float:
    arch = build(sae)
    tx = make_optimizer(OptimConfig(), 10_000, arch, mesh_lib.MESH_AXES.latent)
    mesh = mesh_lib.make_mesh(MeshConfig(data=1), jax.devices()[:1])
    state = init_state(arch, tx, mesh, np.arange(members, dtype=np.uint32), np.zeros(sae.d_model, np.float32), 1.0)
    step = make_train_step(arch, tx, mesh, dead_after_rows=sae.dead_after_rows)
    settings = MemberSettings(hparams_as_arrays(arch, [arch.default_hparams] * members, np),
                              np.full(members, OptimConfig().lr, np.float32))
    settings = jax.device_put(settings, NamedSharding(mesh, P("ens")))
    xb = jax.device_put(x, NamedSharding(mesh, P("data", None)))
    holder = [state]

    def run():
        holder[0], _ = step(holder[0], xb, settings)
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
    ap.add_argument("--compute_dtype", default="float32", help="sae.compute_dtype: float32 | bfloat16")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.d)).astype(np.float32) / np.sqrt(args.d)
    w = rng.standard_normal((args.d, args.n)).astype(np.float32)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    matmul = jax.jit(lambda a, b: sae_matmul(a, b, args.compute_dtype))
    t_mm = timed(lambda: matmul(xj, wj).block_until_ready(), args.repeats)

    sae = SAEConfig(architecture=args.arch, d_model=args.d, n_latents=args.n, k=args.k,
                    dead_after_rows=1 if args.auxk else 10_000_000, compute_dtype=args.compute_dtype)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.arch} d={args.d} n={args.n} "
          f"k={args.k} batch={args.batch} members={args.members} {args.compute_dtype}{' with AuxK every step' if args.auxk else ''}")
    print(f"dense encoder matmul [{args.batch},{args.d}]@[{args.d},{args.n}] ({args.compute_dtype} inputs): "
          f"{t_mm * 1e3:.1f} ms")
    for name, sparse in (("sparse", True), ("dense", False)):
        t = bench_step(dataclasses.replace(sae, sparse_decode=sparse), args.members, x, args.repeats)
        print(f"{name:6s} step: {t * 1e3:8.1f} ms  {args.batch / t:12,.0f} rows/s  "
              f"{args.batch * args.members / t:12,.0f} member-rows/s  step/(members x matmul) = "
              f"{t / (t_mm * args.members):.2f}")


if __name__ == "__main__":
    main()
