"""File and function sizes of src/: the files over MAX_FILE_LINES lines and the functions over
MAX_FUNCTION_LINES lines (counted from `def` to the function's last line, decorators not
included; methods and nested functions each count on their own).

    python scripts/code_sizes.py [--top 10] [ROOT]

Prints the largest files and the longest functions, then every violation; exits 1 when there
is one. tests/test_code_size.py runs the same check.
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Size:
    """One file (`name` empty) or one function of a file, and its length in lines."""

    path: str
    name: str
    line: int
    lines: int

    def __str__(self) -> str:
        where = f"{self.path}:{self.line} {self.name}()" if self.name else self.path
        return f"{self.lines:>5}  {where}"


def file_sizes(root: Path) -> list[Size]:
    """Every .py file below `root`, largest first."""
    sizes = [Size(str(p.relative_to(root.parent)), "", 1, len(p.read_text().splitlines())) for p in root.rglob("*.py")]
    return sorted(sizes, key=lambda s: -s.lines)


def function_sizes(root: Path) -> list[Size]:
    """Every function and method below `root` (qualified by its class), longest first."""
    out = []
    for p in root.rglob("*.py"):
        tree = ast.parse(p.read_text(), filename=str(p))
        out += _functions(tree, str(p.relative_to(root.parent)), "")
    return sorted(out, key=lambda s: -s.lines)


def _functions(node: ast.AST, path: str, prefix: str) -> list[Size]:
    out = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + child.name
            out.append(Size(path, name, child.lineno, child.end_lineno - child.lineno + 1))
            out += _functions(child, path, name + ".")
        elif isinstance(child, ast.ClassDef):
            out += _functions(child, path, prefix + child.name + ".")
        else:
            out += _functions(child, path, prefix)
    return out


def violations(root: Path) -> list[Size]:
    """Files over MAX_FILE_LINES and functions over MAX_FUNCTION_LINES below `root`."""
    return ([s for s in file_sizes(root) if s.lines > MAX_FILE_LINES]
            + [s for s in function_sizes(root) if s.lines > MAX_FUNCTION_LINES])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", nargs="?", default=str(REPO / "src" / "bioformer"), help="package folder (default src/bioformer)")
    ap.add_argument("--top", type=int, default=10, help="how many of the largest files and longest functions to list")
    args = ap.parse_args()
    root = Path(args.root).resolve()
    print(f"largest files (limit {MAX_FILE_LINES} lines):")
    print("\n".join(map(str, file_sizes(root)[: args.top])))
    print(f"\nlongest functions (limit {MAX_FUNCTION_LINES} lines):")
    print("\n".join(map(str, function_sizes(root)[: args.top])))
    bad = violations(root)
    print(f"\n{len(bad)} over the limits" + (":\n" + "\n".join(map(str, bad)) if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
