"""``tfopt optimize`` on the reference models, and distillation on/off with the same steps.

Usage:
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_optimize.py search RUN \
        --target size --max-drop 0.3 --time-budget 25m [--teacher RUN] [--out DIR]
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_optimize.py distill RUN \
        --sparsity 0.9 --epochs 2 --seeds 0,1,2

``search`` runs the search on a finished run (e.g. of recipes/lenet5_caffe.yaml) and prints one
JSON line: the input model as float32 TFLite (measured in the same run: raw and gzip bytes,
1-thread LiteRT latency, test accuracy) beside the chosen TFLite (int8, or float32 where that was
faster for --target latency; the same figures), with
the ratios. The two files' latencies are timed after the search, in five alternating turns; the
latency ratio is the median of the turns' ratios. Deep Compression's figures (LeNet-5: 44 KB at 0.74% error; LeNet-300-100: 27 KB at
1.58% error) are published constants, quoted in RESULTS.md.

``rows`` reads a finished search folder and prints, for each candidate, its selection drop and
the test accuracy of its cached TFLite file (a reading afterwards, not a choice the search makes).

``distill`` prunes the run's model to ``--sparsity`` with ``--epochs`` of fine-tuning, with and
without distillation from the input model, for each seed, and prints the test accuracy of both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
#: Turns of (input float32, chosen) latency, each the fastest of three blocks of 500 invocations.
ROUNDS = 5
sys.path.insert(0, str(ROOT))


def search(args, log):
    from tfopt import tflite
    from tfopt.data.pipeline import load_splits
    from tfopt.steps.source import load_source
    from tfopt.search.engine import optimize_source

    src = load_source(args.run, overrides=args.overrides)
    splits = load_splits(src.recipe.data, src.recipe.seed)
    ref = tflite.convert(src.model, "float32")
    ref_acc = tflite.accuracy(ref, splits.x_test, splits.y_test)
    t0 = time.perf_counter()
    res = optimize_source(args.run, overrides=args.overrides, output=args.out, resume=args.resume, log=log,
                          max_drop=args.max_drop,
                          target=args.target, time_budget=args.time_budget, epochs=args.epochs,
                          distill=not args.no_distill, lr=args.lr, teacher=args.teacher,
                          **({} if args.seed is None else {"seed": args.seed}))
    minutes = (time.perf_counter() - t0) / 60
    # both files timed after the search, in turns: the same file timed 1.4-1.6× apart between the start
    # and the end of one run on this machine
    rounds = []
    for _ in range(ROUNDS):
        r = tflite.latency_us(ref, splits.x_test[0], num_threads=1, runs=500, repeats=3)["median_us"]
        c = tflite.latency_us(res.tflite, splits.x_test[0], num_threads=1, runs=500, repeats=3)["median_us"]
        rounds.append((r, c))
    ref_lat, lat = (float(np.median([t[i] for t in rounds])) for i in (0, 1))
    ratio = float(np.median([c / r for r, c in rounds]))
    sizes, ref_sizes = tflite.sizes(res.tflite), tflite.sizes(ref)
    print(json.dumps({
        "bench": f"optimize_{src.name}_{args.target}", "minutes": round(minutes, 1), "candidates": len(res.rows),
        "chosen": res.chosen["id"], "steps": res.chosen["steps"],
        "float32_tflite": {**ref_sizes, "latency_us": round(ref_lat, 1), "test_accuracy": ref_acc},
        "chosen_tflite": {"mode": res.chosen.get("tflite") or "int8", **sizes, "sparse_raw_bytes": res.chosen.get("sparse_raw_bytes"),
                               "latency_us": round(lat, 1), "test_accuracy": res.test.get("chosen_test_accuracy"),
                               "selection_drop_points": round(res.chosen["drop_points"], 2),
                               "confirmation": res.confirmation or None},
        "input_test_accuracy": res.test.get("input_test_accuracy"),
        "test_drop_points": round((res.test["input_test_accuracy"] - res.test["chosen_test_accuracy"]) * 100, 2),
        "gzip_ratio": round(ref_sizes["gzip_bytes"] / sizes["gzip_bytes"], 1),
        "raw_ratio": round(ref_sizes["raw_bytes"] / sizes["raw_bytes"], 1),
        "latency_ratio": round(ratio, 3), "latency_rounds": [[round(r, 1), round(c, 1)] for r, c in rounds],
    }), flush=True)


def distill(args, log):
    import numpy as np

    import tfopt
    from tfopt.data.pipeline import load_splits
    from tfopt.steps.source import load_source

    src = load_source(args.run)
    splits = load_splits(src.recipe.data, src.recipe.seed)
    base = float(np.mean(src.model.predict(splits.x_test, verbose=0).argmax(1) == splits.y_test))
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        row = {"seed": seed}
        for on in (False, True):
            m = tfopt.prune(src.model, (splits.x_train, splits.y_train), sparsity=args.sparsity, epochs=args.epochs,
                            batch_size=src.recipe.train.batch_size, seed=seed, distill=on)
            row["distill" if on else "plain"] = float(np.mean(m.predict(splits.x_test, verbose=0).argmax(1)
                                                              == splits.y_test))
        log(json.dumps(row))
        rows.append(row)
    diff = [(r["distill"] - r["plain"]) * 100 for r in rows]
    print(json.dumps({"bench": f"distill_{src.name}_prune{args.sparsity}", "baseline_test_accuracy": base,
                      "rows": rows, "distill_minus_plain_points": [round(d, 2) for d in diff],
                      "mean_points": round(float(np.mean(diff)), 2), "std_points": round(float(np.std(diff)), 2)}),
          flush=True)


def rows(args, log):
    """Each finished candidate's cached TFLite file on the test split: a reading after the search,
    not a choice the search can make."""
    import csv

    from tfopt import tflite
    from tfopt.data.pipeline import load_splits
    from tfopt.steps.source import load_source

    src = load_source(args.run)
    splits = load_splits(src.recipe.data, src.recipe.seed)
    folder = Path(args.search)
    for row in csv.DictReader(open(folder / "candidates.csv")):
        path = folder / "cache" / row["id"] / "model.tflite"
        if row["error"] or not path.is_file():
            continue
        acc = tflite.accuracy(path.read_bytes(), splits.x_test, splits.y_test)
        conf = row.get("confirmation_drop_points")
        print(json.dumps({"id": row["id"], "selection_drop_points": round(float(row["drop_points"]), 2),
                          "confirmation_drop_points": round(float(conf), 2) if conf else None,
                          "meets_budget": row["meets_budget"] == "True", "test_accuracy": round(acc, 4),
                          "gzip_bytes": int(row["tflite_gzip_bytes"]), "raw_bytes": int(row["tflite_raw_bytes"])}),
              flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("search")
    s.add_argument("run")
    s.add_argument("--target", default="size", choices=["size", "latency", "macs"])
    s.add_argument("--max-drop", type=float, default=0.3)
    s.add_argument("--time-budget", default="25m")
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--no-distill", action="store_true")
    s.add_argument("--teacher", help="a run directory or model file to distil from (default: the input model)")
    s.add_argument("--lr", type=float, default=None, help="fine-tune rate (default: probed)")
    s.add_argument("--resume", action="store_true")
    s.add_argument("--seed", type=int, default=None,
                   help="seed of the fine-tunes (default: the recipe's; the data splits keep the recipe's)")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override the run's recipe, e.g. data.augment=null")
    s.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "optimize"))
    d = sub.add_parser("distill")
    d.add_argument("run")
    d.add_argument("--sparsity", type=float, default=0.9)
    d.add_argument("--epochs", type=int, default=2)
    d.add_argument("--seeds", default="0,1,2")
    r = sub.add_parser("rows")
    r.add_argument("search", help="the search folder (holding candidates.csv and cache/)")
    r.add_argument("run", help="the input run, for its test split")
    args = ap.parse_args()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    {"search": search, "distill": distill, "rows": rows}[args.mode](args, log)


if __name__ == "__main__":
    main()
