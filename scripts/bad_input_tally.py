"""Run the bad-input matrix (tests/test_bad_input.py CASES) in subprocesses and tally the outcomes.

Each case's CLI call runs in its own process (a segfault must not end the tally), with the same
files and environment the test builds. Outcome per case, worst first: code execution (the
case's marker file appeared: a file ran code), data lost (a user file it must keep changed or
vanished), hang (no exit within --timeout seconds), crash (killed by a signal), traceback,
silent (exit 0), other, clear (exit 2, exactly one `error:` line, no traceback); separately,
leftover (its --out changed). Run from the repo root (it imports the cases from tests/):

    python -m scripts.bad_input_tally [--json results/bad_input/after.json] [--timeout 90]
    python -m scripts.bad_input_tally --table results/bad_input/before_v3.json results/bad_input/after.json

The second form runs nothing: it prints the markdown table of the cases in the first file, with
their outcome in each file (the table of results/bad_input/README.md).
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

import pytest

from tests.bad_input_cases import as_case
from tests.test_bad_input import CASES, snapshot

OUTCOMES = ("clear", "traceback", "hang", "silent", "data lost", "code execution", "crash", "other")


def classify(code: int | None, err: str) -> str:
    if code is None:
        return "hang"
    if code < 0 or code >= 128:
        return "crash"
    if "Traceback" in err:
        return "traceback"
    if code == 0:
        return "silent"
    if code == 2 and sum(ln.startswith("error:") for ln in err.splitlines()) == 1:
        return "clear"
    return "other"


def markdown_table(before_path: str, after_path: str) -> str:
    """| case | before | after | for every case of `before_path`, then both tallies."""
    before, after = (json.loads(Path(p).read_text())["cases"] for p in (before_path, after_path))

    def cell(row: dict | None) -> str:
        return "not run" if row is None else row["outcome"] + (" + leftover" if row["leftover"] else "")

    lines = ["| case | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {cell(row)} | {cell(after.get(name))} |" for name, row in before.items()]
    for label, rows in (("before", before), ("after", {k: after[k] for k in before if k in after})):
        tally = Counter(r["outcome"] for r in rows.values())
        lines.append(f"\n{label}: {len(rows)} cases: " + ", ".join(f"{k} {tally.get(k, 0)}" for k in OUTCOMES)
                     + f"; leftovers {sum(r['leftover'] for r in rows.values())}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write per-case outcomes here")
    ap.add_argument("--only", help="comma-separated case names")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds before a case counts as a hang")
    ap.add_argument("--table", nargs=2, metavar=("BEFORE_JSON", "AFTER_JSON"), help="print the markdown table and exit")
    args = ap.parse_args()
    if args.table:
        print(markdown_table(*args.table))
        return
    names = args.only.split(",") if args.only else list(CASES)
    rows = {}
    base_cache = tempfile.mkdtemp(prefix="bioformer-tally-cache-")
    for name in names:
        tmp = Path(tempfile.mkdtemp(prefix=f"tally-{name}-"))
        mp = pytest.MonkeyPatch()
        mp.setenv("BIOFORMER_CACHE", base_cache)
        try:
            case = as_case(CASES[name](tmp, mp))
            env = dict(os.environ)
        finally:
            mp.undo()
        before, kept = snapshot(case.out), [snapshot(p) for p in case.keep]
        try:
            proc = subprocess.run([sys.executable, "-m", "bioformer.cli", "-q", *case.argv], capture_output=True,
                                  text=True, env=env, timeout=args.timeout)
            code, err = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as e:
            code, err = None, (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        outcome = classify(code, err)
        if [snapshot(p) for p in case.keep] != kept:
            outcome = "data lost"
        if case.marker is not None and case.marker.exists():
            outcome = "code execution"
        leftover = snapshot(case.out) != before
        last = (err.strip().splitlines() or [""])[-1][:160]
        rows[name] = {"outcome": outcome, "leftover": leftover, "code": code, "last_line": last}
        print(f"{name:<32} {outcome:<14} {'LEFTOVER' if leftover else '':<8} {last}", flush=True)
        if args.json:  # after every case, so an interrupted tally keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({"cases": rows}, indent=2) + "\n")
    tally = Counter(r["outcome"] for r in rows.values())
    n_left = sum(r["leftover"] for r in rows.values())
    print(f"\n{len(rows)} cases: " + ", ".join(f"{k} {tally.get(k, 0)}" for k in OUTCOMES) + f"; leftovers {n_left}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"cases": rows, "tally": dict(tally), "leftovers": n_left}, indent=2) + "\n")


if __name__ == "__main__":
    main()
