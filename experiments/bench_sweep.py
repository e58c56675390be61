"""Benchmark: what a vmapped pack of E members saves over training them one by one, same process.

    .venv/bin/python experiments/bench_sweep.py [--members 8 --steps 2000 --batch 1024 --large]

(a) steady-state member-rows/s of the E-member TopK step (the real `make_train_step` on one device, timed after
    compilation by `bench_train.bench_step`; E = 1 and E alternate, ROUNDS times, the fastest of each) over that of one member, at d 64 / 1,024 latents (and at
    d 512 / 8,192 latents with --large). 1.0 means a member in a pack costs what it costs alone.
(b) wall time of `jaxsae sweep run` for E small members (TopK d 64, 1,024 latents, k x lr) on a synthetic
    store, over E sequential `jaxsae train` runs of the same members (each a fresh process, as a user would
    run them): process start, compilation, data reading and training all included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from bench_train import bench_step
from jaxsae.data.synthetic import SynthConfig, synthesize
from jaxsae.sae.base import SAEConfig

KS, LRS = (8, 16, 32, 64), (1e-3, 3e-3)  # the members: k x lr, the first --members of them
ROUNDS = 3  # (a): E = 1 and E = members measured alternately this many times


def pack_throughput(d: int, n: int, k: int, batch: int, members: int, repeats: int) -> float:
    """(a): member-rows/s of an E-member step / that of one member, both measured here."""
    x = np.random.default_rng(0).standard_normal((batch, d)).astype(np.float32) / np.sqrt(d)
    sae = SAEConfig(architecture="topk", d_model=d, n_latents=n, k=k)
    times = {1: [], members: []}
    for _ in range(ROUNDS):  # interleaved, the fastest round of each: the host is shared and noisy
        for e in times:
            times[e].append(bench_step(sae, e, x, repeats))
    one, pack = min(times[1]), min(times[members])
    rows_one, rows_pack = batch / one, batch * members / pack
    print(f"(a) d={d} n={n} k={k} batch={batch}: E=1 {one * 1e3:.1f} ms/step ({rows_one:,.0f} member-rows/s), "
          f"E={members} {pack * 1e3:.1f} ms/step ({rows_pack:,.0f} member-rows/s); ratio {rows_pack / rows_one:.2f}")
    return rows_pack / rows_one


def _jaxsae(*args: str) -> float:
    """Wall seconds of one `jaxsae` command in a fresh process."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jaxsae.cli", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def sweep_vs_sequential(members: list[tuple[int, float]], steps: int, batch: int, folder: str) -> float:
    """(b): wall time of `jaxsae sweep run` for `members` / that of one `jaxsae train` per member."""
    store = synthesize(os.path.join(folder, "store"), SynthConfig(rows=65_536, d_model=64, n_features=256),
                       chunk=4_096)
    base = {"steps": steps, "log_every": steps, "progress": False, "data.store": store, "data.batch_rows": batch,
            "sae.d_model": 64, "sae.n_latents": 1024}
    spec = os.path.join(folder, "spec.toml")
    with open(spec, "w") as f:  # TOML: dotted keys nest, json spells its strings, numbers and booleans
        f.write('name = "bench"\n[base]\n' + "".join(f"{key} = {json.dumps(v)}\n" for key, v in base.items()) +
                f'[grid]\n"hparams.k" = {sorted({k for k, _ in members})}\n'
                f'"optim.lr" = {sorted({lr for _, lr in members})}\n')
    flags = [f"--{key}={v if isinstance(v, str) else json.dumps(v)}" for key, v in base.items()]
    swept = _jaxsae("sweep", "run", spec, "--out", os.path.join(folder, "sweep"), "--no_progress")
    alone = [_jaxsae("train", *flags, f"--sae.k={k}", f"--optim.lr={lr}", f"--run_dir={folder}/k{k}_lr{lr}")
             for k, lr in members]
    print(f"(b) {len(members)} members, d=64 n=1024, {steps} steps of {batch} rows: jaxsae sweep run {swept:.1f} s; "
          f"{len(members)} sequential jaxsae train runs {sum(alone):.1f} s ({', '.join(f'{t:.1f}' for t in alone)}); "
          f"ratio {swept / sum(alone):.2f}")
    return swept / sum(alone)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=8, choices=(2, 4, 8), help="E: members in the pack")
    ap.add_argument("--steps", type=int, default=2000, help="training steps of (b)")
    ap.add_argument("--batch", type=int, default=1024, help="rows per step, in (a) and (b)")
    ap.add_argument("--repeats", type=int, default=20, help="timed steps per measurement of (a)")
    ap.add_argument("--large", action="store_true", help="(a) at d 512 / 8,192 latents too")
    args = ap.parse_args()

    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s)); E={args.members}")
    pack_throughput(64, 1024, 16, args.batch, args.members, args.repeats)
    if args.large:
        pack_throughput(512, 8192, 32, args.batch, args.members, args.repeats)
    members = [(k, lr) for k in KS[:args.members // len(LRS)] for lr in LRS]
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as folder:
        sweep_vs_sequential(members, args.steps, args.batch, folder)


if __name__ == "__main__":
    main()
