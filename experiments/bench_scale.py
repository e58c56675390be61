"""Benchmark: the real train step on 1 vs 8 (simulated) devices, and per-device memory of a 1M-latent dictionary.

    .venv/bin/python experiments/bench_scale.py [--d 128 --n 8192 --k 16 --batch 4096 --arch topk]

Part 1 times the jitted, donated `make_train_step` (median of --repeats steps after a warm-up) on mesh
(1, 1, 1) and on 8 devices split on `data` (8, 1, 1) or on `latent` (1, 1, 8), and prints rows/s and the ratio
to one device. On a CPU host the 8 devices are simulated (`--xla_force_host_platform_device_count=8`) and
share the host's cores, so the ratio measures sharding overhead (collectives, smaller per-device kernels),
not a speed-up; on 8 real accelerators the same script measures scaling.

Part 2 compiles (never runs) the step for a dictionary of --big-n latents at --big-d on mesh (1, 1, 1) and
(1, 1, 8) from abstract arrays and prints XLA's per-device memory analysis: arguments (params, Adam state,
buffers, batch), temporaries, and their total, with the ratio unsharded / sharded.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import time  # noqa: E402
from typing import NamedTuple  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from jaxsae.train import mesh as mesh_lib  # noqa: E402
from jaxsae.sae.base import SAEConfig, build, hparams_as_arrays  # noqa: E402
from jaxsae.train.config import MeshConfig, OptimConfig  # noqa: E402
from jaxsae.train.optim import make_optimizer  # noqa: E402
from jaxsae.train.state import MemberSettings, init_state, state_specs  # noqa: E402
from jaxsae.train.step import make_train_step  # noqa: E402

GIB = 1024**3


class Case(NamedTuple):
    """One benchmarked step: the dictionary, the global batch rows and the (data, ens, latent) mesh shape."""

    sae: SAEConfig
    batch_rows: int
    shape: tuple[int, int, int]


def config(arch: str, d: int, n: int, k: int, batch: int, shape: tuple[int, int, int],
           sparse_decode: bool = True) -> Case:
    return Case(SAEConfig(architecture=arch, d_model=d, n_latents=n, k=k, sparse_decode=sparse_decode), batch, shape)


def step_parts(cfg: Case):
    """(arch, optimizer, mesh, jitted step, member settings on the mesh) for one member, 1,000 planned steps."""
    arch = build(cfg.sae)
    tx = make_optimizer(OptimConfig(), 1000, arch, mesh_lib.MESH_AXES.latent)
    mesh = mesh_lib.make_mesh(MeshConfig(*cfg.shape), jax.devices()[: int(np.prod(cfg.shape))])
    step = make_train_step(arch, tx, mesh, dead_after_rows=cfg.sae.dead_after_rows)
    settings = MemberSettings(hparams_as_arrays(arch, [arch.default_hparams], np),
                              np.full(1, OptimConfig().lr, np.float32))
    return arch, tx, mesh, step, settings


def step_seconds(cfg: Case, shape, repeats: int) -> float:
    """Median wall seconds of one train step on the first prod(shape) devices."""
    arch, tx, mesh, step, settings = step_parts(cfg)
    state = init_state(arch, tx, mesh, np.zeros(1, np.uint32), np.zeros(cfg.sae.d_model, np.float32), 1.0)
    hp = jax.device_put(settings, NamedSharding(mesh, P("ens")))
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.standard_normal((cfg.batch_rows, cfg.sae.d_model)).astype(np.float32),
                       NamedSharding(mesh, P("data", None)))
    state, m = step(state, x, hp)  # compile + warm-up
    m["loss"].block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        state, m = step(state, x, hp)
        m["loss"].block_until_ready()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def memory_per_device(cfg, shape) -> dict:
    """XLA's memory analysis of the compiled step (per device), from abstract arrays: nothing is allocated."""
    arch, tx, mesh, step, settings = step_parts(cfg)
    shapes = jax.eval_shape(lambda: init_state(arch, tx, mesh, np.zeros(1, np.uint32),
                                               np.zeros(cfg.sae.d_model, np.float32), 1.0))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, s)),
                         shapes, state_specs(shapes, arch, tx))
    hp = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=NamedSharding(mesh, P("ens"))),
                      settings)
    x = jax.ShapeDtypeStruct((cfg.batch_rows, cfg.sae.d_model), np.float32,
                             sharding=NamedSharding(mesh, P("data", None)))
    t = time.perf_counter()
    analysis = step.lower(state, x, hp).compile().memory_analysis()
    compile_s = time.perf_counter() - t
    out = {"arguments": analysis.argument_size_in_bytes, "outputs": analysis.output_size_in_bytes,
           "aliased": analysis.alias_size_in_bytes, "temporaries": analysis.temp_size_in_bytes}
    # Donated state: outputs alias the arguments, so the peak is arguments + temporaries + unaliased outputs.
    out["peak"] = out["arguments"] + out["temporaries"] + out["outputs"] - out["aliased"]
    out["compile_s"] = compile_s
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="topk")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--big-d", type=int, default=512)
    ap.add_argument("--big-n", type=int, default=1 << 20)
    ap.add_argument("--big-batch", type=int, default=1024)
    ap.add_argument("--dense-decode", action="store_true", help="time the dense reference decode path")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    print(f"jax {jax.__version__}, {jax.device_count()} {jax.devices()[0].platform} devices, "
          f"{os.cpu_count()} host cores")

    path = "dense" if args.dense_decode else "sparse"
    print(f"\n## step time: {args.arch} ({path} decode) d={args.d} n={args.n} k={args.k} batch={args.batch}")
    print(f"{'mesh (data, ens, latent)':<26}{'ms/step':>10}{'rows/s':>14}{'vs 1 device':>14}")
    base = None
    for shape in [(1, 1, 1), (8, 1, 1), (1, 1, 8), (2, 1, 4)]:
        if np.prod(shape) > jax.device_count():
            continue
        cfg = config(args.arch, args.d, args.n, args.k, args.batch, shape, not args.dense_decode)
        seconds = step_seconds(cfg, shape, args.repeats)
        base = base or seconds
        print(f"{str(shape):<26}{seconds * 1e3:>10.1f}{args.batch / seconds:>14,.0f}{base / seconds:>13.2f}x")

    if args.skip_memory:
        return
    print(f"\n## per-device memory (compiled, not run): {args.arch} d={args.big_d} n={args.big_n} "
          f"k={args.k} batch={args.big_batch}")
    print(f"{'mesh':<12}{'arguments':>12}{'temporaries':>13}{'peak':>10}{'compile s':>11}   (GiB per device)")
    peaks = {}
    for shape in [(1, 1, 1), (1, 1, 8)]:
        if np.prod(shape) > jax.device_count():
            continue
        mem = memory_per_device(config(args.arch, args.big_d, args.big_n, args.k, args.big_batch, shape), shape)
        peaks[shape] = mem["peak"]
        print(f"{str(shape):<12}{mem['arguments'] / GIB:>12.2f}{mem['temporaries'] / GIB:>13.2f}"
              f"{mem['peak'] / GIB:>10.2f}{mem['compile_s']:>11.1f}")
    if len(peaks) == 2:
        print(f"unsharded / sharded peak per device: {peaks[(1, 1, 1)] / peaks[(1, 1, 8)]:.2f}x (8 shards)")


if __name__ == "__main__":
    main()
