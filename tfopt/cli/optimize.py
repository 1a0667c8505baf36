"""``tfopt optimize``: the smallest or fastest model within an accuracy budget."""

from __future__ import annotations

import click

from tfopt.cli.app import echo_err, sigterm_as_interrupt


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
@click.option("--lr", type=float, help="Fine-tune learning rate [probed: the highest of 1e-3, 3e-4, 1e-4 that one epoch on the input model tolerates].")
@click.option("--no-distill", is_flag=True, help="Fine-tune on the labels only (default: learn from the input model).")
@click.option("--teacher", metavar="RUN|MODEL",
              help="Learn from this run directory or model file instead of the input model (same inputs, as many "
                   "outputs; e.g. a larger network). The budget is still judged against the input model.")
@click.option("--temperature", type=float, default=4.0, show_default=True, help="Distillation temperature.")
@click.option("--alpha", type=float, default=0.9, show_default=True, help="Weight of the teacher's soft targets.")
@click.option("--max-candidates", type=int, help="Stop after this many candidates.")
@click.option("--output", type=click.Path(file_okay=False), help="Parent folder of the search [output.dir].")
@click.option("--resume", is_flag=True, help="Continue an interrupted search; finished candidates are kept.")
def optimize(source, recipe, overrides, max_drop, target, time_budget, epochs, lr, no_distill, teacher,
             temperature, alpha, max_candidates, output, resume):
    """Search pruning, layer removal, clustering and int8 for the smallest (--target size) or fastest
    model of SOURCE within --max-drop points of its accuracy.

    Writes candidates.csv (as each candidate finishes), pareto.png, report.md, optimize.yaml and
    the chosen model (chosen/model.keras and a verified chosen/model_int8.tflite) into
    <output>/<source>-optimized. Ctrl-C keeps the finished candidates; --resume continues.
    """
    sigterm_as_interrupt()
    from tfopt.search.engine import optimize_source

    try:
        result = optimize_source(source, recipe, overrides, output=output, resume=resume, log=echo_err,
                                 max_drop=max_drop, target=target, time_budget=time_budget, epochs=epochs, lr=lr,
                                 distill=not no_distill, teacher=teacher, temperature=temperature, alpha=alpha,
                                 max_candidates=max_candidates)
    except KeyboardInterrupt:
        echo_err("interrupted; run again with --resume to continue")
        raise SystemExit(130) from None
    click.echo(str(result.out))
