"""``tfopt lr-find``: the learning-rate range test on a recipe's model."""

from __future__ import annotations

import click

from tfopt.cli.app import echo_out, set_option
from tfopt.config.recipe import load_recipe


@click.command("lr-find")
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--min-lr", type=float, help="Start of the sweep [default: its lr_finder callback's min_lr, else 1e-6].")
@click.option("--max-lr", type=float, help="End of the sweep [default: its lr_finder callback's max_lr, else 1.0].")
@click.option("--steps", type=int, help="Training steps in the sweep [default: its lr_finder callback's num_steps, else 100].")
@click.option("--rule", type=click.Choice(["steepest", "min_div_10"]), help="Suggestion rule [default: its lr_finder callback's rule, else steepest].")
@click.option("--plot", type=click.Path(dir_okay=False), help="Save the loss-vs-LR curve as a PNG.")
def lr_find(recipe, overrides, min_lr, max_lr, steps, rule, plot):
    """Learning-rate range test on RECIPE's model and training data."""
    r = load_recipe(recipe, overrides)
    from tfopt.training.run import lr_find as run_lr_find

    s = run_lr_find(r, min_lr=min_lr, max_lr=max_lr, steps=steps, rule=rule, plot=plot, log=click.echo)
    for lr, loss in s["curve"]:
        echo_out(f"  lr {lr:10.3g}  smoothed loss {loss:.4f}")
    echo_out(f"suggested learning rate: {s['lr']:.3g} (rule '{s['rule']}': {s['reason']}); "
             f"swept {s['min_lr']:g}–{s['max_lr']:.3g} in {s['steps']} steps")
    echo_out(f"use it with: --set train.lr.initial={s['lr']:.3g}")
    if plot:
        echo_out(f"plot written to {plot}")
