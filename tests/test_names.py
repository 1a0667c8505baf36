"""One name per concept: a step setting has the same name in the recipe, on the command line
and in the Python API, and docs/names.md holds the table built here from the code.

Regenerate the table with ``python tests/test_names.py``.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import click
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "names.md"

#: The public functions whose keywords name step settings, and the steps they run.
API_STEPS = {"prune": ("prune",), "prune_channels": ("structured",), "cluster": ("cluster",),
             "quantize_aware": ("quantize",), "remove_layers": ("remove",), "fold_pool": ("fold_pool",),
             "wrap_for_pruning": ("prune",), "wrap_for_clustering": ("cluster",), "to_tflite": ("export",)}


#: Concepts whose field description does not say it in its first words.
CONCEPTS = {"per_layer": "Per-layer value (prune: sparsity; structured: ratio)", "skip": "Layers left alone",
            "criterion": "How weights or channels are ranked", "temperature": "Distillation temperature",
            "alpha": "Weight of the teacher's soft targets", "m_by_n": "m:n sparsity",
            "probe_samples": "Training images the activation and taylor criteria run",
            "max_drop": "Points the removal may cost (with analyze)", "layers": "Layers to act on",
            "lr": "Fine-tune peak learning rate", "block": "Dense kernels pruned in runs of this many inputs",
            "measure": "Time both float32 TFLite files", "mode": "Quantization mode"}


def _concept(name: str, description: str) -> str:
    if name in CONCEPTS:
        return CONCEPTS[name]
    text = (description or "").split(";")[0].split(" (")[0].split(":")[0].strip()
    return text[:1].upper() + text[1:]


def _cli_options() -> dict:
    """``{field name: {option: [commands]}}`` of the generated step commands."""
    from tfopt.cli.steps import step_commands

    out: dict = {}
    for command_name, command in sorted(step_commands().items()):
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and param.name:
                out.setdefault(param.name, {}).setdefault(param.opts[0], []).append(command_name)
    return out


def _api_keywords() -> dict:
    """``{keyword: [functions]}`` of the public functions, the shared fine-tune keywords included."""
    import tfopt.api as api

    out: dict = {}
    for name in API_STEPS:
        for key, p in inspect.signature(getattr(api, name)).parameters.items():
            if p.kind == p.KEYWORD_ONLY or (p.kind == p.POSITIONAL_OR_KEYWORD and key not in ("model", "data")):
                out.setdefault(key, []).append(name)
    for key in ("epochs", *api.FINE_TUNE_KEYWORDS):
        out.setdefault(key, []).append("every fine-tuning function")
    return out


def rows() -> list[tuple]:
    """``(concept, recipe key, CLI option, API keyword)`` for every step setting."""
    from tfopt.steps import STEPS

    fields: dict = {}
    for step in STEPS:
        for name, field in (step.config.model_fields.items() if step.config is not None else ()):
            entry = fields.setdefault(name, {"steps": [], "description": field.description})
            entry["steps"].append(step.recipe_section)
    cli, api = _cli_options(), _api_keywords()
    out = []
    for name, entry in fields.items():
        sections = entry["steps"]
        if len(sections) > 1 and all(s.startswith("optimize.") for s in sections):
            recipe = "optimize.{" + ",".join(s.removeprefix("optimize.") for s in sections) + "}." + name
        else:
            recipe = ", ".join(f"{s}.{name}" for s in sections)
        options = "; ".join(f"`{opt}` ({', '.join(cmds)})" for opt, cmds in cli.get(name, {}).items()) or "—"
        keyword = f"`{name}` ({', '.join(dict.fromkeys(api[name]))})" if name in api else "—"
        out.append((_concept(name, entry["description"]), f"`{recipe}`", options, keyword))
    return out


def table() -> str:
    lines = ["| concept | recipe key | CLI option | API keyword |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {' | '.join(r)} |" for r in rows()]) + "\n"


def test_docs_names_md_holds_the_table_built_from_the_code():
    assert table() in DOC.read_text(), "docs/names.md is out of date: run python tests/test_names.py and paste it"


def test_a_setting_has_one_name_on_the_command_line_and_in_the_api():
    from tfopt.steps import STEPS

    cli, api = _cli_options(), _api_keywords()
    for step in STEPS:
        for name in (step.config.model_fields if step.config is not None else ()):
            assert set(cli.get(name, {})) <= {"--" + name.replace("_", "-")}, (step.name, name, cli.get(name))
    for function, steps in API_STEPS.items():
        fields = {f for s in steps for f in (STEPS[s].config.model_fields if STEPS[s].config else ())}
        for keyword, functions in api.items():
            if function in functions and keyword in ("layers", "protect", "probe"):
                assert function in ("remove_layers", "fold_pool") and keyword == "layers", (function, keyword)
        assert fields, function


@pytest.mark.parametrize("section, old, new, value", [("prune", "layers", "per_layer", {"fc1": 0.5}),
                                                      ("structured", "protect", "skip", ["fc1"]),
                                                      ("remove", "budget", "max_drop", 0.5)])
def test_an_old_recipe_key_is_refused_with_the_new_name(section, old, new, value):
    from tfopt.errors import TfoptError
    from tfopt.steps import STEPS

    with pytest.raises(TfoptError, match=rf"optimize\.{section}\.{old}: renamed to {new}"):
        STEPS[section].configure({old: value})


@pytest.mark.parametrize("function, old, new", [("prune", "layers", "per_layer"), ("prune", "probe", "probe_samples"),
                                                ("prune_channels", "protect", "skip"),
                                                ("wrap_for_pruning", "layers", "per_layer")])
def test_an_old_api_keyword_is_refused_with_the_new_name(function, old, new):
    import tfopt
    import tf_keras as keras

    from tfopt.errors import TfoptError

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="fc1")])
    kw = {"total_steps": 10} if function == "wrap_for_pruning" else {"data": None}
    with pytest.raises(TfoptError, match=rf"{function}: keyword argument '{old}' renamed to {new}"):
        getattr(tfopt, function)(model, **kw, **{old: {"fc1": 0.5}})


@pytest.mark.parametrize("args, message", [(["prune", "RUN", "--layer", "fc1=0.5"],
                                            "--layer was renamed --per-layer: write --per-layer fc1=0.5"),
                                           (["prune", "RUN", "--structured", "--protect", "fc1"],
                                            "--protect was renamed --skip: write --skip fc1")])
def test_an_old_flag_says_the_new_one_and_exits_2(args, message):
    from click.testing import CliRunner

    from tfopt.cli import cli

    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2 and res.output.strip() == f"Error: {message}", res.output


def test_step_commands_show_every_default_one_way():
    from tfopt.cli.steps import step_commands

    for name, command in step_commands().items():
        for param in command.params:
            text = " ".join((getattr(param, "help", "") or "").split())
            assert "default:" not in text.replace("[default:", ""), (name, param.name, text)


if __name__ == "__main__":
    sys.stdout.write(table())


def test_every_option_shows_its_default_one_way():
    import click

    from tfopt.cli import cli

    ctx = click.Context(cli)
    odd = []
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        sub = click.Context(command, info_name=name, parent=ctx)
        for param in command.params:
            record = param.get_help_record(sub) if isinstance(param, click.Option) else None
            text = record[1] if record else ""
            if "default:" in text.replace("[default:", "") or "(default" in text:
                odd.append(f"{name} {record[0]}: {text}")
    assert odd == []
