"""No file in src/ over 400 lines, no function over 60 (scripts/code_sizes.py; issue #24 point 6)."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = runpy.run_path(str(ROOT / "scripts" / "code_sizes.py"))

# Files allowed over the limits while another branch rewrites them (paths relative to src/).
# Empty since the run reader was merged; keep it empty.
ALLOWED_WHILE_REWRITTEN: set[str] = set()


def test_files_and_functions_are_within_the_limits():
    bad = [s for s in SIZES["violations"](ROOT / "src" / "bioformer") if s.path not in ALLOWED_WHILE_REWRITTEN]
    assert not bad, "over the limits (400 lines a file, 60 a function):\n" + "\n".join(map(str, bad))


def test_the_check_finds_a_long_function_and_a_long_file(tmp_path):
    """Positive control: a 61-line function and a 401-line file are reported, 60 and 400 are not."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(59))
    (pkg / "ok.py").write_text(f"def fine():\n{body}\n")  # 60 lines
    (pkg / "long.py").write_text(f"class A:\n    def too_long(self):\n{body}\n        pass\n".replace("\n    x", "\n        x"))
    (pkg / "big.py").write_text("x = 1\n" * 401)
    (pkg / "edge.py").write_text("x = 1\n" * 400)
    found = {(s.path, s.name) for s in SIZES["violations"](pkg)}
    assert found == {("pkg/long.py", "A.too_long"), ("pkg/big.py", "")}
