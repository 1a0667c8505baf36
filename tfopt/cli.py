"""The ``tfopt`` command line: parse, call one library function, print.

TensorFlow is imported inside the commands that need it, never at start-up, so ``--help``,
``validate`` and ``recipes`` answer at once.
"""

from __future__ import annotations

import signal
import sys

import click

from tfopt.errors import TfoptError


class _Group(click.Group):
    """Prints a :class:`TfoptError` as one paragraph and exits 2 (130 when interrupted)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TfoptError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(getattr(exc, "exit_code", 2))


def _sigterm(signum, frame):
    raise KeyboardInterrupt


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tfopt")
def cli():
    """Train CNNs from YAML recipes, then make them smaller and faster."""


set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a recipe value by dotted key, e.g. --set train.epochs=3 (repeatable).",
)


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
def validate(recipe, overrides):
    """Check RECIPE without importing TensorFlow, and report every problem."""
    from tfopt.recipe import load_recipe

    r = load_recipe(recipe, overrides)
    shape = r.input_shape()
    click.echo(f"{recipe}: OK ({r.name}: {len(r.model.layers)} layers, data {r.data.name}"
               + (f", input {'×'.join(map(str, shape))}" if shape else "") + ")")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
def summary(recipe, overrides):
    """Print the model RECIPE builds: layers, output shapes, parameters and MACs."""
    from tfopt.recipe import load_recipe

    r = load_recipe(recipe, overrides)
    shape = r.input_shape()
    if shape is None:
        from tfopt.data import load_data

        shape = load_data(r.data, r.seed).input_shape
    from tfopt.models.builder import build_model
    from tfopt.models.stats import summary_table

    click.echo(summary_table(build_model(r.model, shape, name=r.name)))


@cli.command("recipes")
def list_recipes():
    """List the bundled recipes, one line each."""
    from tfopt.recipe import bundled_recipes, recipe_headline

    found = bundled_recipes()
    width = max((len(n) for n in found), default=0)
    for name, path in found.items():
        click.echo(f"{name:<{width}}  {recipe_headline(path)}")


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--output", type=click.Path(file_okay=False), help="Parent folder of the run directory.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run of the same name.")
def fit(recipe, overrides, output, resume, overwrite):
    """Train the model RECIPE describes and write a run directory."""
    from tfopt.recipe import load_recipe

    r = load_recipe(recipe, overrides)
    signal.signal(signal.SIGTERM, _sigterm)
    from tfopt.training.run import fit as run_fit

    result = run_fit(r, output=output, resume=resume, overwrite=overwrite, log=click.echo)
    m = result.metrics
    click.echo(f"test accuracy {m.get('test_accuracy', float('nan')):.4f}, test loss {m['test_loss']:.4f} "
               f"after {m['epochs']} epochs ({m['fit_seconds']:.1f} s training)")
    click.echo(f"run written to {result.run_dir}")


def main():
    cli(prog_name="tfopt")


if __name__ == "__main__":
    sys.exit(main())
