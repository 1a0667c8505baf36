"""``tfopt fit``: train a recipe into a run directory."""

from __future__ import annotations

import click

from tfopt.cli.app import echo_err, echo_out, recipe_run_options, run_workers, sigterm_as_interrupt, workers_option
from tfopt.cli.checks import check_new_folder
from tfopt.config.recipe import load_recipe
from tfopt.training.distribute import is_chief


@click.command()
@recipe_run_options("run directory", "Continue the interrupted run from its last checkpoint.")
@workers_option
@click.pass_context
def fit(ctx, recipe, overrides, output, resume, overwrite, workers):
    """Train the model RECIPE describes and write a run directory.

    With --workers N (or train.distribute: multi_worker and TF_CONFIG set by any launcher) the
    run trains under tf.distribute; only the chief writes the run directory."""
    r = load_recipe(recipe, overrides)
    check_new_folder(output or r.output.dir, r.run_name(), resume=resume, overwrite=overwrite,
                     cluster="TF_CONFIG")
    if workers > 1:
        run_workers(ctx, workers)
    sigterm_as_interrupt()
    from tfopt.training.run import fit as run_fit

    result = run_fit(r, output=output, resume=resume, overwrite=overwrite, log=echo_err)
    m = result.metrics
    echo_out(f"test accuracy {m.get('test_accuracy', float('nan')):.4f}, test loss {m['test_loss']:.4f} "
             f"after {m['epochs']} epochs ({m['fit_seconds']:.1f} s training)")
    echo_out(f"run written to {result.run_dir}" if is_chief() else f"the chief writes the run to {result.run_dir}")
