"""``tfopt replay``: the chain of steps a search chose (its ``optimize.yaml``), run again on a run."""

from __future__ import annotations

import click

from tfopt.cli.app import Option, echo_err, echo_out


@click.command()
@click.argument("source", type=click.Path())
@click.option("--steps", "steps_file", type=click.Path(dir_okay=False), required=True,
              help="optimize.yaml from tfopt optimize, or a recipe whose optimize.steps hold the chain.")
@click.option("--recipe", type=click.Path(dir_okay=False), cls=Option, shown="the run's recipe",
              help="Recipe naming the data (required for a model file).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value by dotted key (repeatable).")
@click.option("--output", type=click.Path(file_okay=False), cls=Option, shown="the folder holding SOURCE",
              help="Parent folder of the new run.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run of the same name.")
def replay(source, steps_file, recipe, overrides, output, overwrite):
    """Replay the steps of --steps on SOURCE, in order, and write one run with their TFLite file.

    Each step runs through the step registry with the settings the file records and the recipe's
    fine-tune settings; optimize.distill makes every fine-tune learn from SOURCE (or its teacher).
    The run (<source>-replayed) holds the model, the TFLite file the last step made (int8 from
    quantize or QAT; float32 after export), verified on the test split, and metrics.json with the
    steps, the settings each ran with and the file's test and selection accuracy."""
    # the library, loaded by the command that runs it: --help stays light
    from tfopt.steps.replay import replay as run_replay

    path, metrics = run_replay(source, steps_file, recipe=recipe, overrides=overrides, output=output,
                               overwrite=overwrite, log=echo_err)
    names = " -> ".join(next(iter(step)) for step in metrics["replayed"])
    echo_out(f"replayed {names} into {path}: TFLite test accuracy "
             f"{metrics['tflite_test_accuracy']:.2%}, selection accuracy {metrics['tflite_selection_accuracy']:.2%}")
