"""Hyperband against random search on the same search space, in one process.

For each oracle seed, three searches over ``recipes/search/digits_hyperband.yaml``:

- ``hyperband``: the recipe as it is (max 15 epochs per trial, factor 3);
- ``random_same_configs``: random search with as many trials as Hyperband tried distinct
  configurations, each trained the full 15 epochs;
- ``random_same_epochs``: random search with as many full-length trials as fit in the
  epochs Hyperband used.

Reported per search: total epochs trained, trials, best validation accuracy (the objective),
that trial's test accuracy, wall seconds; and the ratios to Hyperband.

    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_tune.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "search" / "digits_hyperband.yaml"


def run(data, out, label):
    from tfopt.tune.space import search_from_data
    from tfopt.tune.tuner import tune

    data = copy.deepcopy(data)
    data["output"] = {"dir": str(out), "run_name": label}
    started = time.perf_counter()
    summary = tune(search_from_data(data, str(RECIPE)), log=lambda *_: None)
    wall = time.perf_counter() - started
    with open(Path(summary["folder"]) / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    best = next(r for r in rows if r["trial"] == summary["best_trial"])
    return {"search": label, "trials": len(rows),
            "configs": sum(1 for r in rows if not r.get("continues")),
            "epochs": summary["total_epochs_trained"], "best_val_accuracy": round(summary["best_score"], 4),
            "best_trial_epochs": int(float(best["epochs"])),
            "best_test_accuracy": round(float(best["test_accuracy"]), 4), "wall_s": round(wall, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    import tensorflow as tf

    from tfopt.config.recipe import read_recipe_data

    tf.get_logger().setLevel("ERROR")
    base = read_recipe_data(RECIPE)
    epochs = base["train"]["epochs"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            hb_data = copy.deepcopy(base)
            hb_data["tune"] = {**base["tune"], "seed": seed}
            hb = run(hb_data, tmp, f"hyperband_s{seed}")
            print(json.dumps({"seed": seed, **hb}), flush=True)
            rows = [hb]
            for label, trials in (("random_same_configs", hb["configs"]),
                                  ("random_same_epochs", max(1, hb["epochs"] // epochs))):
                data = copy.deepcopy(base)
                data["tune"] = {"algorithm": "random", "objective": base["tune"]["objective"], "seed": seed,
                                "max_trials": trials}
                r = run(data, tmp, f"{label}_s{seed}")
                r["epochs_vs_hyperband"] = round(r["epochs"] / hb["epochs"], 2)
                r["best_minus_hyperband"] = round(r["best_val_accuracy"] - hb["best_val_accuracy"], 4)
                r["search"] = label
                print(json.dumps({"seed": seed, **r}), flush=True)
                rows.append(r)
            results.append({"seed": seed, "rows": rows})
    print(json.dumps({"bench": "tune_hyperband_vs_random", "results": results}), flush=True)


if __name__ == "__main__":
    main()
