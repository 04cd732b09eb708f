"""Break the code on purpose, one mutant at a time, and record which tests fail (kill it).

Each mutant replaces one exact snippet of src/ in a temporary copy of the package (the working
tree is never touched) and runs the given test files against that copy. A mutant whose snippet
is not found is reported as such (the code moved: update the snippet). Run from the repo root:

    python scripts/run_mutants.py [--only NAME,...] [--json results/bad_input/mutants.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = "tests/test_outcomes.py"
# name -> (file under src/bioformer, exact snippet, replacement, test files to run)
MUTANTS: dict[str, tuple[str, str, str, list[str]]] = {
    "1 resume unpickles anything": ("training/checkpoint.py", 'torch.load(path, map_location="cpu", weights_only=True)', 'torch.load(path, map_location="cpu", weights_only=False)', ["tests/training/test_resume.py", "tests/test_bad_input.py"]),
    "2 overwrite ignores the run marker": ("training/rundir.py", "        if not (out / RUN_MARKER).is_file():\n            raise", "        if False:\n            raise", ["tests/test_bad_input.py", "tests/training/test_run.py"]),
    "2 outputs replace existing files": ("training/rundir.py", "        if not overwrite:\n            raise BioformerError(f\"{flag}", "        if False:\n            raise BioformerError(f\"{flag}", ["tests/test_bad_input.py"]),
    "2 outputs may go into a run dir": ("training/rundir.py", "        if is_run_dir(d):", "        if False:", ["tests/test_bad_input.py"]),
    "4 a rank without batches breaks the gather": ("training/loop.py", "p[3].get(k, [])", "p[3][k]", ["tests/training/test_distributed.py"]),
    "6 cache trusts size+mtime": ("data/datasets.py", "if is_verified(item, full=True):", "if is_verified(item, full=verify):", ["tests/data/test_datasets.py"]),
    "6 edited heldout_edges.csv accepted": ("training/rundir.py", "if sha256_file(path) != files[HELDOUT_EDGES]:", "if False:", ["tests/test_bad_input.py"]),
    "7a cell floor fitted on test cells": ("training/floors.py", 'train_set = data.dataset("train") if cell_floor else None', 'train_set = data.dataset("test") if cell_floor else None', [OUTCOMES]),
    "7b outputs in run-gene order": ("inference/outputs.py", "    return pos, to_run[pos]", "    return pos, np.sort(to_run[pos])", [OUTCOMES]),
    "7c given prior edges are candidates": ("evaluation/grn.py", "exclude=given)", "exclude=None)", [OUTCOMES]),
    "7d loss over unmasked positions": ("models/base.py", "F.mse_loss(pred[mask], target[mask])", "F.mse_loss(pred[~mask], target[~mask])", [OUTCOMES]),
    "7d loss over all positions": ("models/base.py", "F.mse_loss(pred[mask], target[mask])", "F.mse_loss(pred, target)", [OUTCOMES]),
    "7e a test cell leaks into training": ("data/tokenize.py", '"train": np.sort(perm[n_test + n_valid:]),', '"train": np.sort(np.r_[perm[:1], perm[n_test + n_valid:]]),', [OUTCOMES]),
    "7f best weights not restored": ("training/loop.py", "        core.load_state_dict(result.best_state)\n", "        pass\n", [OUTCOMES]),
    "7f every epoch counts as best": ("training/loop.py", 'if valid["mse"] < result.best_valid_mse:', "if True:", [OUTCOMES]),
    "7g evaluation in train mode": ("training/loop.py", "    model.eval()\n    ctx = torch.autocast", "    model.train()\n    ctx = torch.autocast", [OUTCOMES]),
    "7h per-gene floor on test cells": ("training/floors.py", 'data.split["train"], len(data.vocab)', 'data.split["test"], len(data.vocab)', [OUTCOMES]),
}


def run_mutant(name: str, timeout: float) -> dict:
    rel, old, new, tests = MUTANTS[name]
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", src)
        path = src / "bioformer" / rel
        text = path.read_text()
        if text.count(old) != 1:
            return {"status": f"snippet found {text.count(old)} times in {rel}", "killed_by": []}
        path.write_text(text.replace(old, new))
        env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *tests]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "timeout", "killed_by": []}
    killed = sorted(set(re.findall(r"^FAILED (\S+)", proc.stdout, re.M)))
    killed = [k.split(" - ")[0] for k in killed]
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"status": "killed" if killed else ("survived" if proc.returncode == 0 else f"error rc={proc.returncode}"), "killed_by": killed, "summary": tail}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="comma-separated mutant names (default: all)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(MUTANTS)
    results = {}
    for name in names:
        results[name] = r = run_mutant(name, args.timeout)
        print(f"{name:<40} {r['status']:<9} {', '.join(r['killed_by'][:4])}{' ...' if len(r['killed_by']) > 4 else ''}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
