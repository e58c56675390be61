"""The main job end to end: AnnData -> model activations -> TopK dictionary (`make demo` runs this).

    .venv/bin/python experiments/quickstart.py                       # bundled data + the small demo Geneformer
    .venv/bin/python experiments/quickstart.py --model-kind scgpt    # bundled data + the small demo scGPT
    .venv/bin/python experiments/quickstart.py --model PATH --adata FILE [--layer L]   # your own checkpoint

Without --model, scanpy's bundled pbmc68k_reduced (700 PBMCs, raw counts recovered from raw.X, obs
`bulk_labels`) and a small demo model pretrained on those cells (weights shipped in extract/demo_weights/,
see extract/demo_pretrain.py) are assembled once and cached under --cache; the model is then loaded through
the same public loader as a downloaded checkpoint. Nothing is pretrained at run time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (Geneformer HF folder or scGPT folder); default: the demo model")
    ap.add_argument("--adata", help=".h5ad of raw counts; default: the demo cells")
    ap.add_argument("--layer", type=int, default=None, help="block whose residual stream to extract (default: middle)")
    ap.add_argument("--out", default="runs/quickstart", help="output folder (stores and the training run)")
    ap.add_argument("--cache", default=".cache/demo", help="where the demo data and model are cached")
    ap.add_argument("--n-latents", type=int, default=None, help="dictionary size (default: 8 x d_model)")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--model-kind", choices=["geneformer", "scgpt"], default="geneformer",
                    help="which demo model to use without --model (default: geneformer)")
    ap.add_argument("--pretrain-seconds", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.pretrain_seconds is not None:
        ap.error("--pretrain-seconds is gone: the demo models ship pretrained (extract/demo_weights/); "
                 "to pretrain one yourself run `python -m extract.demo_pretrain {geneformer,scgpt} OUT_DIR`")
    if (args.model is None) != (args.adata is None):
        ap.error("give both --model and --adata, or neither (for the bundled demo)")

    from extract.demo import prepare_demo
    from extract.errors import ExtractError
    from extract.models import load_model
    from extract.run import extract
    from jaxsae.errors import USER_ERRORS
    from jaxsae.store import open_store
    from jaxsae.train.config import make_config
    from jaxsae.train.loop import train

    t0 = time.perf_counter()
    try:
        if args.model is None:
            print(f"[1/3] demo data and the pretrained demo {args.model_kind} (cached in {args.cache})")
            adata_path, model_dir = prepare_demo(args.cache, model_kind=args.model_kind)
        else:
            adata_path, model_dir = args.adata, args.model
        layer = args.layer if args.layer is not None else load_model(model_dir).n_layers // 2

        print(f"[2/3] extracting layer {layer} activations of {adata_path}")
        stores = extract(adata_path, model_dir, os.path.join(args.out, "stores"), layers=[layer])
        store_path = str(stores[layer])
        store = open_store(store_path)

        run_dir = os.path.join(args.out, f"topk-layer{layer}-{time.strftime('%Y%m%d-%H%M%S')}")
        n_latents = args.n_latents or 8 * store.d_model
        print(f"[3/3] training a TopK dictionary: {store.n_rows:,} token rows, d={store.d_model}, "
              f"n_latents={n_latents}, k={args.k}")
        cfg = make_config({
            "run_dir": run_dir, "steps": args.steps, "log_every": 100,
            "sae": {"architecture": "topk", "d_model": store.d_model, "n_latents": n_latents, "k": args.k},
            "data": {"store": store_path, "batch_rows": min(2048, store.n_rows)},
            "optim": {"lr": 1e-3, "warmup_steps": 50},
        })
        result = train(cfg)
    except (ExtractError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    m = result.metrics[0]
    print()
    print(f"done in {time.perf_counter() - t0:,.0f} s")
    print(f"  activation store: {store_path}")
    print(f"  dictionary:       {result.dictionaries[0]}")
    print(f"  metrics:          {os.path.join(result.run_dir, 'metrics.jsonl')}")
    print(f"  final: fvu={m['fvu']:.3f} explained_variance={m['explained_variance']:.3f} l0={m['l0']:.1f} "
          f"dead={m['dead_fraction']:.3f}")
    print(f"  load it: import jaxsae; d = jaxsae.load({json.dumps(result.dictionaries[0])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
