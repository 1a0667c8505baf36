"""The input of every optimization command: a run directory, or a model file plus a recipe."""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tfopt import layer_kinds
from tfopt.config.layers import fmt_shape
from tfopt.config.limits import model_file_kind
from tfopt.config.recipe import KNOWN_CLASSES, load_recipe
from tfopt.errors import TfoptError
from tfopt.interop import load_as_tf_keras
from tfopt.rundir import PARTIAL


@dataclass
class Source:
    """A model to optimize, always tf_keras here; ``kind`` is what the file held (``"tf_keras"``
    or ``"keras3"``), so outputs can be written as the same kind (``interop.save_like``)."""

    model: object
    recipe: object
    name: str
    path: Path
    metrics: dict | None = None
    kind: str = "tf_keras"


def source_recipe(path, recipe=None, overrides=()):
    """The recipe :func:`load_source` would use for ``path``, read without loading the model
    (None when there is none: :func:`load_source` then says what is wrong)."""
    p = Path(path)
    chosen = recipe or (p / "recipe.yaml" if p.is_dir() and (p / "recipe.yaml").is_file() else None)
    return load_recipe(chosen, overrides) if chosen else None


def beside(source_path) -> Path:
    """The folder a run made from ``source_path`` goes to by default: the one holding the source
    (a run directory or a model file), so chained steps stay together wherever they run from."""
    return Path(os.path.abspath(source_path)).parent


def check_writable(folder, named=None, *, what: str = "the output folder", flag: str = "--output") -> Path:
    """Create ``folder`` (and its parents) and write a probe file in it, then remove both, so an
    output that cannot be written is refused before any work rather than after it.

    Args:
        folder: the folder to write in.
        named: the output the user gave, when ``folder`` is its parent (errors name it).
        what: what cannot be written, in the message (``"the run directory"``, ``"--plot"``).
        flag: the option that changes it, in the message (a flag other than ``--output`` names
            a file: "give it a path in a folder").

    Raises:
        TfoptError: ``folder`` cannot be created or written, with the reason.
    """
    f = Path(folder)
    shown = Path(named) if named is not None else f
    head = f"cannot write {what} {shown}"
    give = f"Give {flag} a folder" if flag == "--output" else f"Give {flag} a path in a folder"
    existing = next((a for a in [f, *f.parents] if a.exists()), None)
    if existing is not None and not existing.is_dir():
        raise TfoptError(f"{head}: {existing} is a file, not a folder. {give}.")
    if existing is not None and existing.resolve().parts[1:2] in (("proc",), ("sys",)):
        raise TfoptError(f"{head}: /{existing.resolve().parts[1]} is the kernel's virtual file system, not storage. "
                         f"{give} you can write to.")
    missing = [a for a in [f, *f.parents] if not a.exists()]
    try:
        f.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tfopt-write-test-", dir=f)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise TfoptError(f"{head}: {exc.strerror or exc} (in {existing}). {give} you can write to.") from None
    finally:
        for created in missing:  # the probe leaves no trace: the run creates its folders when it is written
            try:
                created.rmdir()
            except OSError:
                break
    return f


def looks_like(path) -> str:
    """What a file that is not a model looks like, in a few words (from its name and first bytes)."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(512)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not head:
        return "empty"
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8")):
        return "an image"
    if b"\x00" in head:
        return "a binary file of an unknown kind"
    if p.suffix.lower() in (".yaml", ".yml") or b"\nmodel:" in b"\n" + head or b"\ndata:" in b"\n" + head:
        return "a YAML recipe"
    return "a text file"


def check_source_path(path) -> None:
    """Refuse a SOURCE that cannot be a model, from its name and first bytes only: no model is
    loaded and no TensorFlow imported, so a wrong argument is answered at once.

    Raises:
        TfoptError: ``path`` does not exist, is an unfinished run, a TFLite file, or a file that
            is not a model (the message says what it looks like).
    """
    p = Path(path)
    if p.name.endswith(PARTIAL):
        raise TfoptError(f"{p} is an unfinished run; finish it with tfopt fit --resume first.")
    if not p.exists():
        raise TfoptError(f"{p} does not exist: give a run directory from tfopt fit, or a model file with --recipe.")
    if p.is_dir():
        model = p / "model.keras"
        if (p / "recipe.yaml").is_file() and model.is_file() and model_file_kind(model) is None:
            raise TfoptError(f"{model} is not a model file: it is {looks_like(model)}; the "
                             f"run directory {p} is damaged. Train it again with tfopt fit --overwrite.")
        return
    kind = model_file_kind(p)
    if kind is not None and "TFLite" in kind:
        raise TfoptError(f"{p} is {kind}: TFLite files cannot be fine-tuned or optimized further; give the run "
                         f"directory it came from, or its .keras model with --recipe.")
    if kind is None:
        raise TfoptError(f"{p} is not a model file: it is {looks_like(p)}. Give a run directory from tfopt fit, or a "
                         f"model file (.keras, .h5) with --recipe.")


def budget_seconds(text) -> float | None:
    """A time budget in seconds: ``None`` (no budget), a number, or ``"30m"``, ``"1h"``, ``"90s"``.

    Raises:
        TfoptError: anything else, or a budget that is not finite and above zero.
    """
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600}
    s = str(text).strip().lower()
    try:
        seconds = float(text) if isinstance(text, (int, float)) else (
            float(s[:-1]) * units[s[-1]] if s and s[-1] in units else float(s))
    except ValueError:
        raise TfoptError(f"time budget: expected seconds or a duration such as 30m, 1h, 90s; got {text!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise TfoptError(f"time budget: must be a finite duration above zero, e.g. 30m; got {text!r}")
    return seconds


def check_search_limits(max_drop=None, time_budget=None, max_candidates=None, epochs=None) -> None:
    """Refuse search settings no search can honour, before any work.

    Args:
        max_drop: accuracy points that may be lost: finite, in [0, 100].
        time_budget: see :func:`budget_seconds`.
        max_candidates: at least 1 (None: no limit).
        epochs: fine-tune epochs, at least 1.

    Raises:
        TfoptError: the first setting out of range, with what was received and what is allowed.
    """
    if max_drop is not None and not (isinstance(max_drop, (int, float)) and math.isfinite(max_drop)
                                     and 0 <= max_drop <= 100):
        raise TfoptError(f"max drop (--max-drop): the accuracy points that may be lost must be a finite number from "
                         f"0 to 100; got {max_drop!r}")
    budget_seconds(time_budget)
    for name, value in (("max candidates (--max-candidates)", max_candidates), ("epochs (--epochs)", epochs)):
        if value is not None and not (isinstance(value, int) and value >= 1):
            raise TfoptError(f"{name}: must be a whole number of at least 1; got {value!r}")


def load_source(path, recipe=None, overrides=()) -> Source:
    """Load ``path`` (a run directory, or a ``.keras``/``.h5``/SavedModel with ``recipe``)."""
    p = Path(path)
    check_source_path(p)
    if p.name.endswith(PARTIAL):
        raise TfoptError(f"{p} is an unfinished run; finish it with tfopt fit --resume first.")
    if p.is_dir() and (p / "recipe.yaml").is_file():
        if not (p / "model.keras").is_file():
            raise TfoptError(f"{p} is a run directory without model.keras; there is no Keras model to optimize.")
        r = load_recipe(recipe or p / "recipe.yaml", overrides)
        model, kind = load_as_tf_keras(p / "model.keras")
        metrics_path = p / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
        source = Source(model, r, p.name, p, metrics, kind)
    elif p.is_dir() and (p / "model.keras").is_file() and recipe is not None:
        r = load_recipe(recipe, overrides)
        model, kind = load_as_tf_keras(p / "model.keras")
        source = Source(model, r, p.name, p, kind=kind)
    elif p.is_dir() and not (p / "saved_model.pb").is_file():
        if (p / "model.keras").is_file():
            raise TfoptError(f"{p} looks like a run directory but its recipe.yaml is missing; pass --recipe RECIPE "
                             f"naming its data, or give {p / 'model.keras'} with --recipe.")
        what = "an empty folder" if not any(p.iterdir()) else "a folder that is neither a run directory"
        raise TfoptError(f"{p} is {what}{' (no recipe.yaml and model.keras) nor a SavedModel' if 'neither' in what else ''}"
                         f": give a run directory from tfopt fit, or a model file (.keras, .h5, SavedModel) with --recipe.")
    elif p.exists():
        if recipe is None:
            raise TfoptError(f"{p} is a model file: pass --recipe RECIPE so tfopt knows its data and training settings.")
        r = load_recipe(recipe, overrides)
        model, kind = load_as_tf_keras(p)
        source = Source(model, r, p.stem if p.is_file() else p.name, p, kind=kind)
    else:
        raise TfoptError(f"{p} does not exist: give a run directory from tfopt fit, or a model file with --recipe.")
    check_matches(source)
    layer_kinds.check_known(source.model)  # a layer tfopt does not know is refused by name, before any work
    return source


def load_teacher(path, student):
    """The model in ``path`` (a run directory or a model file) as a tf_keras teacher for
    ``student``: it must take the same inputs and give as many outputs."""
    p = Path(path)
    if p.is_dir() and (p / "model.keras").is_file():
        p = p / "model.keras"
    elif not p.exists():
        raise TfoptError(f"teacher: {path} does not exist: give a run directory from tfopt fit or a model file.")
    elif p.is_dir() and not (p / "saved_model.pb").is_file():
        raise TfoptError(f"teacher: {path} is a folder without model.keras or saved_model.pb: give a run directory "
                         f"from tfopt fit or a model file.")
    teacher, _ = load_as_tf_keras(p)
    check_teacher(teacher, student, path)
    return teacher


def check_teacher(teacher, student, label) -> None:
    """Refuse a teacher that takes other inputs or gives another number of outputs than ``student``."""

    def shapes(shape):
        return " and ".join(fmt_shape(x[1:]) for x in (shape if isinstance(shape, list) else [shape]))

    for what, t, s in (("takes", teacher.input_shape, student.input_shape),
                       ("outputs", teacher.output_shape, student.output_shape)):
        if shapes(t) != shapes(s):
            raise TfoptError(f"teacher: {label} {what} {shapes(t)} where the model being optimized {what} {shapes(s)}; "
                             f"a teacher must take the same inputs and give as many outputs.")


def check_matches(source: Source) -> None:
    """Refuse a recipe whose data cannot feed the model."""
    model, r = source.model, source.recipe
    want = tuple(model.input_shape[1:])
    have = r.input_shape()
    if have is not None and tuple(have) != want:
        raise TfoptError(
            f"{source.path}: the model takes {fmt_shape(want)} inputs but the recipe's data '{r.data.name}' gives "
            f"{fmt_shape(have)} images; pass the recipe the model was trained with (--recipe)."
        )
    classes = KNOWN_CLASSES.get(r.data.name) or getattr(r.data, "classes", None)
    if classes and tuple(model.output_shape[1:]) != (classes,):
        raise TfoptError(
            f"{source.path}: the model outputs {fmt_shape(model.output_shape[1:])} values but the recipe's data "
            f"'{r.data.name}' has {classes} classes; pass the recipe the model was trained with (--recipe)."
        )
