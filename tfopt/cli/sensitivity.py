"""``tfopt sensitivity``: per-layer accuracy against ratio, chosen ratios written into a recipe."""

from __future__ import annotations

import click

from tfopt.cli.app import Option, echo_out, renamed_option, set_option
from tfopt.cli.checks import check_output_file
from tfopt.errors import TfoptError
from tfopt.steps.runs import check_source
from tfopt.steps.source import check_search_limits


def parse_ratios(text: str) -> list[float]:
    """The ratios of ``--ratios``: numbers above 0 and below 1, separated by commas."""
    try:
        ratios = [float(v) for v in text.split(",")]
    except ValueError:
        raise TfoptError(f"--ratios '{text}': expected numbers separated by commas, e.g. 0.25,0.5") from None
    bad = [r for r in ratios if not 0 < r < 1]
    if bad:
        raise TfoptError(f"--ratios: each ratio must be a number above 0 and below 1 (the fraction of a layer's "
                         f"channels or weights removed); got {', '.join(map(repr, bad))}")
    return ratios


@click.command(params=[renamed_option("--budget", "--max-drop")])
@click.argument("source", type=click.Path())
@click.option("--recipe", type=click.Path(dir_okay=False), cls=Option, shown="the run's recipe",
              help="Recipe naming the data (required for a model file).")
@set_option
@click.option("--mode", type=click.Choice(["channels", "sparsity"]), default="channels", show_default=True,
              help="What is removed: whole channels (prune --structured) or single weights (prune).")
@click.option("--ratios", default="0.25,0.5,0.75", show_default=True, help="Ratios tried per layer.")
@click.option("--max-drop", type=float, default=0.5, show_default=True,
              help="Accuracy points a layer may lose, judged on the selection (validation) split.")
@click.option("--write", "write_to", type=click.Path(dir_okay=False), required=True,
              help="Recipe file to write, with the chosen per-layer ratios in optimize:.")
def sensitivity(source, recipe, overrides, mode, ratios, max_drop, write_to):
    """Accuracy against channel ratio (or sparsity) per layer; write the chosen ratios into a recipe."""
    # the library, loaded by the command that runs it: --help stays light

    check_search_limits(max_drop=max_drop)
    tried = parse_ratios(ratios)
    check_output_file("--write", write_to, new=True)
    check_source(source, recipe, overrides)
    from tfopt.steps.sensitivity import sensitivity_to_recipe

    result = sensitivity_to_recipe(source, recipe, overrides, mode=mode, ratios=tried, max_drop=max_drop,
                                   write_to=write_to, log=click.echo)
    echo_out(f"chosen within {max_drop:g} points: " + ", ".join(f"{k}={v:g}" for k, v in result["chosen"].items()))
    echo_out(f"recipe written to {write_to} ({result['key']}); apply it with tfopt prune {source} "
             f"{'--structured ' if mode == 'channels' else ''}--recipe {write_to}")
