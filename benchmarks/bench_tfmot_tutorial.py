"""TFMOT's "Pruning in Keras" tutorial against ``tfopt prune`` on the same trained model and data.

Usage:
    TFOPT_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/bench_tfmot_tutorial.py \
        [--baseline RUN] [--seeds 0] [--variant NAME:key=value,key=value ...]

1. ``tfopt fit recipes/tfmot_tutorial.yaml`` (the tutorial's model and training: Conv 12 3×3,
   max-pool, Flatten, Dense 10, 4 epochs of Adam at 1e-3, batch 32), or ``--baseline RUN``.
2. TFMOT's tutorial code, as published, on that model: ``prune_low_magnitude`` with
   ``PolynomialDecay(0.50 -> 0.80, begin_step=0, end_step=<2 epochs of batch 128>)``, Adam,
   2 epochs at batch 128 with ``UpdatePruningStep``, ``strip_pruning``, then the tutorial's
   dynamic-range TFLite (``Optimize.DEFAULT``).
3. ``tfopt prune RUN --sparsity 0.8 --epochs 2`` with default settings (the library call
   behind the command), and each ``--variant`` (extra ``tfopt prune`` options, e.g.
   ``lr1e-3:lr=0.001``), then the same dynamic-range conversion.

Both sides fine-tune on the same 54,000 training images (the run's training split), select
nothing on the test set, and are scored on the 10,000 test images. Sizes: raw and gzip -9 bytes
of the .tflite. Prints one JSON line per seed and a summary line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _parse_variant(text: str):
    name, _, body = text.partition(":")
    given = {}
    for part in filter(None, body.split(",")):
        key, _, value = part.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        given[key.strip()] = value
    return name, given


def tfmot_tutorial(model, x_train, y_train, x_val, y_val, seed: int):
    """The tutorial's pruning code, unchanged except for the data it is given."""
    import tensorflow_model_optimization as tfmot
    import tf_keras as keras

    keras.utils.set_random_seed(seed)
    prune_low_magnitude = tfmot.sparsity.keras.prune_low_magnitude
    batch_size, epochs = 128, 2
    end_step = math.ceil(len(x_train) / batch_size) * epochs
    pruning_params = {"pruning_schedule": tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.50, final_sparsity=0.80, begin_step=0, end_step=end_step)}
    pruned = prune_low_magnitude(model, **pruning_params)
    pruned.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy"])
    pruned.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_data=(x_val, y_val),
               callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], verbose=2)
    return tfmot.sparsity.keras.strip_pruning(pruned)


def measure(model, x_test, y_test, label: str, log):
    """Test accuracy of the Keras model and of its dynamic-range TFLite; raw and gzip bytes."""
    import numpy as np

    from tfopt import tflite
    from tfopt.report.report import gzip_size

    keras_acc = float(np.mean(model.predict(x_test, batch_size=512, verbose=0).argmax(1) == y_test))
    blob = tflite.convert(model, "dynamic")
    tfl_acc = tflite.accuracy(blob, x_test, y_test)
    kernels = [w for layer in model.layers for w in layer.get_weights() if w.ndim > 1]
    sparsity = float(sum((k == 0).sum() for k in kernels) / sum(k.size for k in kernels))
    row = {"method": label, "test_accuracy": round(keras_acc, 4), "tflite_dynamic_accuracy": round(tfl_acc, 4),
           "kernel_sparsity": round(sparsity, 4), "tflite_raw_bytes": len(blob), "tflite_gzip_bytes": gzip_size(blob)}
    log(json.dumps(row))
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", help="a finished run of recipes/tfmot_tutorial.yaml (else one is trained)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "tfmot_tutorial"))
    ap.add_argument("--seeds", default="0", help="comma-separated fine-tune seeds")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME:key=value,... extra tfopt prune settings to compare, e.g. lr1e-3:lr=0.001")
    ap.add_argument("--skip-tfmot", action="store_true")
    args = ap.parse_args()

    import numpy as np
    import tf_keras as keras

    from tfopt.data.pipeline import load_splits
    from tfopt.steps.prune import run_prune
    from tfopt.steps.source import load_source
    from tfopt.config.recipe import load_recipe
    from tfopt.training.run import fit

    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    out = Path(args.out)
    if args.baseline:
        base = Path(args.baseline)
    else:
        base = fit(load_recipe(ROOT / "recipes" / "tfmot_tutorial.yaml", ["train.verbose=2"]), output=out,
                   overwrite=True, log=log).run_dir
    source = load_source(base)
    splits = load_splits(source.recipe.data, source.recipe.seed)
    base_model = source.model
    base_row = measure(base_model, splits.x_test, splits.y_test, "baseline", log)
    variants = [("tfopt-defaults", {})] + [_parse_variant(v) for v in args.variant]
    results = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        rows = [base_row]
        if not args.skip_tfmot:
            model = keras.models.clone_model(base_model)
            model.set_weights(base_model.get_weights())
            rows.append(measure(tfmot_tutorial(model, splits.x_train, splits.y_train, splits.x_val, splits.y_val,
                                               seed), splits.x_test, splits.y_test, "tfmot-tutorial", log))
        for name, settings in variants:
            given = dict(settings)  # each seed gets the variant's settings whole
            if given.pop("api", None):  # the library call, for settings the command does not take (distill)
                import tfopt

                pruned = tfopt.prune(base_model, (splits.x_train, splits.y_train), sparsity=0.8, epochs=2,
                                     batch_size=source.recipe.train.batch_size, seed=seed,
                                     validation_data=(splits.x_val, splits.y_val), **given)
                rows.append({**measure(pruned, splits.x_test, splits.y_test, f"tfopt.prune[{name}]", log),
                             "settings": given})
                continue
            with tempfile.TemporaryDirectory() as tmp:
                src = load_source(base, overrides=[f"seed={seed}"])
                path, _ = run_prune(src, {"sparsity": 0.8, "epochs": 2, **given}, output=tmp,
                                             overwrite=True, log=log)
                pruned = keras.models.load_model(Path(path) / "model.keras", compile=False)
                rows.append({**measure(pruned, splits.x_test, splits.y_test, f"tfopt-prune[{name}]", log),
                             "settings": given})
        for r in rows[1:]:
            r["drop_points"] = round((base_row["test_accuracy"] - r["test_accuracy"]) * 100, 2)
        result = {"bench": "tfmot_tutorial_prune", "seed": seed, "rows": rows}
        print(json.dumps(result), flush=True)
        results.append(result)
    summary = {}
    for res in results:
        for r in res["rows"][1:]:
            summary.setdefault(r["method"], []).append(r["drop_points"])
    print(json.dumps({"bench": "tfmot_tutorial_prune_summary", "baseline_accuracy": base_row["test_accuracy"],
                      "mean_drop_points": {k: round(float(np.mean(v)), 2) for k, v in summary.items()},
                      "drops": summary}), flush=True)


if __name__ == "__main__":
    main()
