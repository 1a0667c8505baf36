"""How long `tfopt validate` takes on the worst inputs up to the recipe size limit.

Each case is written at (or just under) tfopt.config.limits.MAX_RECIPE_BYTES and validated by the
installed `tfopt` command in a fresh process, several times; the slowest run counts. The
goal is an answer (OK or a refusal) in under 2 s.

    .venv/bin/python benchmarks/bench_validate.py [--runs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tfopt.config.limits import MAX_CHOICES, MAX_RECIPE_BYTES

REPO = Path(__file__).resolve().parent.parent
HEAD = (REPO / "recipes" / "quickstart.yaml").read_text()


def fill(prefix: str, unit: str, suffix: str = "") -> str:
    room = MAX_RECIPE_BYTES - len(prefix.encode()) - len(suffix.encode())
    return prefix + unit * (room // len(unit.encode())) + suffix


def cases() -> dict[str, str]:
    layer = "    - {type: dropout, rate: 0.1}\n"
    many_layers = HEAD.replace("    - {type: global_avg_pool}\n", "    - {type: global_avg_pool}\n" + layer * 990)
    return {
        "valid recipe, 1,000 layers": many_layers,
        "comment padding to the limit": fill(HEAD + "\n", "# padding padding padding padding padding\n"),
        "one flow list of integers": fill(HEAD + "\nextra: [", "1, ", "1]\n"),
        "per-layer sparsity map, 5,000 entries": HEAD + "\noptimize:\n  prune:\n    layers:\n" + "".join(
            f"      layer{i}: 0.5\n" for i in range(5000)),
        "unknown keys, distinct": HEAD + "\n" + "".join(f"x{i:06d}: 1\n" for i in range((MAX_RECIPE_BYTES - len(HEAD)) // 12)),
        "aliases near the expansion limit": HEAD + "\n" + "".join(
            f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['1'] * 9)}]\n" for i in range(5)),
        f"tune choice of {MAX_CHOICES} values": HEAD.replace(
            "filters: 16,", "filters: {tune: choice, values: [" + ", ".join(str(i) for i in range(1, MAX_CHOICES + 1))
            + "]},"),
        "ten MB file (over the limit)": "# " + "x" * (10 * 1024 * 1024) + "\n",
        "deep nesting": "x: " + "[" * 900 + "]" * 900 + "\n",
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    tfopt = str(Path(sys.executable).parent / "tfopt")
    print(f"| input | bytes | exit | slowest of {args.runs} (s) |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in cases().items():
            path = Path(tmp) / "r.yaml"
            path.write_text(text)
            times, rc = [], None
            for _ in range(args.runs):
                t = time.perf_counter()
                rc = subprocess.run([tfopt, "validate", str(path)], capture_output=True).returncode
                times.append(time.perf_counter() - t)
            print(f"| {name} | {len(text.encode()):,} | {rc} | {max(times):.2f} |")


if __name__ == "__main__":
    main()
