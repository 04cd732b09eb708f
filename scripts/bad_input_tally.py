"""Run the bad-input matrix (tests/test_bad_input.py CASES) in subprocesses and tally the outcomes.

Each case's CLI call runs in its own process (a segfault must not end the tally), with the same
files and environment the test builds. Outcome per case: clear (exit 2, exactly one `error:`
line, no traceback), traceback, crash (killed by a signal), silent (exit 0), other; separately,
leftover (its --out changed). Run from the repo root:

    python scripts/bad_input_tally.py [--json results/bad_input_tally.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402

from tests.test_bad_input import CASES, snapshot  # noqa: E402


def classify(code: int, err: str) -> str:
    if code < 0 or code >= 128:
        return "crash"
    if "Traceback" in err:
        return "traceback"
    if code == 0:
        return "silent"
    if code == 2 and sum(ln.startswith("error:") for ln in err.splitlines()) == 1:
        return "clear"
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write per-case outcomes here")
    ap.add_argument("--only", help="comma-separated case names")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(CASES)
    rows = {}
    base_cache = tempfile.mkdtemp(prefix="bioformer-tally-cache-")
    for name in names:
        tmp = Path(tempfile.mkdtemp(prefix=f"tally-{name}-"))
        mp = pytest.MonkeyPatch()
        mp.setenv("BIOFORMER_CACHE", base_cache)
        try:
            argv, out = CASES[name](tmp, mp)
            env = dict(os.environ)
        finally:
            mp.undo()
        before = snapshot(out)
        proc = subprocess.run([sys.executable, "-m", "bioformer.cli", "-q", *argv], capture_output=True, text=True, env=env)
        outcome = classify(proc.returncode, proc.stderr)
        leftover = snapshot(out) != before
        last = (proc.stderr.strip().splitlines() or [""])[-1][:160]
        rows[name] = {"outcome": outcome, "leftover": leftover, "code": proc.returncode, "last_line": last}
        print(f"{name:<28} {outcome:<9} {'LEFTOVER' if leftover else '':<8} {last}", flush=True)
        if args.json:  # after every case, so an interrupted tally keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"cases": rows}, indent=2) + "\n")
    tally = Counter(r["outcome"] for r in rows.values())
    n_left = sum(r["leftover"] for r in rows.values())
    print(f"\n{len(rows)} cases: " + ", ".join(f"{k} {tally.get(k, 0)}" for k in ("clear", "traceback", "crash", "silent", "other")) + f"; leftovers {n_left}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cases": rows, "tally": dict(tally), "leftovers": n_left}, indent=2) + "\n")


if __name__ == "__main__":
    main()
