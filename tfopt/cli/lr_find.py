"""``tfopt lr-find``: the learning-rate range test on a recipe's model."""

from __future__ import annotations

import click

from tfopt.cli.app import Option, echo_out, set_option
from tfopt.cli.checks import check_output_file
from tfopt.config.callbacks import LRFinderConfig
from tfopt.config.recipe import load_recipe
from tfopt.errors import TfoptError
from tfopt.steps.runs import validate_named


#: The options of the sweep, by their key in the recipe's lr_finder callback.
FLAGS = {"min_lr": "--min-lr", "max_lr": "--max-lr", "num_steps": "--steps", "rule": "--rule"}


def check_sweep(r, min_lr, max_lr, steps, rule) -> None:
    """The sweep's settings (the options over the recipe's lr_finder callback), checked before
    TensorFlow is imported; a problem with an option's value names the option."""

    given = {k: v for k, v in {"min_lr": min_lr, "max_lr": max_lr, "num_steps": steps, "rule": rule}.items()
             if v is not None}
    own = r.callback("lr_finder") or LRFinderConfig()
    cfg = validate_named(LRFinderConfig, {**own.model_dump(), **given}, "callbacks.lr_finder",
                         {k: FLAGS[k] for k in given})
    if not cfg.min_lr < cfg.max_lr:
        raise TfoptError(f"lr-find: need 0 < min_lr < max_lr; got {cfg.min_lr} and {cfg.max_lr} (--min-lr, --max-lr "
                         f"or the recipe's lr_finder callback)")


_SWEEP_DEFAULT = "its lr_finder callback's {}, else {}"


@click.command("lr-find")
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--min-lr", type=float, cls=Option, shown=_SWEEP_DEFAULT.format("min_lr", "1e-6"),
              help="Start of the sweep.")
@click.option("--max-lr", type=float, cls=Option, shown=_SWEEP_DEFAULT.format("max_lr", "1.0"),
              help="End of the sweep.")
@click.option("--steps", type=int, cls=Option, shown=_SWEEP_DEFAULT.format("num_steps", "100"),
              help="Training steps in the sweep.")
@click.option("--rule", type=click.Choice(["steepest", "min_div_10"]), cls=Option,
              shown=_SWEEP_DEFAULT.format("rule", "steepest"), help="Suggestion rule.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Save the loss-vs-LR curve as a PNG.")
def lr_find(recipe, overrides, min_lr, max_lr, steps, rule, plot):
    """Learning-rate range test on RECIPE's model and training data."""
    r = load_recipe(recipe, overrides)
    check_sweep(r, min_lr, max_lr, steps, rule)
    if plot:
        check_output_file("--plot", plot)
    from tfopt.training.run import lr_find as run_lr_find

    s = run_lr_find(r, min_lr=min_lr, max_lr=max_lr, steps=steps, rule=rule, plot=plot, log=click.echo)
    for lr, loss in s["curve"]:
        echo_out(f"  lr {lr:10.3g}  smoothed loss {loss:.4f}")
    echo_out(f"suggested learning rate: {s['lr']:.3g} (rule '{s['rule']}': {s['reason']}); "
             f"swept {s['min_lr']:g}–{s['max_lr']:.3g} in {s['steps']} steps")
    echo_out(f"use it with: --set train.lr.initial={s['lr']:.3g}")
    if plot:
        echo_out(f"plot written to {plot}")
