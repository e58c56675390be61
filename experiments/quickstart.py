"""The main job end to end: AnnData -> model activations -> TopK dictionary -> biology (`make demo` runs this).

    .venv/bin/python experiments/quickstart.py                       # bundled data + the small demo Geneformer
    .venv/bin/python experiments/quickstart.py --model-kind scgpt    # bundled data + the small demo scGPT
    .venv/bin/python experiments/quickstart.py --model PATH --adata FILE [--layer L]   # your own checkpoint

Without --model, scanpy's bundled pbmc68k_reduced (700 PBMCs, raw counts recovered from raw.X, obs
`bulk_labels`) and a small demo model pretrained on those cells (weights shipped in extract/demo_weights/,
see extract/demo_pretrain.py and extract/pretraining/) are assembled once and cached under --cache; the model is then loaded through
the same public loader as a downloaded checkpoint. Nothing is pretrained at run time.

The run ends with the analysis (`jaxsae analyze`: OUT/analysis/ with cells x features, feature, gene, gene-set
and cell-type tables) and the HTML report (`jaxsae report`: OUT/report.html), and prints, per cell type of
--obs (bulk_labels for the demo cells), the best feature, its AUROC and its top genes.
The run folder is named after its settings (OUT/topk-layer2-n1024-k16-steps1000): a rerun with the same
settings reuses the finished dictionary, and an interrupted one resumes.
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
    ap.add_argument("--out", help="output folder (stores and the training run); default: runs/quickstart, or "
                    "runs/quickstart-scgpt for the demo scGPT (so both demos keep their stores)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace stores under --out that an earlier run extracted with other settings")
    ap.add_argument("--cache", default=".cache/demo", help="where the demo data and model are cached")
    ap.add_argument("--n-latents", type=int, default=None, help="dictionary size (default: 8 x d_model)")
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--model-kind", choices=["geneformer", "scgpt"], default="geneformer",
                    help="which demo model to use without --model (default: geneformer)")
    ap.add_argument("--obs", default=None,
                    help="categorical obs column to associate features with (default: bulk_labels for the demo "
                         "cells, none for your own)")
    ap.add_argument("--pretrain-seconds", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = "runs/quickstart-scgpt" if args.model is None and args.model_kind == "scgpt" else "runs/quickstart"
    if args.pretrain_seconds is not None:
        ap.error("--pretrain-seconds is gone: the demo models ship pretrained (extract/demo_weights/); "
                 "to pretrain one yourself run `python -m extract.demo_pretrain {geneformer,scgpt} OUT_DIR`")
    if (args.model is None) != (args.adata is None):
        ap.error("give both --model and --adata, or neither (for the bundled demo)")

    from extract.demo import prepare_demo
    from extract.models import load_model
    from extract.run import extract
    from jaxsae.analysis import analyze
    from jaxsae.errors import JaxsaeError
    from jaxsae.report import build_report
    from jaxsae.store import open_store
    from jaxsae.train import make_config
    from jaxsae.train.loop import train
    from jaxsae.train.run_folder import dictionary_dir, is_complete

    obs = args.obs if args.obs is not None or args.model is not None else "bulk_labels"

    t0 = time.perf_counter()
    try:
        if args.model is None:
            print(f"[1/4] demo data and the pretrained demo {args.model_kind} (cached in {args.cache})")
            adata_path, model_dir = prepare_demo(args.cache, model_kind=args.model_kind)
        else:
            adata_path, model_dir = args.adata, args.model
        layer = args.layer if args.layer is not None else load_model(model_dir).n_layers // 2

        print(f"[2/4] extracting layer {layer} activations of {adata_path}")
        stores = extract(adata_path, model_dir, os.path.join(args.out, "stores"), layers=[layer],
                         overwrite=args.overwrite)
        store_path = str(stores[layer])
        store = open_store(store_path)

        n_latents = args.n_latents or 8 * store.d_model
        run_dir = os.path.join(args.out, f"topk-layer{layer}-n{n_latents}-k{args.k}-steps{args.steps}")
        if is_complete(run_dir):
            print(f"[3/4] reusing the finished dictionary of {run_dir} (delete that folder to train again)")
            dictionary = dictionary_dir(run_dir, 0)
            with open(os.path.join(dictionary, "config.json")) as f:
                metrics = json.load(f)["metrics"]
        else:
            print(f"[3/4] training a TopK dictionary: {store.n_rows:,} token rows, d={store.d_model}, "
                  f"n_latents={n_latents}, k={args.k}")
            cfg = make_config({
                "run_dir": run_dir, "steps": args.steps, "log_every": 100,
                "sae": {"architecture": "topk", "d_model": store.d_model, "n_latents": n_latents, "k": args.k},
                "data": {"store": store_path, "batch_rows": min(2048, store.n_rows)},
                "optim": {"lr": 1e-3, "warmup_steps": 50},
            })
            result = train(cfg)
            dictionary, metrics = result.dictionaries[0], result.metrics[0]

        print(f"[4/4] analysis ({os.path.join(args.out, 'analysis')}) and report ({os.path.join(args.out, 'report.html')})")
        analysis = analyze(dictionary, store_path, os.path.join(args.out, "analysis"), adata=adata_path, obs=obs,
                           model_dir=model_dir, progress=False)
        report = build_report(run_dir, store_path, out=os.path.join(args.out, "report.html"),
                              analysis=analysis.analysis)  # the same encoding, not a second one
    except JaxsaeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    m = metrics
    print()
    print(f"done in {time.perf_counter() - t0:,.0f} s")
    print(f"  activation store: {store_path}")
    print(f"  dictionary:       {dictionary}")
    print(f"  metrics:          {os.path.join(run_dir, 'metrics.jsonl')}")
    print(f"  analysis:         {os.path.join(args.out, 'analysis')}")
    print(f"  report:           {report}")
    print(f"  final: fvu={m['fvu']:.3f} explained_variance={m['explained_variance']:.3f} l0={m['l0']:.1f} "
          f"dead={m['dead_fraction']:.3f}")
    print(f"  load it: import jaxsae; d = jaxsae.load({json.dumps(dictionary)})")
    print()
    print(f"best feature per {obs or 'label'} (AUROC of the feature's per-cell mean activation; top genes by mean "
          "activation on the gene's tokens):")
    for line in analysis.summary():
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
