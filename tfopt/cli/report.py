"""``tfopt report``: size, accuracy and latency of several runs side by side."""

from __future__ import annotations

import click

from tfopt.cli.app import set_option


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe naming the test data (for bare files).")
@set_option
@click.option("--output", type=click.Path(file_okay=False), default="saved_models/report", show_default=True,
              help="Folder for report.md, report.json and report.png.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report folder.")
@click.option("--runs", type=int, default=200, show_default=True, help="Timed LiteRT invocations per latency.")
@click.option("--threads", type=int, help="Threads of the multi-thread latency [all cores].")
def report(sources, recipe, overrides, output, overwrite, runs, threads):
    """Compare the artifacts of SOURCES (run directories or model files): size, accuracy, latency."""
    from tfopt.report.report import report as run_report  # the library, loaded by the command that runs it: --help stays light
    _, text, note_lines, final = run_report(sources, recipe, overrides, output, overwrite, runs, threads,
                                           log=click.echo)
    click.echo(text)
    for line in note_lines:
        click.echo(f"- {line}")
    click.echo(f"report written to {final}/report.md")
