"""Readable validation errors: pydantic's errors as ``(dotted.key, message)`` pairs, with suggestions.

The base of every schema in tfopt (recipes, step configs, tune specs, registries); it imports
nothing of tfopt, so every layer above can use it.
"""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any, Literal, Union

from pydantic import BaseModel, ValidationError

from tfopt.errors import TfoptError

#: Every named-entry registry (layers, optimizers, schedules, ...) adds itself here, so an
#: unknown tag is reported as "unknown optimizer 'adma'" rather than "unknown name".
KINDS: list = []


def did_you_mean(word, choices) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unwrap(annotation):
    """The config classes an annotation can hold, through Optional, Annotated, list and Union."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (Union, list, tuple, dict) or str(origin) == "types.UnionType":
        out = []
        for arg in typing.get_args(annotation):
            out += _unwrap(arg)
        return out
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return []


_BRANCH = re.compile(r"^(constrained-|lax-|strict-)?(int|float|str|bool|bytes|none|decimal|any)$|\[|^function-|"
                     r"^literal|^nullable|^json-or-python|^default|^union|^tagged-union")


def _walk(root: type[BaseModel], loc: tuple):
    """Follow a pydantic error location through the schema.

    Returns the printable path (union tags and union branch labels such as
    ``constrained-int`` dropped), the config classes at its end, and the branch label of a
    non-discriminated union the error belongs to (or None).
    """
    classes, path, branch = [root], [], None
    for part in loc:
        if isinstance(part, int):
            path.append(str(part))
            continue
        if any(part in c.model_fields for c in classes):
            path.append(str(part))
            nxt = []
            for c in classes:
                if part in c.model_fields:
                    nxt += _unwrap(c.model_fields[part].annotation)
            classes = nxt
            continue
        extra = [c.extra_class(part) for c in classes if part in getattr(c, "extra_keys", lambda: ())()]
        if extra:  # a section a registry adds to its class (a registered step's settings)
            path.append(str(part))
            classes = extra
            continue
        tagged = [c for c in classes if _tag_of(c) and part in _tag_of(c)]
        if tagged:
            classes = tagged
            continue
        named = [c for c in classes if c.__name__ == part]
        if named:
            classes, branch = named, part
            continue
        if _BRANCH.search(part):
            branch = part
            continue
        path.append(str(part))
        classes = []
    return ".".join(path), classes, branch


def _tag_of(cls):
    for key in ("name", "type", "tune"):
        field = cls.model_fields.get(key)
        if field is not None and typing.get_origin(field.annotation) is Literal:
            return typing.get_args(field.annotation)
    return ()


def _short(value, limit=60):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "string_type": "a text value",
    "bool_type": "true or false", "bool_parsing": "true or false", "tuple_type": "a list",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping", "none_required": "nothing (null)",
}


def format_validation_errors(exc: ValidationError, data: Any, root: type[BaseModel]):
    """Turn pydantic's errors into ``(dotted.key, message)`` pairs, with suggestions.

    One mistake gives one problem: the errors pydantic reports for each branch of a union
    (``kernel_size`` may be an integer or a pair) are merged under the field's own key.
    """
    found = []  # (path, branch, kind, message, input)
    for err in exc.errors():
        path, _, branch = _walk(root, err["loc"])
        kind = err["type"]
        value = err.get("input")
        if kind == "union_tag_invalid":
            ctx = err["ctx"]
            disc = ctx["discriminator"].strip("'")
            tags = [t.strip(" '") for t in ctx["expected_tags"].split(",")]
            msg = (f"unknown {_registry_kind(tags)} '{ctx['tag']}'{did_you_mean(ctx['tag'], tags)}; "
                   f"available: {', '.join(tags)}")
            path = f"{path}.{disc}" if path else disc
        elif kind == "union_tag_not_found":
            disc = err["ctx"]["discriminator"].strip("'")
            msg = f"missing '{disc}'"
            path = f"{path}.{disc}" if path else disc
        elif kind == "extra_forbidden":
            key = str(err["loc"][-1])
            allowed = sorted(_allowed(root, err["loc"][:-1]))
            renamed = {k: v for c in _walk(root, tuple(err["loc"][:-1]))[1]
                       for k, v in getattr(c, "RENAMED", {}).items()}
            if key in renamed:
                msg = f"renamed to {renamed[key]}"
            elif "." in key and key.split(".", 1)[0] in allowed:
                head, rest = key.split(".", 1)
                msg = (f"unknown key '{key}': dotted keys work only with --set; in a recipe file nest it, "
                       f"e.g. {head}: {{{rest}: {_short(value, 30)}}}")
            else:
                msg = f"unknown key '{key}'{did_you_mean(key, allowed)}"
                if allowed:
                    msg += f"; allowed here: {', '.join(allowed)}"
        elif kind == "missing" and err["loc"] and isinstance(err["loc"][-1], int):
            parent, _, branch = _walk(root, err["loc"][:-1])
            path, kind = parent, "too_short"
            given = _container_at(data, root, err["loc"][:-1])
            count = len(given) if isinstance(given, (list, tuple)) else "fewer"
            msg = f"a list of the wrong length: expected {err['loc'][-1] + 1} values, got {count}"
            value = None
        elif kind == "missing":
            msg = "required key is missing"
        elif kind in ("int_parsing", "int_from_float", "float_parsing"):
            msg = f"expected {_EXPECTED[kind]}"
            if isinstance(value, str):
                msg += " (YAML reads a number such as 1e5 without a '.' as text: write 1.0e5)"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        if value is not None and not isinstance(value, dict) and kind not in ("extra_forbidden", "missing"):
            msg += f" (got {_short(value)})"
        found.append((path, branch, kind, msg))
    return _merge_branches(found)


def _merge_branches(found):
    """One problem per key: drop a union branch's type mismatch when another branch says more."""
    by_path: dict[str, list] = {}
    for path, branch, kind, msg in found:
        by_path.setdefault(path, []).append((branch, kind, msg))
    problems = []
    for path, items in by_path.items():
        if len(items) == 1 or all(b is None for b, _, _ in items):
            problems += [(path, m) for _, _, m in dict.fromkeys(items)]
            continue
        telling = [m for _, k, m in items if k not in _EXPECTED]
        if telling:
            problems += [(path, m) for m in dict.fromkeys(telling)]
            continue
        wanted = list(dict.fromkeys(_EXPECTED[k] for _, k, _ in items))
        got = items[0][2].rsplit(" (got ", 1)
        problems.append((path, f"expected {' or '.join(wanted)}" + (f" (got {got[1]}" if len(got) == 2 else "")))
    return problems


def _container_at(data, root, loc):
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, (list, tuple)) and isinstance(part, int) and -len(node) <= part < len(node):
            node = node[part]
        elif isinstance(part, str):
            continue  # a union tag or branch label, not a key of the data
        else:
            return None
    return node


def _allowed(root, loc) -> set:
    _, classes, _ = _walk(root, tuple(loc))
    return {f for c in classes for f in (*c.model_fields, *getattr(c, "extra_keys", lambda: ())())}


def _registry_kind(tags):
    for registry in KINDS:
        if set(tags) <= set(registry.names()):
            return registry.kind
    return "name"


def validated(cls, values: dict, where: str):
    """``cls`` built from ``values`` (``None`` values dropped, so defaults apply); a problem
    raises one :class:`TfoptError` naming each key as ``<where>.<key>``."""
    data = {k: v for k, v in values.items() if v is not None}
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise TfoptError("; ".join(f"{where}.{k}: {m}" for k, m in format_validation_errors(exc, data, cls))) from None
