"""The ``tfopt`` command line: parse, call one library function, print.

TensorFlow is imported inside the commands that need it, never at start-up, so ``--help``,
``validate`` and ``recipes`` answer at once.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading

import click

from tfopt.errors import TfoptError

# Lines TensorFlow's C++ runtime, absl and the TFLite converter write to stderr on their own:
# hidden unless --verbose, so users see tfopt's output.
_NATIVE_LOG = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} [\d:. ]+\s*\d+ \S+:\d+\]|"
    r"(WARNING|INFO):(tensorflow|absl):|fully_quantize: |Estimated count of arithmetic ops|"
    r"To enable the following instructions:|Summary on the non-converted ops:|"
    r"\s*\* Accepted dialects:|\s*\* Non-Converted Ops:|\s*- arith\.constant|\s*- tfl\.|"
    r"INFO: Created TensorFlow Lite XNNPACK delegate)"
)


def _quiet_native_logs() -> None:
    """Route this process's stderr through a filter that drops native log lines.

    Python warnings and TensorFlow's Python loggers are silenced too. This is the command
    line's own process; the library never does this to a user's process.
    """
    import logging
    import warnings

    warnings.simplefilter("ignore")
    for name in ("tensorflow", "absl", "tf_keras", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
    except OSError:
        return
    out = os.fdopen(saved, "wb", buffering=0)

    def pump():
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                if not _NATIVE_LOG.match(line.decode("utf-8", "replace")):
                    out.write(line)

    thread = threading.Thread(target=pump, name="tfopt-stderr", daemon=True)
    thread.start()

    def restore():
        try:
            sys.stderr.flush()
            os.dup2(saved, 2)  # closes the pipe's last writer: the pump sees end of file
        except (OSError, ValueError):
            return
        thread.join(timeout=2)

    import atexit

    atexit.register(restore)


class _Group(click.Group):
    """Prints a :class:`TfoptError` as one paragraph and exits 2 (130 when interrupted)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TfoptError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(getattr(exc, "exit_code", 2))


def _sigterm(signum, frame):
    raise KeyboardInterrupt


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tfopt")
@click.option("-v", "--verbose", is_flag=True, expose_value=False,
              help="Also show TensorFlow's own log lines and warnings (any command takes it).")
def cli():
    """Train CNNs from YAML recipes, then make them smaller and faster."""


set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a recipe value by dotted key, e.g. --set train.epochs=3 (repeatable).",
)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
def validate(recipe, overrides):
    """Check RECIPE without importing TensorFlow, and report every problem.

    A recipe with tune specs is checked as a search space: the specs, and each of their
    values with the others at their defaults."""
    from tfopt.recipe import read_recipe_data, validate as check
    from tfopt.tune.space import find_specs, search_from_data

    data = read_recipe_data(recipe, overrides)
    if find_specs(data):
        search = search_from_data(data, recipe)
        r, extra = search.base, f", search space of {len(search.specs)} tune specs ({search.config.algorithm})"
    else:
        r, extra = check(data, recipe), ""
    shape = r.input_shape()
    click.echo(f"{recipe}: OK ({r.name}: {len(r.model.layers)} layers, data {r.data.name}"
               + (f", input {'×'.join(map(str, shape))}" if shape else "") + extra + ")")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
def summary(recipe, overrides):
    """Print the model RECIPE builds: layers, output shapes, parameters and MACs."""
    from tfopt.recipe import load_recipe

    r = load_recipe(recipe, overrides)
    shape = r.input_shape()
    if shape is None:
        from tfopt.data import load_data

        shape = load_data(r.data, r.seed).input_shape
    from tfopt.models.builder import build_model
    from tfopt.models.stats import summary_table

    click.echo(summary_table(build_model(r.model, shape, name=r.name)))


@cli.command("recipes")
def list_recipes():
    """List the bundled recipes and searches, one line each."""
    from tfopt.recipe import bundled_recipes, recipe_headline

    found = bundled_recipes()
    width = max((len(n) for n in found), default=0)
    for name, path in found.items():
        click.echo(f"{name:<{width}}  {recipe_headline(path)}")


def _recipe_run_options(what: str, resume_help: str):
    """RECIPE, --set, --output, --resume and --overwrite, for commands that write ``what``."""

    def wrap(f):
        for option in reversed([
            click.argument("recipe", type=click.Path(dir_okay=False)),
            set_option,
            click.option("--output", type=click.Path(file_okay=False), help=f"Parent folder of the {what}."),
            click.option("--resume", is_flag=True, help=resume_help),
            click.option("--overwrite", is_flag=True, help=f"Replace a finished {what.split()[0]} of the same name."),
        ]):
            f = option(f)
        return f

    return wrap


@cli.command()
@_recipe_run_options("run directory", "Continue the interrupted run from its last checkpoint.")
def fit(recipe, overrides, output, resume, overwrite):
    """Train the model RECIPE describes and write a run directory."""
    from tfopt.recipe import load_recipe

    r = load_recipe(recipe, overrides)
    signal.signal(signal.SIGTERM, _sigterm)
    from tfopt.training.run import fit as run_fit

    result = run_fit(r, output=output, resume=resume, overwrite=overwrite, log=click.echo)
    m = result.metrics
    click.echo(f"test accuracy {m.get('test_accuracy', float('nan')):.4f}, test loss {m['test_loss']:.4f} "
               f"after {m['epochs']} epochs ({m['fit_seconds']:.1f} s training)")
    click.echo(f"run written to {result.run_dir}")


def _recipe_model_and_data(recipe, overrides=(), loaded=None):
    """The recipe (``loaded`` when already read), its freshly built model, and its data."""
    from tfopt.data import load_data
    from tfopt.models.builder import build_model
    from tfopt.recipe import load_recipe

    r = loaded or load_recipe(recipe, overrides)
    import tf_keras

    tf_keras.utils.set_random_seed(r.seed)
    splits = load_data(r.data, r.seed)
    return r, build_model(r.model, r.model.input_shape or splits.input_shape, name=r.name), splits


@cli.command("lr-find")
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--min-lr", type=float, help="Start of the sweep [recipe's lr_finder entry, else 1e-6].")
@click.option("--max-lr", type=float, help="End of the sweep [else 1.0].")
@click.option("--steps", type=int, help="Training steps in the sweep [else 100].")
@click.option("--rule", type=click.Choice(["steepest", "min_div_10"]), help="Suggestion rule [else steepest].")
@click.option("--plot", type=click.Path(dir_okay=False), help="Save the loss-vs-LR curve as a PNG.")
def lr_find(recipe, overrides, min_lr, max_lr, steps, rule, plot):
    """Learning-rate range test on RECIPE's model and training data."""
    from tfopt.callback_configs import LRFinderConfig
    from tfopt.errors import TfoptError
    from tfopt.recipe import load_recipe

    loaded = load_recipe(recipe, overrides)
    cfg = loaded.callback("lr_finder") or LRFinderConfig()
    given = {"min_lr": min_lr, "max_lr": max_lr, "num_steps": steps, "rule": rule}
    args = {**cfg.model_dump(exclude={"name"}), **{k: v for k, v in given.items() if v is not None}}
    min_lr, max_lr, steps = args["min_lr"], args["max_lr"], args["num_steps"]
    try:
        from tfopt.callbacks import LRFinder

        finder = LRFinder(**args, plot_path=plot)
    except ValueError as exc:
        raise TfoptError(f"lr-find: {exc}") from None
    from tfopt.training.run import compile_model, datasets

    r, model, splits = _recipe_model_and_data(recipe, loaded=loaded)
    compile_model(model, r.train, min_lr)
    train, _, _ = datasets(r, splits)
    click.echo(f"sweeping the learning rate from {min_lr:g} to {max_lr:g} over {steps} steps")
    model.fit(train, epochs=finder.epochs_needed(int(train.cardinality())), callbacks=[finder], verbose=0)
    s = finder.suggestion()
    for lr, loss in list(zip(finder.lrs, finder.smoothed))[:: max(1, len(finder.lrs) // 12)]:
        click.echo(f"  lr {lr:10.3g}  smoothed loss {loss:.4f}")
    click.echo(f"suggested learning rate: {s['lr']:.3g} (rule '{s['rule']}': {s['reason']}); "
               f"swept {s['min_lr']:g}–{s['max_lr']:.3g} in {s['steps']} steps")
    click.echo(f"use it with: --set train.lr.initial={s['lr']:.3g}")
    if plot:
        click.echo(f"plot written to {plot}")


@cli.command("gradcheck")
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--samples", type=int, default=4, show_default=True, help="Batch size of the check.")
@click.option("--entries", type=int, default=16, show_default=True, help="Entries checked per variable.")
@click.option("--threshold", type=float, default=1e-4, show_default=True, help="Max relative error per layer.")
def gradcheck_cmd(recipe, overrides, samples, entries, threshold):
    """Compare RECIPE's model gradients with finite differences (float64). Exit 1 on failure."""
    from tfopt.finite_diff import gradcheck

    _, model, splits = _recipe_model_and_data(recipe, overrides)
    result = gradcheck(model, splits.x_train[:samples], splits.y_train[:samples], max_entries=entries,
                       threshold=threshold)
    click.echo(result.table())
    if not result.passed:
        sys.exit(1)


def _source_options(f):
    f = click.option("--overwrite", is_flag=True, help="Replace a finished run of the same name.")(f)
    f = click.option("--output", type=click.Path(file_okay=False), help="Parent folder of the new run.")(f)
    f = set_option(f)
    f = click.option("--recipe", type=click.Path(dir_okay=False),
                     help="Recipe naming the data (required for a model file; default: the run's).")(f)
    return click.argument("source", type=click.Path())(f)


def _finetune_options(f):
    f = click.option("--batch-size", type=int, help="Fine-tune batch size [train.batch_size].")(f)
    f = click.option("--lr", type=float, help="Fine-tune learning rate [train.lr.initial / 10].")(f)
    return click.option("--epochs", type=int, help="Fine-tune epochs.")(f)


_SUFFIX = {"prune": "pruned", "cluster": "clustered", "export": "export", "fold_bn": "folded",
           "structured": "channels", "remove": "removed"}


def _output_free(step, src, given, output, overwrite):
    """Refuse an existing output folder before any work, as ``fit`` does."""
    from pathlib import Path

    from tfopt.rundir import RunDir

    if step == "quantize":
        suffix = given.get("mode") or src.recipe.optimize.quantize.mode
    elif step == "remove" and given.get("analyze") and given.get("budget") is None and not given.get("layers"):
        return
    else:
        suffix = _SUFFIX[step]
    RunDir(Path(output or src.recipe.output.dir) / f"{src.name}-{suffix}", overwrite=overwrite).check()


def _run_step(step, source, recipe, overrides, output, overwrite, given):
    from tfopt.steps import commands
    from tfopt.steps.source import load_source

    src = load_source(source, recipe, overrides)
    _output_free(step, src, given, output, overwrite)
    fn = getattr(commands, f"run_{step}")
    fn(src, given, output=output, overwrite=overwrite, log=click.echo)


def _pairs(values, option):
    from tfopt.errors import TfoptError

    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise TfoptError(f"{option} '{item}': expected LAYER=SPARSITY, e.g. {option} conv1=0.5")
    return out


@cli.command()
@_source_options
@_finetune_options
@click.option("--sparsity", type=float, help="Target fraction of zero weights [0.8].")
@click.option("--schedule", type=click.Choice(["polynomial", "constant"]), help="Pruning schedule [polynomial].")
@click.option("--begin-step", type=int, help="First pruning step [0].")
@click.option("--end-step", type=int, help="Last pruning step [2/3 of the fine-tune steps].")
@click.option("--frequency", type=int, help="Steps between pruning updates [fits the budget].")
@click.option("--layer", "layers", multiple=True, metavar="NAME=SPARSITY", help="Per-layer target (repeatable).")
@click.option("--skip", multiple=True, metavar="NAME", help="Leave this layer dense (repeatable).")
@click.option("--m-by-n", help="Structured m:n sparsity, e.g. 2:4.")
@click.option("--force", is_flag=True, default=None, help="Go on when the preflight says the target is out of reach.")
@click.option("--structured", is_flag=True, help="Remove whole channels instead (real speed-ups).")
@click.option("--ratio", type=float, help="--structured: fraction of channels removed per layer [0.5].")
@click.option("--per-layer", multiple=True, metavar="NAME=RATIO", help="--structured: per-layer ratio (repeatable).")
@click.option("--criterion", type=click.Choice(["l1", "l2", "bn_gamma", "activation", "taylor"]),
              help="--structured: ranking [l1].")
@click.option("--rounds", type=int, help="--structured: prune/fine-tune rounds [1].")
@click.option("--min-channels", type=int, help="--structured: channels always kept per layer [1].")
@click.option("--protect", multiple=True, metavar="NAME", help="--structured: keep this layer whole (repeatable).")
def prune(source, recipe, overrides, output, overwrite, epochs, lr, batch_size, sparsity, schedule, begin_step,
          end_step, frequency, layers, skip, m_by_n, force, structured, ratio, per_layer, criterion, rounds,
          min_channels, protect):
    """Prune SOURCE (a run directory or a model file): magnitude pruning, or --structured channel pruning."""
    from tfopt.errors import TfoptError

    if structured:
        given = dict(epochs=epochs, lr=lr, batch_size=batch_size, ratio=ratio,
                     per_layer=_pairs(per_layer, "--per-layer") or None, criterion=criterion, rounds=rounds,
                     min_channels=min_channels, protect=list(protect) or None)
        return _run_step("structured", source, recipe, overrides, output, overwrite, given)

    mn = None
    if m_by_n:
        try:
            mn = [int(v) for v in m_by_n.split(":")]
        except ValueError:
            raise TfoptError(f"--m-by-n '{m_by_n}': expected M:N, e.g. 2:4") from None
    given = dict(epochs=epochs, lr=lr, batch_size=batch_size, sparsity=sparsity, schedule=schedule,
                 begin_step=begin_step, end_step=end_step, frequency=frequency,
                 layers=_pairs(layers, "--layer") or None, skip=list(skip) or None, m_by_n=mn, force=force)
    _run_step("prune", source, recipe, overrides, output, overwrite, given)


@cli.command()
@_source_options
@_finetune_options
@click.option("--clusters", type=int, help="Shared values per layer [16].")
@click.option("--init", type=click.Choice(["kmeans_plus_plus", "linear", "density_based", "random"]),
              help="Centroid initialization [kmeans_plus_plus].")
@click.option("--skip", multiple=True, metavar="NAME", help="Leave this layer unclustered (repeatable).")
def cluster(source, recipe, overrides, output, overwrite, epochs, lr, batch_size, clusters, init, skip):
    """Cluster SOURCE's weights, fine-tune and strip."""
    given = dict(epochs=epochs, lr=lr, batch_size=batch_size, clusters=clusters, init=init, skip=list(skip) or None)
    _run_step("cluster", source, recipe, overrides, output, overwrite, given)


@cli.command()
@_source_options
@_finetune_options
@click.option("--mode", type=click.Choice(["dynamic", "float16", "int8", "qat"]), help="Quantization [int8].")
@click.option("--int8-io", is_flag=True, default=None, help="int8 input and output (int8, qat).")
@click.option("--representative-samples", type=int, help="Training images for int8 calibration [500].")
def quantize(source, recipe, overrides, output, overwrite, epochs, lr, batch_size, mode, int8_io,
             representative_samples):
    """Quantize SOURCE to a verified TFLite file (post-training, or QAT with fine-tuning)."""
    given = dict(epochs=epochs, lr=lr, batch_size=batch_size, mode=mode, int8_io=int8_io,
                 representative_samples=representative_samples)
    _run_step("quantize", source, recipe, overrides, output, overwrite, given)


@cli.command()
@_source_options
@click.option("--tflite", "modes", multiple=True, type=click.Choice(["float32", "dynamic", "float16", "int8"]),
              help="TFLite files to write (repeatable) [float32].")
@click.option("--int8-io", is_flag=True, default=None, help="int8 input and output for int8 files.")
@click.option("--min-agreement-float", type=float, help="Top-1 agreement threshold, float files [0.999].")
@click.option("--min-agreement-int8", type=float, help="Top-1 agreement threshold, int8/dynamic files [0.99].")
def export(source, recipe, overrides, output, overwrite, modes, int8_io, min_agreement_float, min_agreement_int8):
    """Write SavedModel, .keras and verified .tflite files for SOURCE."""
    given = dict(tflite=list(modes) or None, int8_io=int8_io, min_agreement_float=min_agreement_float,
                 min_agreement_int8=min_agreement_int8)
    _run_step("export", source, recipe, overrides, output, overwrite, given)


@cli.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe naming the test data (for bare files).")
@set_option
@click.option("--output", type=click.Path(file_okay=False), default="saved_models/report", show_default=True,
              help="Folder for report.md, report.json and report.png.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report folder.")
@click.option("--runs", type=int, default=200, show_default=True, help="Timed LiteRT invocations per latency.")
@click.option("--threads", type=int, help="Threads of the multi-thread latency [all cores].")
def report(sources, recipe, overrides, output, overwrite, runs, threads):
    """Compare the artifacts of SOURCES (run directories or model files): size, accuracy, latency."""
    from tfopt.report.report import report as run_report

    _, text, note_lines, final = run_report(sources, recipe, overrides, output, overwrite, runs, threads,
                                           log=click.echo)
    click.echo(text)
    for line in note_lines:
        click.echo(f"- {line}")
    click.echo(f"report written to {final}/report.md")


@cli.command("remove-layers")
@_source_options
@click.option("--layers", help="Comma-separated layers or blocks to remove, e.g. conv3,block2.")
@click.option("--analyze", is_flag=True, help="Measure the model without each removable layer or block.")
@click.option("--budget", type=float, help="With --analyze: remove the most within this many accuracy points.")
@click.option("--analyze-epochs", type=int, help="With --analyze: fine-tune each candidate this long first [0].")
@click.option("--epochs", type=int, help="Fine-tune epochs after removal [1; 0 for none].")
@click.option("--lr", type=float, help="Fine-tune learning rate [train.lr.initial / 10].")
def remove_layers_cmd(source, recipe, overrides, output, overwrite, layers, analyze, budget, analyze_epochs, epochs,
                      lr):
    """Remove layers or residual blocks from SOURCE where the shapes allow it, and rewire."""
    given = dict(layers=[n.strip() for n in layers.split(",") if n.strip()] if layers else None, analyze=analyze,
                 budget=budget, analyze_epochs=analyze_epochs, epochs=epochs, lr=lr)
    _run_step("remove", source, recipe, overrides, output, overwrite, given)


@cli.command()
@click.argument("source", type=click.Path())
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe naming the data (for a model file).")
@set_option
@click.option("--mode", type=click.Choice(["channels", "sparsity"]), default="channels", show_default=True)
@click.option("--ratios", default="0.25,0.5,0.75", show_default=True, help="Ratios tried per layer.")
@click.option("--budget", type=float, default=0.5, show_default=True, help="Accuracy points a layer may lose.")
@click.option("--write", "write_to", type=click.Path(dir_okay=False), required=True,
              help="Recipe file to write, with the chosen per-layer ratios in optimize:.")
def sensitivity(source, recipe, overrides, mode, ratios, budget, write_to):
    """Accuracy against channel ratio (or sparsity) per layer; write the chosen ratios into a recipe."""
    from pathlib import Path

    from tfopt.data.pipeline import load_splits
    from tfopt.errors import TfoptError
    from tfopt.steps.sensitivity import choose, sweep, write_back
    from tfopt.steps.source import load_source
    from tfopt.rundir import atomic_write_text

    try:
        values = [float(v) for v in ratios.split(",")]
    except ValueError:
        raise TfoptError(f"--ratios '{ratios}': expected numbers separated by commas, e.g. 0.25,0.5") from None
    if Path(write_to).exists():
        raise TfoptError(f"{write_to} already exists; pick a new file name for the tuned recipe")
    src = load_source(source, recipe, overrides)
    rows = sweep(src.model, load_splits(src.recipe.data, src.recipe.seed), values, mode, log=click.echo)
    chosen = choose(rows, budget)
    atomic_write_text(Path(write_to), write_back(src.recipe, chosen, mode).to_yaml())
    click.echo(f"chosen within {budget:g} points: " + ", ".join(f"{k}={v:g}" for k, v in chosen.items()))
    key = "optimize.structured.per_layer" if mode == "channels" else "optimize.prune.layers"
    click.echo(f"recipe written to {write_to} ({key}); apply it with tfopt prune {source} "
               f"{'--structured ' if mode == 'channels' else ''}--recipe {write_to}")


@cli.command()
@_recipe_run_options("search folder", "Continue the interrupted search where it stopped.")
def tune(recipe, overrides, output, resume, overwrite):
    """Search the tune specs in RECIPE with keras-tuner (random, bayesian or hyperband).

    Writes <output>/<name>-tune/ with trials.csv, objective.png and best.yaml, the best
    trial's complete recipe for `tfopt fit`. For a distributed search set KERASTUNER_TUNER_ID
    (chief, tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT on every
    process (see the README)."""
    from tfopt.tune.space import load_search

    search = load_search(recipe, overrides)
    signal.signal(signal.SIGTERM, _sigterm)
    from tfopt.tune.tuner import tune as run_tune

    run_tune(search, output=output, resume=resume, overwrite=overwrite, log=click.echo)


@cli.command("fold-bn")
@_source_options
def fold_bn(source, recipe, overrides, output, overwrite):
    """Fold BatchNorm layers into the conv/dense layers before them (outputs unchanged)."""
    _run_step("fold_bn", source, recipe, overrides, output, overwrite, {})


VERBOSE = ("-v", "--verbose")


def main():
    if not any(arg in VERBOSE for arg in sys.argv[1:]):
        _quiet_native_logs()
    cli(prog_name="tfopt")


for _command in cli.commands.values():
    _command.params.append(click.Option(list(VERBOSE), is_flag=True, expose_value=False,
                                        help="Also show TensorFlow's own log lines and warnings."))


if __name__ == "__main__":
    sys.exit(main())
