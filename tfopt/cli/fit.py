"""``tfopt fit``: train a recipe into a run directory."""

from __future__ import annotations

import click

from tfopt.cli.app import recipe_run_options, sigterm_as_interrupt


@click.command()
@recipe_run_options("run directory", "Continue the interrupted run from its last checkpoint.")
def fit(recipe, overrides, output, resume, overwrite):
    """Train the model RECIPE describes and write a run directory."""
    from tfopt.recipe import load_recipe

    r = load_recipe(recipe, overrides)
    sigterm_as_interrupt()
    from tfopt.training.run import fit as run_fit

    result = run_fit(r, output=output, resume=resume, overwrite=overwrite, log=click.echo)
    m = result.metrics
    click.echo(f"test accuracy {m.get('test_accuracy', float('nan')):.4f}, test loss {m['test_loss']:.4f} "
               f"after {m['epochs']} epochs ({m['fit_seconds']:.1f} s training)")
    click.echo(f"run written to {result.run_dir}")
