"""Structure checks of the package: module and function lengths, and imports of tfopt's own
modules inside function bodies.

A module's length counts every line; a function's counts its signature and body, its docstring
aside (the public functions document every argument, Google style, and that is not code).

Usage: ``python tools/structure.py [--max-module 600] [--max-function 80] [--max-inner-imports 30]``;
exits 1 when a limit is exceeded and lists what exceeds it.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "tfopt"


def _own(node) -> bool:
    if isinstance(node, ast.ImportFrom):
        return node.level > 0 or (node.module or "").split(".")[0] == "tfopt"
    return any(a.name.split(".")[0] == "tfopt" for a in node.names)


def _docstring_lines(node) -> int:
    first = node.body[0] if node.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first.end_lineno - first.lineno + 1
    return 0


def measure(root: Path = ROOT) -> dict:
    """``{"modules": [(path, lines)], "functions": [(path:name, lines)], "inner_imports": [(path, line)]}``."""
    modules, functions, inner = [], [], []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        rel = str(path.relative_to(root.parent))
        modules.append((rel, len(text.splitlines())))
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((f"{rel}:{node.name}", node.end_lineno - node.lineno + 1 - _docstring_lines(node)))
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and _own(sub):
                        inner.append((rel, sub.lineno))
    inner = sorted(set(inner))
    return {"modules": modules, "functions": functions, "inner_imports": inner}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-module", type=int, default=600)
    parser.add_argument("--max-function", type=int, default=80)
    parser.add_argument("--max-inner-imports", type=int, default=30)
    parser.add_argument("--list", action="store_true", help="list every inner import")
    args = parser.parse_args(argv)
    m = measure()
    long_modules = [(p, n) for p, n in m["modules"] if n > args.max_module]
    long_functions = [(p, n) for p, n in m["functions"] if n > args.max_function]
    failed = False
    for p, n in long_modules:
        print(f"module over {args.max_module} lines: {p} ({n})")
        failed = True
    for p, n in sorted(long_functions, key=lambda r: -r[1]):
        print(f"function over {args.max_function} lines: {p} ({n})")
        failed = True
    count = len(m["inner_imports"])
    if args.list or count > args.max_inner_imports:
        for p, line in m["inner_imports"]:
            print(f"inner import: {p}:{line}")
    print(f"{len(m['modules'])} modules, longest {max(n for _, n in m['modules'])} lines; "
          f"longest function {max(n for _, n in m['functions'])} lines; "
          f"{count} imports of tfopt modules inside functions (limit {args.max_inner_imports})")
    if count > args.max_inner_imports:
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
