"""Inference speed of finished runs: cells/s of `embed`, `impute` and `grn` (pair scores) on the
first N cells of a data set (Kang 2018 by default), one torch thread unless told otherwise, and
the extrapolated wall time for every cell of it. Preparation (mapping and binning the cells) is
timed separately: it is shared by the three commands. Each timing is also taken in CPU seconds of
this process (`time.process_time`, "cpu" columns): on a shared machine wall time includes waiting
for a core, CPU time does not (with one thread it is what an idle core would take).
`--shared` also times impute's older shared passes (`Run.imputation(isolated=False)`), in the
same process right after the default isolated path: the speed-up of isolated queries. `--batch-size` defaults to the library's
own choice (`Run.batch_size`); `--name` names the results file, e.g. to time another checkout of
the library on the same runs (PYTHONPATH=that/src) without overwriting these numbers.

    python -m benchmarks.inference RUN_DIR [RUN_DIR ...] [--data kang2018] [--cells 500]
        [--impute-cells 50] [--threads 1] [--batch-size N] [--shared] [--name inference]
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
    ap.add_argument("--shared", action="store_true", help="also time impute's older shared passes (isolated=False)")
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
        tasks = [("embed", run.embed, cells, args.cells, {}), ("grn", run.pair_scores, cells, args.cells, {}),
                 ("impute", run.impute, few, args.impute_cells, {})]
        if args.shared:
            tasks.append(("impute_shared", run.impute, few, args.impute_cells, {"isolated": False}))
        for name, fn, data, n, kw in tasks:
            t0, c0 = time.perf_counter(), time.process_time()
            fn(data, batch_size=args.batch_size, **kw)
            row[f"{name}_cells_per_s"] = n / (time.perf_counter() - t0)
            row[f"{name}_cpu_cells_per_s"] = n / (time.process_time() - c0)
            row[f"{name}_all_min"] = adata.n_obs * (1 / row[f"{name}_cells_per_s"] + 1 / row["prepare_cells_per_s"]) / 60
            row[f"{name}_all_cpu_min"] = adata.n_obs * (1 / row[f"{name}_cpu_cells_per_s"] + 1 / row["prepare_cells_per_s"]) / 60
        if args.shared:
            row["impute_speedup_cpu"] = row["impute_cpu_cells_per_s"] / row["impute_shared_cpu_cells_per_s"]
        rows.append(row)
    name = device_name("cpu")
    print(f"\ninference on the first cells of {args.data} ({adata.n_obs:,} cells in all), {args.threads} thread(s), batch {args.batch_size or 'auto'} ({name})")
    cols = [("run", "run"), ("model", "model"), ("pair_mode", "pair mode"), ("prepare_cells_per_s", "prepare cells/s")]
    for task in ("embed", "impute", "grn") + (("impute_shared",) if args.shared else ()):
        cols += [(f"{task}_cells_per_s", f"{task} cells/s"), (f"{task}_cpu_cells_per_s", f"{task} cells/s (cpu)"),
                 (f"{task}_all_min", f"{task} all, min"), (f"{task}_all_cpu_min", f"{task} all, cpu min")]
    if args.shared:
        cols.append(("impute_speedup_cpu", "isolated / shared (cpu)"))
    print(table(rows, cols))
    path = write_results(args.name, {"data": args.data, "n_cells": adata.n_obs, "cells": args.cells, "impute_cells": args.impute_cells,
                                       "threads": args.threads, "batch_size": args.batch_size, "device_name": name, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
