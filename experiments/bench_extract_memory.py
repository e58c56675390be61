"""Benchmark: peak RSS of `jaxsae extract` on a large sparse .h5ad vs a documented function of batch size.

    python experiments/bench_extract_memory.py [--cells 200000] [--genes 20000] [--median-genes 1000]
                                               [--batch-sizes 8,64] [--parts 100] [--hvg]

Builds (once, cached in --work) a synthetic CSR .h5ad of --cells cells over --genes genes, written block by block
with h5py (never in memory): per cell a log-normal number of expressed genes (median --median-genes, sigma 0.5,
clipped to [200, 6000], like 10x v3 cells), counts 1 + geometric. The demo Geneformer (extract.demo; 765 of the
genes are its vocabulary) extracts the cells of worker 0 of --parts (`--worker 0/P`, a prefix of ~cells/P cells)
in a fresh process per batch size: that process opens the whole file backed and scans every cell (token counts
for the partition), so the whole file is read, but only the prefix goes through the model. Peak RSS is the
child's VmHWM (/proc/self/status; not ru_maxrss, which Linux carries over from the forking parent across exec).

The documented bound (bytes), each term from a buffer the extractor holds at once:
    predicted(B) = base + B * L * 4 * (d * (n_blocks + 6) + d_ff + 2 * heads * L)      forward pass of B cells
                 + stores * shard_rows * d * 4 * (2 + MAX_SHARDS_IN_FLIGHT)              store write buffers
                 + G * 12 * 3                                                          count blocks (CSR, copies)
base: RSS of a process that imported torch and loaded the model (measured in this run); L: the model's input
size; d, d_ff, heads, n_blocks: its geometry; G: the most non-zeros of any SCAN_ROWS + cells_per_commit cells
(one scan block and one window of counts; 12 bytes per non-zero as float64 + int32). The file size appears in
no term; the script prints it next to the peaks.

--hvg: the peak RSS of choosing 2,000 'seurat_v3' highly variable genes (scGPT's default) over ALL cells, streamed
in blocks of extract.hvg.BLOCK_ROWS cells (what extraction does) and, for contrast, by scanpy on the file loaded
into memory; both against a child that only imported the same modules (scanpy and scikit-misc too).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CELLS_PER_COMMIT = 256  # ExtractConfig's default, which the child uses
CHILD = """
import json, sys
sys.path.insert(0, {repo!r})
from extract.models import load_model
from extract.run import extract
mode, adata, model, out, batch_size, parts = sys.argv[1:]
if mode == "import":
    import anndata, scanpy, skmisc.loess  # what the hvg children import besides the header's modules
elif mode == "base":
    load_model(model, device="cpu")
elif mode == "hvg_streamed":
    from extract.counts import CountSource
    from extract.hvg import streamed_hvg
    with CountSource(adata) as source:
        streamed_hvg(source, 2000, "seurat_v3")
elif mode == "hvg_in_memory":
    import anndata, scanpy as sc
    cells = anndata.read_h5ad(adata)
    sc.pp.highly_variable_genes(cells, n_top_genes=2000, flavor="seurat_v3")
else:
    extract(adata, model, out, layers=[-1], batch_size=int(batch_size), tokens_per_batch=None, worker=f"0/{{parts}}",
            device="cpu", progress_bar=False)
peak_kib = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
print(json.dumps({{"peak_rss": peak_kib * 1024}}))
"""


def write_sparse_h5ad(path: Path, n_cells: int, gene_ids: list[str], median_genes: int, seed: int = 0) -> np.ndarray:
    """Write a CSR .h5ad block by block; returns [n_cells] int64 expressed genes per cell."""
    import h5py
    import pandas as pd
    from anndata.io import write_elem

    rng = np.random.default_rng(seed)
    n_genes = len(gene_ids)
    per_cell = np.clip(rng.lognormal(np.log(median_genes), 0.5, n_cells), 200, min(6000, n_genes)).astype(np.int64)
    tmp = path.with_suffix(".partial")
    with h5py.File(tmp, "w") as f:
        f.attrs["encoding-type"], f.attrs["encoding-version"] = "anndata", "0.1.0"
        write_elem(f, "obs", pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]))
        write_elem(f, "var", pd.DataFrame(index=gene_ids))
        x = f.create_group("X")
        x.attrs["encoding-type"], x.attrs["encoding-version"] = "csr_matrix", "0.1.0"
        x.attrs["shape"] = (n_cells, n_genes)
        x.create_dataset("indptr", data=np.r_[0, np.cumsum(per_cell)].astype(np.int64))
        data = x.create_dataset("data", (0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 18,))
        indices = x.create_dataset("indices", (0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 18,))
        for start in range(0, n_cells, 10_000):
            cols = [np.sort(rng.choice(n_genes, int(k), replace=False)) for k in per_cell[start : start + 10_000]]
            block = np.concatenate(cols).astype(np.int32)
            n = len(block)
            for dataset, values in ((indices, block), (data, (1 + rng.geometric(0.4, n)).astype(np.float32))):
                dataset.resize((dataset.shape[0] + n,))
                dataset[-n:] = values
    tmp.rename(path)
    return per_cell


def run_child(*args) -> int:
    proc = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(REPO)), *map(str, args)], capture_output=True,
                          text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=200_000)
    parser.add_argument("--genes", type=int, default=20_000)
    parser.add_argument("--median-genes", type=int, default=1000)
    parser.add_argument("--batch-sizes", default="8,64")
    parser.add_argument("--parts", type=int, default=100, help="extract worker 0 of this many (a prefix of cells)")
    parser.add_argument("--work", default="/tmp/bench_extract_memory")
    parser.add_argument("--hvg", action="store_true", help="also: peak RSS of 2,000 'seurat_v3' highly variable genes "
                        "of the whole file, streamed (extract.hvg) and in memory (scanpy on the loaded file)")
    args = parser.parse_args()
    from extract.demo import prepare_demo
    from extract.models import load_model
    from extract.scan import SCAN_ROWS
    from jaxsae.store.writer import MAX_SHARDS_IN_FLIGHT

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    demo_adata, model_dir = prepare_demo(work / "demo")
    import anndata

    vocabulary = [str(g) for g in anndata.read_h5ad(demo_adata, backed="r").var["ensembl_id"]]
    gene_ids = vocabulary + [f"ENSG{n:011d}" for n in range(args.genes - len(vocabulary))]
    path = work / f"cells_{args.cells}x{args.genes}_m{args.median_genes}.h5ad"
    meta = path.with_suffix(".json")
    if not path.is_file():
        started = time.perf_counter()
        per_cell = write_sparse_h5ad(path, args.cells, gene_ids, args.median_genes)
        meta.write_text(json.dumps({"most_nonzeros": int(np.sort(per_cell)[-(SCAN_ROWS + CELLS_PER_COMMIT):].sum())}))
        print(f"wrote {path} in {time.perf_counter() - started:.0f} s")
    most_nonzeros = json.loads(meta.read_text())["most_nonzeros"]
    model = load_model(model_dir, device="cpu")
    cfg = model.config
    size, d, d_ff, heads, blocks = (cfg.max_position_embeddings, cfg.hidden_size, cfg.intermediate_size,
                                    cfg.num_attention_heads, cfg.num_hidden_layers)
    stores, shard_rows = 2 + (getattr(model, "cls_token_id", None) is not None), 16384  # ExtractConfig defaults
    base = run_child("base", path, model_dir, work / "out", 0, args.parts)
    print(f"file {path.name}: {path.stat().st_size / 2**30:.2f} GiB on disk, {args.cells:,} cells x {args.genes:,} "
          f"genes; worker 0/{args.parts} extracts ~{args.cells // args.parts:,} cells, the scan reads all")
    print(f"model: L={size} d={d} d_ff={d_ff} heads={heads} blocks={blocks}; base RSS {base / 2**20:,.0f} MiB")
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        out = work / f"out_b{batch_size}"
        subprocess.run(["rm", "-rf", str(out)], check=True)
        started = time.perf_counter()
        peak = run_child("extract", path, model_dir, out, batch_size, args.parts)
        forward = batch_size * size * 4 * (d * (blocks + 6) + d_ff + 2 * heads * size)
        buffers = stores * shard_rows * d * 4 * (2 + MAX_SHARDS_IN_FLIGHT)
        counts = most_nonzeros * 12 * 3
        predicted = base + forward + buffers + counts
        print(f"batch {batch_size:4d}: peak RSS {peak / 2**20:7,.0f} MiB   predicted bound {predicted / 2**20:7,.0f} MiB "
              f"(base {base / 2**20:,.0f} + forward {forward / 2**20:,.0f} + store buffers {buffers / 2**20:,.0f} + "
              f"count blocks {counts / 2**20:,.0f})   {'within' if peak <= predicted else 'ABOVE'} the bound   "
              f"{time.perf_counter() - started:.0f} s")
    if args.hvg:
        import_base = run_child("import", path, model_dir, work / "out", 0, args.parts)
        for mode in ("hvg_streamed", "hvg_in_memory"):
            started = time.perf_counter()
            peak = run_child(mode, path, model_dir, work / "out", 0, args.parts)
            print(f"{mode}: peak RSS {peak / 2**20:7,.0f} MiB ({(peak - import_base) / 2**20:,.0f} above the imports' "
                  f"{import_base / 2**20:,.0f}) in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
