"""One small registry used for layers, optimizers, schedules, losses, metrics and callbacks.

Each entry is a pydantic config class whose tag field (``name`` or ``type``) is a
``Literal``. The registry turns its entries into a discriminated union for the recipe
schema, and resolves identifiers the Keras way: a name, ``{name: ..., **kwargs}`` or an
instance. Config classes import no TensorFlow at module level, so validation stays light.
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tfopt.errors import TfoptError
from tfopt.config.limits import MAX_INT, MAX_SEED
from tfopt.config.validation import KINDS, did_you_mean, format_validation_errors

__all__ = ["Config", "Registry", "check_value", "did_you_mean"]


def _accepts_bool(annotation) -> bool:
    """Whether a field's type admits ``true``/``false`` (bool, Any, or a Literal of booleans)."""
    if annotation is bool or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _accepts_bool(typing.get_args(annotation)[0])
    if origin in (Union, list, tuple, dict) or str(origin) == "types.UnionType":
        args = typing.get_args(annotation)
        return any(_accepts_bool(a) for a in (args[-1:] if origin is dict else args))
    return False


def _plain_dict(annotation) -> bool:
    """Whether a field holds a plain ``dict`` (e.g. per-layer values), not a config section."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return True
    if origin is typing.Annotated:
        return _plain_dict(typing.get_args(annotation)[0])
    if origin is Union or str(origin) == "types.UnionType":
        return any(_plain_dict(a) for a in typing.get_args(annotation))
    return False


def _big(value) -> str:
    return f"{value:,}" if abs(value) < 1e15 else f"{value:.3g}"


def check_value(value, accepts_bool: bool = False, limit: int = MAX_INT):
    """Refuse values no recipe field can use: NUL bytes, non-finite floats, numbers beyond
    TensorFlow's 32-bit integer range, and booleans where a number is expected. Mappings inside
    lists are left to their own config class. Returns the value."""
    if isinstance(value, bool):
        if not accepts_bool:
            raise ValueError(f"expected a number or a name here, not the boolean {str(value).lower()}")
    elif isinstance(value, int):
        if abs(value) > limit:
            raise ValueError(f"{_big(value)} is too large; integers are limited to {limit:,} (limit: integers)")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        if abs(value) > limit:
            raise ValueError(f"{_big(value)} is too large; numbers are limited to {limit:,} (limit: integers)")
    elif isinstance(value, str):
        if "\x00" in value:
            raise ValueError("contains a NUL byte")
    elif isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, dict):
                check_value(item, accepts_bool, limit)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_value(key, True, limit)
            check_value(item, True, limit)
    return value


class Config(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are checked on assignment,
    and every value passes :func:`check_value` before its field's own validation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), defer_build=True)

    @model_validator(mode="before")
    @classmethod
    def _sane(cls, data):
        if not isinstance(data, dict):
            return data
        errors = []
        for key, value in data.items():
            field = cls.model_fields.get(key) if isinstance(key, str) else None
            if isinstance(value, dict) and not (field is not None and _plain_dict(field.annotation)):
                continue  # a nested section: its own config class checks it, key by key
            if isinstance(value, (bool, int, float, str, list, tuple, dict)):
                try:
                    check_value(value, field is None or _accepts_bool(field.annotation),
                                MAX_SEED if key == "seed" else MAX_INT)
                except ValueError as exc:
                    errors.append({"type": "value_error", "loc": (key,), "input": value, "ctx": {"error": exc}})
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return data


class Registry:
    """Named entries of one kind: the config classes of a recipe section (``Registry("optimizer")``)
    or the compression steps (:data:`tfopt.config.step_registry.STEPS`).

    Example:
        >>> OPTIMIZERS = Registry("optimizer")
        >>> @OPTIMIZERS.register
        ... class Adam(Config):
        ...     name: Literal["adam"] = "adam"
        >>> OPTIMIZERS.get("adam")
        Adam(name='adam')
    """

    def __init__(self, kind: str, key: str = "name", *, owner=lambda entry: entry.__qualname__, schema: bool = True):
        self.kind = kind
        self.key = key
        self._owner = owner
        self._entries: dict[str, Any] = {}
        if schema:  # its names are tags of recipe sections: validation messages name the kind
            KINDS.append(self)

    def add(self, name: str, entry):
        """Add ``entry`` under ``name``; a name taken by another entry raises. Returns the entry."""
        if name in self._entries and self._entries[name] is not entry:
            raise TfoptError(f"{self.kind} '{name}' is already registered (by {self._owner(self._entries[name])}); "
                             f"pick another name")
        self._entries[name] = entry
        return entry

    def register(self, cls):
        """Add a config class under every name its tag field allows; a name taken by another class raises."""
        for name in typing.get_args(cls.model_fields[self.key].annotation):
            self.add(name, cls)
        return cls

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register a toy entry)."""
        self._entries.pop(name, None)

    def __iter__(self):
        """The entries, each once, in registration order."""
        return iter(list({id(entry): entry for entry in self._entries.values()}.values()))  # a Step with ladders (dicts) is unhashable

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __getitem__(self, name) -> type[Config]:
        if name not in self._entries:
            raise TfoptError(self.unknown_message(name))
        return self._entries[name]

    def unknown_message(self, name) -> str:
        return (
            f"unknown {self.kind} '{name}'{did_you_mean(name, self._entries)}; "
            f"available: {', '.join(self._entries)}"
        )

    def union(self):
        """The discriminated union of all entries, for use as a field annotation.

        A bare string is accepted as shorthand for ``{key: string}``.
        """
        classes = tuple(dict.fromkeys(self._entries.values()))
        inner = classes[0] if len(classes) == 1 else Union[classes]  # noqa: UP007
        from pydantic import BeforeValidator

        return Annotated[
            Annotated[inner, Field(discriminator=self.key)],
            BeforeValidator(self._shorthand),
        ]

    def _shorthand(self, value):
        return {self.key: value} if isinstance(value, str) else value

    def get(self, identifier: Any) -> Config:
        """Resolve a name, a ``{name: ..., **kwargs}`` dict or a config instance."""
        if isinstance(identifier, Config):
            return identifier
        data = self._shorthand(identifier)
        if not isinstance(data, dict) or self.key not in data:
            raise TfoptError(
                f"cannot interpret {identifier!r} as a {self.kind}: give a name or a mapping "
                f"with '{self.key}'; available: {', '.join(self._entries)}"
            )
        cls = self[data[self.key]]
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = format_validation_errors(exc, data, cls)
            raise TfoptError(
                f"invalid {self.kind} '{data[self.key]}': "
                + "; ".join(f"{k}: {m}" if k else m for k, m in problems)
            ) from None
