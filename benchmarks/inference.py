"""Inference speed of finished runs: cells/s of `embed`, `impute` and `grn` (pair scores) on the
first N cells of a data set (Kang 2018 by default), one torch thread unless told otherwise, and
the extrapolated wall time for every cell of it. Preparation (mapping and binning the cells) is
timed separately: it is shared by the three commands. `--batch-size` defaults to the library's
own choice (`Run.batch_size`); `--name` names the results file, e.g. to time another checkout of
the library on the same runs (PYTHONPATH=that/src) without overwriting these numbers.

    python -m benchmarks.inference RUN_DIR [RUN_DIR ...] [--data kang2018] [--cells 500]
        [--impute-cells 50] [--threads 1] [--batch-size N] [--name inference]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks._common import device_name, table, write_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", default="kang2018")
    ap.add_argument("--cells", type=int, default=500, help="cells for embed and grn")
    ap.add_argument("--impute-cells", type=int, default=50, help="cells for impute (it asks every run gene of each)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass (default: the library's)")
    ap.add_argument("--name", default="inference", help="results file benchmarks/results/NAME.json")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from bioformer.data.load import load_anndata
    from bioformer.inference.run import Run

    adata = load_anndata(args.data)
    rows = []
    for run_dir in args.runs:
        run = Run.load(run_dir, device="cpu")
        row = {"run": Path(run_dir).name, "model": run.config.model.model, "pair_mode": run.config.model.bioformer.pair_mode}
        t0 = time.perf_counter()
        cells = run.prepare(adata[:args.cells].copy(), quiet=True)
        row["prepare_cells_per_s"] = args.cells / (time.perf_counter() - t0)
        few = run.prepare(adata[:args.impute_cells].copy(), quiet=True)
        for name, fn, data, n in (("embed", run.embed, cells, args.cells), ("grn", run.pair_scores, cells, args.cells),
                                  ("impute", run.impute, few, args.impute_cells)):
            t0 = time.perf_counter()
            fn(data, batch_size=args.batch_size)
            row[f"{name}_cells_per_s"] = n / (time.perf_counter() - t0)
            row[f"{name}_all_min"] = adata.n_obs * (1 / row[f"{name}_cells_per_s"] + 1 / row["prepare_cells_per_s"]) / 60
        rows.append(row)
    name = device_name("cpu")
    print(f"\ninference on the first cells of {args.data} ({adata.n_obs:,} cells in all), {args.threads} thread(s), batch {args.batch_size or 'auto'} ({name})")
    cols = [("run", "run"), ("model", "model"), ("pair_mode", "pair mode"), ("prepare_cells_per_s", "prepare cells/s"),
            ("embed_cells_per_s", "embed cells/s"), ("embed_all_min", "embed all, min"), ("impute_cells_per_s", "impute cells/s"),
            ("impute_all_min", "impute all, min"), ("grn_cells_per_s", "grn cells/s"), ("grn_all_min", "grn all, min")]
    print(table(rows, cols))
    path = write_results(args.name, {"data": args.data, "n_cells": adata.n_obs, "cells": args.cells, "impute_cells": args.impute_cells,
                                       "threads": args.threads, "batch_size": args.batch_size, "device_name": name, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
