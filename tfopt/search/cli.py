"""``tfopt optimize``: parse the options, call :func:`tfopt.search.engine.optimize`, print.

Registered in :mod:`tfopt.cli` with ``cli.add_command(optimize_command)``.
"""

from __future__ import annotations

from pathlib import Path

import click


def optimize_source(source, recipe=None, overrides=(), *, output=None, resume=False, log=print, **kwargs):
    """Run the search on a run directory (or a model file with ``recipe``) and its recipe's data
    splits: fine-tunes on the training split, the budget judged on the validation split (the
    selection split; a recipe without one holds out 10% of the training images), test accuracy
    reported at the end. The search folder is ``<output>/<run name>-optimized``."""
    from tfopt.data.pipeline import load_splits
    from tfopt.errors import TfoptError
    from tfopt.steps.source import load_source
    from tfopt.search.engine import optimize

    src = load_source(source, recipe, overrides)
    r = src.recipe
    out = Path(output or r.output.dir) / f"{src.name}-optimized"
    if out.exists() and not resume and any(out.iterdir()):
        raise TfoptError(f"{out} already holds a search; pass --resume to continue it, or --output elsewhere")
    splits = load_splits(r.data, r.seed)
    validation = (splits.x_val, splits.y_val) if len(splits.x_val) else None
    kwargs.setdefault("batch_size", r.train.batch_size)
    kwargs.setdefault("seed", r.seed)
    return optimize(src.model, (splits.x_train, splits.y_train), validation_data=validation,
                    test_data=(splits.x_test, splits.y_test), out=out, resume=resume, log=log, **kwargs)


@click.command("optimize")
@click.argument("source", type=click.Path())
@click.option("--recipe", type=click.Path(dir_okay=False),
              help="Recipe naming the data (required for a model file; default: the run's).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value (repeatable).")
@click.option("--max-drop", type=float, default=0.3, show_default=True,
              help="Largest accuracy drop allowed, in points, judged on the selection (validation) split.")
@click.option("--target", type=click.Choice(["size", "latency", "macs"]), default="size", show_default=True,
              help="What to minimise: gzip bytes of the int8 .tflite, 1-thread LiteRT latency, or MACs.")
@click.option("--time-budget", metavar="DURATION", help="Stop starting candidates after this long, e.g. 30m, 1h.")
@click.option("--epochs", type=int, default=2, show_default=True, help="Fine-tune epochs of every step.")
@click.option("--lr", type=float, help="Fine-tune learning rate [the steps' default].")
@click.option("--no-distill", is_flag=True, help="Fine-tune on the labels only (default: learn from the input model).")
@click.option("--temperature", type=float, default=4.0, show_default=True, help="Distillation temperature.")
@click.option("--alpha", type=float, default=0.9, show_default=True, help="Weight of the teacher's soft targets.")
@click.option("--max-candidates", type=int, help="Stop after this many candidates.")
@click.option("--output", type=click.Path(file_okay=False), help="Parent folder of the search [output.dir].")
@click.option("--resume", is_flag=True, help="Continue an interrupted search; finished candidates are kept.")
def optimize_command(source, recipe, overrides, max_drop, target, time_budget, epochs, lr, no_distill, temperature,
                     alpha, max_candidates, output, resume):
    """Search pruning, layer removal, clustering and int8 for the smallest (--target size) or fastest
    model of SOURCE within --max-drop points of its accuracy.

    Writes candidates.csv (as each candidate finishes), pareto.png, report.md, optimize.yaml and
    the chosen model (chosen/model.keras and a verified chosen/model_int8.tflite).
    """
    log = lambda line: click.echo(line, err=True)  # noqa: E731
    try:
        result = optimize_source(source, recipe, overrides, output=output, resume=resume, log=log,
                                 max_drop=max_drop, target=target, time_budget=time_budget, epochs=epochs, lr=lr,
                                 distill=not no_distill, temperature=temperature, alpha=alpha,
                                 max_candidates=max_candidates)
    except KeyboardInterrupt:
        click.echo("interrupted; run again with --resume to continue", err=True)
        raise SystemExit(130) from None
    click.echo(str(result.out))
