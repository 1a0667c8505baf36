"""``tfopt tune``: a keras-tuner search over a recipe's tune specs."""

from __future__ import annotations

import click

from tfopt.cli.app import echo_err, recipe_run_options, sigterm_as_interrupt
from tfopt.cli.checks import check_new_folder
from tfopt.tune.space import load_search


@click.command()
@recipe_run_options("search folder", "Continue the interrupted search where it stopped.")
def tune(recipe, overrides, output, resume, overwrite):
    """Search the tune specs in RECIPE with keras-tuner (random, bayesian or hyperband).

    Writes <output>/<name>-tune/ with trials.csv, objective.png and best.yaml, the best
    trial's complete recipe for `tfopt fit`. For a distributed search set KERASTUNER_TUNER_ID
    (chief, tuner0, tuner1, ...), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT on every
    process (see docs/tune.md)."""
    search = load_search(recipe, overrides)
    check_new_folder(output or search.base.output.dir, f"{search.base.run_name()}-tune", resume=resume,
                     overwrite=overwrite, cluster="KERASTUNER_ORACLE_IP")
    sigterm_as_interrupt()
    from tfopt.tune.tuner import tune as run_tune

    run_tune(search, output=output, resume=resume, overwrite=overwrite, log=echo_err)
