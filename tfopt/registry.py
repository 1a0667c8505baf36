"""One small registry used for layers, optimizers, schedules, losses, metrics and callbacks.

Each entry is a pydantic config class whose tag field (``name`` or ``type``) is a
``Literal``. The registry turns its entries into a discriminated union for the recipe
schema, and resolves identifiers the Keras way: a name, ``{name: ..., **kwargs}`` or an
instance. Config classes import no TensorFlow at module level, so validation stays light.
"""

from __future__ import annotations

import difflib
import typing
from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tfopt.errors import TfoptError


def did_you_mean(word, choices) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Config(BaseModel):
    """Base for every recipe section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class Registry:
    """Named config classes of one kind, e.g. ``Registry("optimizer")``.

    Example:
        >>> OPTIMIZERS = Registry("optimizer")
        >>> @OPTIMIZERS.register
        ... class Adam(Config):
        ...     name: Literal["adam"] = "adam"
        >>> OPTIMIZERS.get("adam")
        Adam(name='adam')
    """

    def __init__(self, kind: str, key: str = "name"):
        self.kind = kind
        self.key = key
        self._entries: dict[str, type[Config]] = {}

    def register(self, cls):
        for name in typing.get_args(cls.model_fields[self.key].annotation):
            self._entries[name] = cls
        return cls

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
            from tfopt.recipe import format_validation_errors

            problems = format_validation_errors(exc, data, cls)
            raise TfoptError(
                f"invalid {self.kind} '{data[self.key]}': "
                + "; ".join(f"{k}: {m}" if k else m for k, m in problems)
            ) from None
