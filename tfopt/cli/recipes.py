"""``tfopt validate``, ``tfopt summary`` and ``tfopt recipes``: recipes without training."""

from __future__ import annotations

import click

from tfopt.cli.app import echo_out, set_option
from tfopt.config.recipe import bundled_recipes, load_recipe, recipe_headline
from tfopt.tune.space import check_file


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
def validate(recipe, overrides):
    """Check RECIPE without importing TensorFlow, and report every problem.

    A recipe with tune specs is checked as a search space: the specs, and each of their
    values with the others at their defaults."""
    echo_out(check_file(recipe, overrides))


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
def summary(recipe, overrides):
    """Print the model RECIPE builds: layers, output shapes, parameters and MACs."""
    r = load_recipe(recipe, overrides)
    from tfopt.training.run import summary as summary_text

    echo_out(summary_text(r))


@click.command("recipes")
def list_recipes():
    """List the bundled recipes and searches, one line each."""
    found = bundled_recipes()
    width = max((len(n) for n in found), default=0)
    for name, path in found.items():
        echo_out(f"{name:<{width}}  {recipe_headline(path)}")
