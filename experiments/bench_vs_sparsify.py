"""Benchmark: jaxsae's trainer vs EleutherAI sparsify's, same data, shapes and schedule, interleaved rounds.

    .venv/bin/python experiments/bench_vs_sparsify.py [--d 512 --n 8192 --k 32 --batch 4096 --steps 64 --rounds 3]

sparsify (eai-sparsify 1.3.3, torch) comes with the `interop` extra (`pip install 'jaxsae[interop]'`), which is
all this script needs besides jaxsae. Each round runs jaxsae, then sparsify, each in a fresh child process
(this script with --child), so every figure is one trainer's own:

- rows/s: training rows over the wall time of steps warmup+1..steps (the first `--timing_warmup` steps hold
  jaxsae's compilation and torch's first-touch allocations and are left out of both).
- held-out FVU: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the same `--heldout` rows (rows after the
  training rows of the same synthetic distribution), after the same number of steps, computed in numpy from
  each trainer's reconstruction of the raw rows.
- peak RSS: the child's VmHWM (imports, data and all), after training and, in brackets, after the
  imports alone (the held-out evaluation comes after both readings).

Both trainers see the same rows once each (jaxsae in its block-shuffled order from an activation store,
sparsify in order from a .npy memmap of the same rows, so the sparsify child never imports jax), TopK with
no AuxK (no latent can be dead within 64 steps at the default `dead_after_rows`), float32, Adam at the same
learning rate (default: sparsify's own choice 2e-4 / sqrt(n / 2^14)), linear warmup over `--warmup` steps then
a linear decay to 0 (jaxsae: decay_fraction 1, the product of the two ramps; sparsify: transformers'
get_linear_schedule_with_warmup, as its Trainer). sparsify's step is its Trainer's FVU step without the
language model: decoder rows renormalised, forward (FVU loss), backward, gradient parallel to the decoder
rows removed, Adam, scheduler, the fired-latent bookkeeping. jaxsae runs its real `train()`, data stream,
metrics and final checkpoint included. Differences that remain: jaxsae scales inputs to unit mean squared
norm (folded back into the saved dictionary) and minimises the MSE, sparsify the FVU of raw rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROWS_FILE, HELDOUT_FILE, STORE_DIR = "train_rows.npy", "heldout_rows.npy", "store"


def fvu(x: np.ndarray, x_hat: np.ndarray) -> float:
    """Fraction of variance unexplained: x, x_hat [H, d] -> sum ||x - x_hat||^2 / sum ||x - mean_rows(x)||^2."""
    x64 = x.astype(np.float64)
    return float(np.sum((x64 - x_hat) ** 2) / np.sum((x64 - x64.mean(0)) ** 2))


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB: Linux's VmHWM, which starts afresh at exec (ru_maxrss does
    not: a child forked from a large parent starts at the parent's size)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def make_data(folder: str, args: argparse.Namespace) -> None:
    """Training rows (a jaxsae store and a .npy of the same rows) and held-out rows, synthetic, in `folder`."""
    from jaxsae.data.synthetic import SynthConfig, synth_rows, synthesize

    train_rows = args.steps * args.batch
    synth = SynthConfig(rows=train_rows, d_model=args.d, n_features=args.features, active_per_row=16.0)
    synthesize(os.path.join(folder, STORE_DIR), synth, chunk=args.batch)
    rows = np.lib.format.open_memmap(os.path.join(folder, ROWS_FILE), "w+", np.float32, (train_rows, args.d))
    for start in range(0, train_rows, args.batch):
        rows[start:start + args.batch] = synth_rows(synth, start, start + args.batch)
    rows.flush()
    del rows
    np.save(os.path.join(folder, HELDOUT_FILE), synth_rows(synth, train_rows, train_rows + args.heldout))


def child_jaxsae(folder: str, args: argparse.Namespace) -> dict:
    import jaxsae

    rss_imports = peak_rss_mb()
    run_dir = os.path.join(folder, f"jaxsae-run-{os.getpid()}")
    cfg = jaxsae.load_config(None, [
        f"data.store={os.path.join(folder, STORE_DIR)}", f"run_dir={run_dir}", f"steps={args.steps}",
        f"data.batch_rows={args.batch}", f"log_every={args.timing_warmup}", "progress=false",
        "sae.architecture=topk", f"sae.d_model={args.d}", f"sae.n_latents={args.n}", f"sae.k={args.k}",
        f"optim.lr={args.lr}", f"optim.warmup_steps={args.warmup}", "optim.decay_fraction=1.0",
        *args.jaxsae_override,
    ])
    result = jaxsae.fit(cfg)
    rss_trained = peak_rss_mb()
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    timed = [r for r in records if r.get("member") == 0 and r["step"] > args.timing_warmup]
    seconds = sum(args.timing_warmup * args.batch / r["rows_per_s"] for r in timed)
    heldout = np.load(os.path.join(folder, HELDOUT_FILE))
    d = jaxsae.load(result.dictionaries[0])
    x_hat = d.decode(d.encode(heldout))
    return {"rows_per_s": len(timed) * args.timing_warmup * args.batch / seconds, "fvu": fvu(heldout, x_hat),
            "rss_imports_mb": rss_imports, "rss_trained_mb": rss_trained}


def child_sparsify(folder: str, args: argparse.Namespace) -> dict:
    import torch
    from sparsify import SparseCoder, SparseCoderConfig
    from transformers import get_linear_schedule_with_warmup

    rss_imports = peak_rss_mb()
    torch.manual_seed(0)
    rows = np.load(os.path.join(folder, ROWS_FILE), mmap_mode="r")
    sae = SparseCoder(args.d, SparseCoderConfig(num_latents=args.n, k=args.k), "cpu", dtype=torch.float32)
    adam = torch.optim.Adam(sae.parameters(), lr=args.lr)
    scheduler = get_linear_schedule_with_warmup(adam, args.warmup, args.steps)
    since_fired = torch.zeros(args.n, dtype=torch.long)
    did_fire = torch.zeros(args.n, dtype=torch.bool)
    t_start = None
    for step in range(args.steps):
        if step == args.timing_warmup:
            t_start = time.perf_counter()
        x = torch.from_numpy(np.array(rows[step * args.batch:(step + 1) * args.batch]))
        if step == 0:  # as sparsify's Trainer: b_dec starts at the first batch's mean
            sae.b_dec.data = x.mean(0)
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=None)
        did_fire[out.latent_indices.flatten()] = True
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        adam.step()
        adam.zero_grad()
        scheduler.step()
        with torch.no_grad():
            since_fired += x.shape[0]
            since_fired[did_fire] = 0
            did_fire.zero_()
    seconds = time.perf_counter() - t_start
    rss_trained = peak_rss_mb()
    heldout = np.load(os.path.join(folder, HELDOUT_FILE))
    sae.set_decoder_norm_to_unit_norm()  # as its Trainer before saving: the dictionary users get
    with torch.no_grad():
        x_hat = sae(torch.from_numpy(heldout)).sae_out.numpy()
    return {"rows_per_s": (args.steps - args.timing_warmup) * args.batch / seconds, "fvu": fvu(heldout, x_hat),
            "rss_imports_mb": rss_imports, "rss_trained_mb": rss_trained}


def run_child(trainer: str, folder: str, argv: list[str]) -> dict:
    """One trainer in a fresh process; its result line (rows_per_s, fvu, rss_imports_mb, rss_trained_mb) parsed."""
    done = subprocess.run([sys.executable, __file__, "--child", trainer, "--folder", folder, *argv],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--timing_warmup", type=int, default=8, help="steps left out of rows/s; divides --steps")
    ap.add_argument("--warmup", type=int, default=8, help="learning-rate warmup steps, both trainers")
    ap.add_argument("--lr", type=float, default=None, help="default: sparsify's 2e-4 / sqrt(n / 2^14)")
    ap.add_argument("--features", type=int, default=4096, help="true features of the synthetic data")
    ap.add_argument("--heldout", type=int, default=4096)
    ap.add_argument("--jaxsae_override", nargs="*", default=[],
                    help="extra jaxsae config overrides, e.g. data.prefetch=1 (memory experiments)")
    ap.add_argument("--child", choices=("jaxsae", "sparsify"), help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.lr is None:
        args.lr = 2e-4 / (args.n / 2 ** 14) ** 0.5
    if args.steps % args.timing_warmup or args.steps <= args.timing_warmup:
        ap.error(f"--timing_warmup {args.timing_warmup} must divide --steps {args.steps} and be smaller")

    if args.child:
        out = (child_jaxsae if args.child == "jaxsae" else child_sparsify)(args.folder, args)
        print(json.dumps(out))
        return

    print(f"TopK d={args.d} n={args.n} k={args.k} batch={args.batch} steps={args.steps} fp32 Adam lr={args.lr:.3g}; "
          f"rows/s over steps {args.timing_warmup + 1}..{args.steps}; held-out FVU on {args.heldout} rows")
    with tempfile.TemporaryDirectory() as folder:
        make_data(folder, args)
        for r in range(args.rounds):
            ours = run_child("jaxsae", folder, sys.argv[1:])
            theirs = run_child("sparsify", folder, sys.argv[1:])
            print(f"round {r + 1}: " + " | ".join(
                f"{name} {out['rows_per_s']:9,.0f} rows/s  FVU {out['fvu']:.4f}  peak RSS "
                f"{out['rss_trained_mb']:6,.0f} MB ({out['rss_imports_mb']:,.0f} after imports)"
                for name, out in (("jaxsae", ours), ("sparsify", theirs)))
                + f" | rows/s ratio {ours['rows_per_s'] / theirs['rows_per_s']:.2f}", flush=True)


if __name__ == "__main__":
    main()
