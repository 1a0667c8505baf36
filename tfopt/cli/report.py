"""``tfopt report``: size, accuracy and latency of several runs side by side."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict

import click

from tfopt.cli.app import Option, echo_err, echo_out, set_option


@click.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path())
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe naming the test data (for bare files).")
@set_option
@click.option("--output", type=click.Path(file_okay=False), cls=Option, shown="report/ beside the first SOURCE",
              help="Folder for report.md, report.json and report.png.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report folder.")
@click.option("--runs", type=int, default=200, show_default=True, help="Timed LiteRT invocations per latency.")
@click.option("--threads", type=int, cls=Option, shown="all cores", help="Threads of the multi-thread latency.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr; only the results on stdout.")
@click.option("--json", "as_json", is_flag=True, help="The results as one JSON document on stdout, nothing else.")
def report(sources, recipe, overrides, output, overwrite, runs, threads, quiet, as_json):
    """Compare the artifacts of SOURCES (run directories or model files): size, accuracy, latency.

    Progress goes to stderr, the table and notes to stdout."""
    # the library, loaded by the command that runs it: --help stays light
    from tfopt.report.report import check_inputs, report as run_report

    output = check_inputs(sources, output, runs, threads)

    rows, text, note_lines, final = run_report(sources, recipe, overrides, output, overwrite, runs, threads,
                                               log=(lambda *_: None) if quiet or as_json else echo_err)
    if as_json:
        echo_out(json.dumps({"output": str(final), "rows": [asdict(r) for r in rows], "notes": note_lines}))
        return
    echo_out(text)
    for line in note_lines:
        echo_out(textwrap.fill(line, width=100, initial_indent="- ", subsequent_indent="  "))
    echo_out(f"report written to {final}/report.md")
