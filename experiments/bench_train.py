"""Benchmark: one full TopK training step (sparse and dense paths) vs one dense encoder matmul, same process.

    .venv/bin/python experiments/bench_train.py [--d 512 --n 16384 --k 32 --batch 4096 --arch topk]
                                                [--compute_dtype bfloat16]   (bf16 matmul inputs: for GPUs/TPUs)

Prints rows/s of the jitted, donated trainer step (the real `jaxsae.train.step.make_train_step`, one device) for the sparse
(gather/scatter) and dense-reference decode paths, and the ratio step_time / matmul_time where the matmul is
`[batch, d] @ [d, n]` with the step's compute_dtype inputs, float32 out — the cost floor of any SAE step.
The matmul and the steps are timed in interleaved rounds (matmul, sparse step, dense step, repeated), and the
ratio is the median over rounds of each round's step / matmul, so a host whose load changes during the run
slows both sides of a ratio alike. Target (issue 9): sparse TopK step <= 1.3x matmul.
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


def seconds(fn) -> float:
    """Wall seconds of one `fn()` (which must block)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def interleaved(fns: dict, rounds: int) -> dict[str, np.ndarray]:
    """name -> [rounds] seconds of each fn, one call of each per round in turn, after one warm-up call each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(seconds(fn))
    return {name: np.asarray(t) for name, t in times.items()}


def step_runner(sae: SAEConfig, members: int, x: np.ndarray):
    """A function that runs one jitted, donated train step of `sae` (E = members, one device) on rows x and blocks."""
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

    return run


def bench_step(sae: SAEConfig, members: int, x: np.ndarray, repeats: int) -> float:
    """Median seconds of one train step (see `step_runner`) over `repeats` runs after one warm-up."""
    return float(np.median(interleaved({"step": step_runner(sae, members, x)}, repeats)["step"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    ap.add_argument("--auxk", action="store_true", help="every latent counts as dead: AuxK runs every step")
    ap.add_argument("--members", type=int, default=1, help="ensemble members trained in one vmapped step")
    ap.add_argument("--compute_dtype", default="float32", help="sae.compute_dtype: float32 | bfloat16")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch, args.d)).astype(np.float32) / np.sqrt(args.d)
    w = rng.standard_normal((args.d, args.n)).astype(np.float32)
    xj, wj = jnp.asarray(x), jnp.asarray(w)
    matmul = jax.jit(lambda a, b: sae_matmul(a, b, args.compute_dtype))

    sae = SAEConfig(architecture=args.arch, d_model=args.d, n_latents=args.n, k=args.k,
                    dead_after_rows=1 if args.auxk else 10_000_000, compute_dtype=args.compute_dtype)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; {args.arch} d={args.d} n={args.n} "
          f"k={args.k} batch={args.batch} members={args.members} {args.compute_dtype}{' with AuxK every step' if args.auxk else ''}")
    times = interleaved({"matmul": lambda: matmul(xj, wj).block_until_ready(),
                         **{name: step_runner(dataclasses.replace(sae, sparse_decode=sparse), args.members, x)
                            for name, sparse in (("sparse", True), ("dense", False))}}, args.repeats)
    t_mm = times["matmul"]
    print(f"dense encoder matmul [{args.batch},{args.d}]@[{args.d},{args.n}] ({args.compute_dtype} inputs): "
          f"{np.median(t_mm) * 1e3:.1f} ms (median of {args.repeats} rounds)")
    for name in ("sparse", "dense"):
        t, ratios = np.median(times[name]), times[name] / (t_mm * args.members)
        print(f"{name:6s} step: {t * 1e3:8.1f} ms  {args.batch / t:12,.0f} rows/s  "
              f"{args.batch * args.members / t:12,.0f} member-rows/s  step/(members x matmul) = "
              f"{np.median(ratios):.2f} (rounds {ratios.min():.2f}-{ratios.max():.2f})")


if __name__ == "__main__":
    main()
