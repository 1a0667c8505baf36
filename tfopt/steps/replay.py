"""A chain of steps replayed on a run: a recipe's ``optimize.steps`` (as ``tfopt optimize``
writes them to ``optimize.yaml``), each registered step in order with the recipe's fine-tune
settings, and one new run directory with the TFLite file the last step makes.

Imports no TensorFlow at module level: the command line loads it when the command runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from tfopt.config.limits import YamlLimitError, load_yaml, model_file_kind, read_text
from tfopt.config.steps import Optimize
from tfopt.config.step_registry import STEPS
from tfopt.config.validation import validated
from tfopt.errors import TfoptError
from tfopt.steps.quantize import post_training
from tfopt.steps.runs import (base_metrics, check_new_run, check_source, check_teacher_path, selection_split,
                              source_name, splits_of, write_run)
from tfopt.steps.settings import apply_step
from tfopt.steps.source import beside, check_writable, load_source
from tfopt.tflite import VerificationFailed, verify
from tfopt.tflite import accuracy as tflite_accuracy


def read_chain(path) -> Optimize:
    """The validated ``optimize:`` section of ``path`` (an ``optimize.yaml`` or a recipe) with its
    ``steps``.

    Raises:
        TfoptError: the file is missing, is a model or another file that is not YAML text (named
            for what it is), holds no ``optimize.steps``, or a step's settings are refused (each
            named ``optimize.steps.<i>.<step>.<key>``).
    """
    p = Path(path)
    wanted = "give the optimize.yaml a search wrote, or a recipe with optimize.steps"
    if not p.exists():
        raise TfoptError(f"{p} does not exist: {wanted}")
    kind = model_file_kind(p) if p.is_file() else None
    if kind is not None:
        raise TfoptError(f"{p} is {kind}, not a chain of steps: {wanted}; the model the chain runs on is SOURCE")
    try:
        data = load_yaml(read_text(p))
    except YamlLimitError as exc:
        raise TfoptError(f"{p} {exc}; {wanted}") from None
    except yaml.YAMLError as exc:
        raise TfoptError(f"{p} is not valid YAML: {exc}") from None
    section = data.get("optimize") if isinstance(data, dict) else None
    if not isinstance(section, dict) or not section.get("steps"):
        raise TfoptError(f"{p}: no optimize.steps to replay; expected optimize: {{steps: [{{step: settings}}, ...]}}")
    return validated(Optimize, {"steps": section["steps"], "distill": section.get("distill")}, f"{p}: optimize")


def _distilled(settings: dict, config, chain: Optimize, source) -> dict:
    """The step's settings with the chain's distillation, where the step fine-tunes: every step
    learns from ``distill.teacher``, else from the model the chain starts from (the source)."""
    if chain.distill is None or config is None or "distill" not in config.model_fields:
        return settings
    d = chain.distill
    return {**settings, "distill": True, "teacher": d.teacher or str(source.path), "temperature": d.temperature,
            "alpha": d.alpha}


def _file(report: dict):
    """``(mode, bytes)`` of the TFLite file a step's report holds, else None."""
    content = (report or {}).get("tflite")
    if isinstance(content, dict) and content:
        return next(iter(content.items()))
    return ("int8", content) if isinstance(content, bytes) else None


def replay_chain(source, chain: Optimize, log=print):
    """Run ``chain.steps`` in order on ``source.model`` (see :func:`replay`).

    Returns:
        ``(float model, TFLite mode, TFLite bytes, reference model it is verified against,
        [{step: settings used}])``.
    """
    splits = splits_of(source)
    model, reference, made, used = source.model, source.model, None, []
    for i, item in enumerate(chain.steps):
        ((name, settings),) = item.items()
        step = STEPS[name]
        cfg = step.configure(_distilled(settings, step.config, chain, source))
        log(f"step {i + 1} of {len(chain.steps)}: {name} {settings}")
        out, report = apply_step(step, model, source.recipe, splits, cfg, log=log)
        used.append({name: cfg.model_dump(mode="json") if cfg is not None else {}})
        made = _file(report) or made
        if made is not None and getattr(cfg, "mode", None) == "qat":
            made, reference = ("int8", made[1]), out
        elif _file(report) is None:
            model = reference = out
    if made is None:
        made = ("float32", post_training(model, "float32"))
    return model, made[0], made[1], reference, used


def check_replay(source_path, steps_file, *, recipe=None, overrides=(), output=None, overwrite=False) -> Optimize:
    """Everything :func:`replay` checks before it loads a model or imports TensorFlow: the chain
    (:func:`read_chain`) and its teacher, the source and its recipe, the output folder and the
    new run's folder. Returns the chain.

    Raises:
        TfoptError: the first problem found.
    """
    chain = read_chain(steps_file)
    check_source(source_path, recipe, overrides)
    if chain.distill is not None and chain.distill.teacher:
        check_teacher_path(chain.distill.teacher, f"{steps_file}: optimize.distill.teacher")
    check_writable(output or beside(source_path))
    check_new_run(source_path, source_name(source_path), "replayed", output, overwrite)
    return chain


def replay(source_path, steps_file, *, recipe=None, overrides=(), output=None, overwrite=False, log=print):
    """Replay the ``optimize.steps`` of ``steps_file`` on the run (or model file with ``recipe``)
    ``source_path``: each step in order, through the step registry, with the recipe's fine-tune
    settings and the chain's ``distill``; the last TFLite file made (int8 from ``quantize``,
    QAT's int8, or float32 when no step makes one) verified on the test split.

    Returns:
        ``(the new run's path, its metrics)``: ``steps`` (the source's and the chain's), the
        settings each step ran with (``replayed``), and the TFLite file's test and selection
        accuracy.

    Raises:
        TfoptError: as :func:`check_replay`, before any work; VerificationFailed: the TFLite
            file disagrees with its model (nothing is written).
    """
    chain = check_replay(source_path, steps_file, recipe=recipe, overrides=overrides, output=output,
                         overwrite=overwrite)
    source = load_source(source_path, recipe, overrides)
    splits = splits_of(source)
    model, mode, content, reference, used = replay_chain(source, chain, log=log)
    metrics = base_metrics(source, model, splits, log)
    threshold = source.recipe.export.min_agreement_float if mode in ("float32", "float16") \
        else source.recipe.export.min_agreement_int8
    v = verify(reference, content, splits.x_test, splits.y_test, mode, threshold, log=log)
    log("  " + v.line())
    if not v.passed:
        raise VerificationFailed(f"TFLite verification failed: {v.line()}. Nothing was written.")
    x_sel, y_sel = selection_split(splits)
    metrics.update(replayed=used, steps_file=str(steps_file), tflite={f"model_{mode}.tflite": {
        **v.__dict__, "bytes": len(content)}}, tflite_test_accuracy=tflite_accuracy(content, splits.x_test,
                                                                                      splits.y_test),
        tflite_selection_accuracy=tflite_accuracy(content, x_sel, y_sel))
    names = [next(iter(item)) for item in chain.steps]
    before = dataclasses.replace(source, metrics={**(source.metrics or {}), "steps": [
        *((source.metrics or {}).get("steps") or []), *names[:-1]]})
    r = source.recipe.model_copy(deep=True)
    r.optimize.steps, r.optimize.distill = chain.steps, chain.distill
    path = write_run(before, "replayed", recipe=r, metrics=metrics, model=model, step=names[-1],
                     files={f"model_{mode}.tflite": content}, output=output, overwrite=overwrite, log=log)
    return path, metrics
