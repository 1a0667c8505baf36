"""``tfopt gradcheck``: tape gradients against float64 finite differences."""

from __future__ import annotations

import sys

import click

from tfopt.cli.app import echo_out, set_option
from tfopt.cli.checks import check_number
from tfopt.config.recipe import load_recipe


@click.command("gradcheck")
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--samples", type=int, default=4, show_default=True, help="Batch size of the check.")
@click.option("--entries", type=int, default=16, show_default=True, help="Entries checked per variable.")
@click.option("--threshold", type=float, default=1e-4, show_default=True, help="Max relative error per layer.")
def gradcheck(recipe, overrides, samples, entries, threshold):
    """Compare RECIPE's model gradients with finite differences (float64). Exit 1 on failure."""
    for flag, value in (("--samples", samples), ("--entries", entries)):
        check_number(flag, value, lambda v: v >= 1, "a whole number of at least 1")
    check_number("--threshold", threshold, lambda v: v > 0, "a finite number above 0")
    r = load_recipe(recipe, overrides)
    from tfopt.finite_diff import gradcheck_recipe

    result = gradcheck_recipe(r, samples=samples, entries=entries, threshold=threshold)
    echo_out(result.table())
    if not result.passed:
        sys.exit(1)
