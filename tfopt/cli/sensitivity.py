"""``tfopt sensitivity``: per-layer accuracy against ratio, chosen ratios written into a recipe."""

from __future__ import annotations

import click

from tfopt.cli.app import echo_out, set_option


@click.command()
@click.argument("source", type=click.Path())
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe naming the data (for a model file).")
@set_option
@click.option("--mode", type=click.Choice(["channels", "sparsity"]), default="channels", show_default=True)
@click.option("--ratios", default="0.25,0.5,0.75", show_default=True, help="Ratios tried per layer.")
@click.option("--budget", type=float, default=0.5, show_default=True, help="Accuracy points a layer may lose.")
@click.option("--write", "write_to", type=click.Path(dir_okay=False), required=True,
              help="Recipe file to write, with the chosen per-layer ratios in optimize:.")
def sensitivity(source, recipe, overrides, mode, ratios, budget, write_to):
    """Accuracy against channel ratio (or sparsity) per layer; write the chosen ratios into a recipe."""
    from tfopt.steps.sensitivity import sensitivity_to_recipe  # the library, loaded by the command that runs it: --help stays light
    result = sensitivity_to_recipe(source, recipe, overrides, mode=mode, ratios=ratios, budget=budget,
                                   write_to=write_to, log=click.echo)
    echo_out(f"chosen within {budget:g} points: " + ", ".join(f"{k}={v:g}" for k, v in result["chosen"].items()))
    echo_out(f"recipe written to {write_to} ({result['key']}); apply it with tfopt prune {source} "
             f"{'--structured ' if mode == 'channels' else ''}--recipe {write_to}")
