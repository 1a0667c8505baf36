"""The one step registry: every compression and surgery step, registered once.

A :class:`Step` names its config class (the recipe's ``optimize.<name>`` section and the
command's options), the suffix of the run folder it writes and its library function
``function(model, data, config, fine_tune, *, log, **inputs) -> (model, report)``, where
``config`` is its validated config and ``fine_tune`` one :class:`FineTuneSettings`. The
commands, ``tune`` and ``optimize`` read this registry instead of naming steps themselves.
The built-in steps are registered by their modules in :mod:`tfopt.steps`, which that package
imports, so the registry is complete wherever it is read. Adding a step is one module with its
function plus one :func:`register` call::

    from tfopt.steps import register

    class HalveConfig(FineTune):
        factor: float = 0.5

    def halve(model, data, config, fine_tune, *, log=print, **inputs):
        ...
        return smaller, {"factor": config.factor}

    register("halve", HalveConfig, "halved", halve)

Imports no TensorFlow: the CLI builds its help from it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Union

from tfopt.config.fine_tune import FineTuneSettings
from tfopt.config.registry import Registry
from tfopt.config.validation import validated
from tfopt.errors import TfoptError


@dataclass(frozen=True)
class Step:
    """One compression or surgery step.

    Attributes:
        name: the step's name: recipe section ``optimize.<name>``, ``tune.compress`` entry.
        config: pydantic config class of its settings (fine-tune fields included), or None.
        suffix: the new run folder is ``<source>-<suffix>``; a callable gets the config.
        function: the library function, model in, ``(model, report)`` out.
        command: ``command(source, given, output=, overwrite=, log=) -> (path, metrics)`` when
            the step writes its run its own way; default: :func:`tfopt.steps.runs.run_generic`.
        apply: ``apply(model, recipe, splits, cfg, log) -> (model, tflite bytes or None)`` for
            chains (tune, optimize); default: the function with the recipe's fine-tune settings.
        chain: whether the step may appear in ``tune.compress`` and ``optimize`` chains.
        help: one line for the command's help.
        cli: its command's name; default: the name with ``-`` for ``_``; None: no command.
        cli_flag: the step is a variant of command ``cli`` chosen by ``--<cli_flag>`` (as
            ``tfopt prune --structured``); its options join that command's.
        section: the recipe section of its settings; default ``optimize.<name>``.
        distributed: its fine-tune runs under ``tf.distribute`` (``--workers``,
            ``train.distribute``); a step that does not is run in one process.
        ladders: what ``tfopt optimize`` tries: ``{target: [settings, ...]}`` from mild to harsh
            (``"*"``: every target). A step with a ladder becomes a stage of the search.
        token: ``token(settings) -> str``, the step's part of a candidate's id.
    """

    name: str
    config: Optional[type]
    suffix: Union[str, Callable]
    function: Callable
    command: Optional[Callable] = None
    apply: Optional[Callable] = None
    chain: bool = True
    help: str = ""
    cli: Optional[str] = ""
    cli_flag: Optional[str] = None
    section: str = ""
    distributed: bool = False
    ladders: Optional[dict] = None
    token: Optional[Callable] = None

    def configure(self, config=None):
        """The step's validated config from a mapping of settings (``None``: the defaults); a
        config instance is returned as is. A problem names each key as ``<section>.<key>``."""
        if self.config is None or isinstance(config, self.config):
            return config
        return validated(self.config, dict(config or {}), self.recipe_section)

    def run(self, model, data, config=None, fine_tune=None, *, log=print, **inputs):
        """The configured step on ``model``: ``function(model, data, config, fine_tune, log=log,
        **inputs)`` -> ``(new model, report)``. ``config`` is a config instance or a mapping of
        settings (validated here, once); ``fine_tune`` a :class:`FineTuneSettings` (default: its
        defaults); ``inputs`` are run-time inputs a step may take (e.g. ``probe`` images)."""
        ft = FineTuneSettings() if fine_tune is None else fine_tune
        return self.function(model, data, self.configure(config), ft, log=log, **inputs)

    def ladder(self, target: str) -> list:
        """The settings ``tfopt optimize`` tries for ``target`` (``size``, ``latency``, ``macs``),
        from mild to harsh: ``ladders[target]``, else ``ladders["*"]``, else none."""
        ladders = self.ladders or {}
        return list(ladders.get(target, ladders.get("*", [])))

    def candidate_token(self, settings: dict) -> str:
        """A short name for this step with ``settings`` in a candidate's id (``p90``, ``c16``)."""
        if self.token is not None:
            return self.token(settings)
        parts = [self.name] + [f"{k}{v}" for k, v in sorted(settings.items()) if not isinstance(v, (dict, list))]
        return "-".join(str(p) for p in parts).replace(" ", "")

    @property
    def command_name(self) -> Optional[str]:
        return self.name.replace("_", "-") if self.cli == "" else self.cli

    @property
    def recipe_section(self) -> str:
        return self.section or f"optimize.{self.name}"

    def folder_suffix(self, cfg=None) -> str:
        return self.suffix(cfg) if callable(self.suffix) else self.suffix


def _defined_by(step: Step) -> str:
    return f"{step.function.__module__}.{step.function.__qualname__}"


#: Every registered step, by name.
STEPS = Registry("step", owner=_defined_by, schema=False)


class Ref:
    """A function named ``"package.module:name"``, imported on its first call, so that reading
    the registry (``tfopt --help``, ``tfopt validate``) imports no step's implementation.

    Example:
        >>> Ref("json:dumps")([1])
        '[1]'
    """

    def __init__(self, target: str):
        self.target = target
        self.__module__, _, self.__qualname__ = target.partition(":")
        self.__name__ = self.__qualname__
        self.__doc__ = f"See :func:`{self.__module__}.{self.__qualname__}`."

    def resolve(self) -> Callable:
        """The function itself."""
        return getattr(importlib.import_module(self.__module__), self.__qualname__)

    def __call__(self, *args, **kwargs):
        return self.resolve()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Ref({self.target!r})"


def _callable(value):
    return Ref(value) if isinstance(value, str) else value


def register(name: str, config, suffix, function, *, command=None, apply=None, chain: bool = True,
             help: str = "", cli: Optional[str] = "", cli_flag: Optional[str] = None, section: str = "",
             distributed: bool = False, ladders: Optional[dict] = None, token: Optional[Callable] = None) -> Step:
    """Register a step once; see :class:`Step`. ``function``, ``command`` and ``apply`` may be given as
    ``"module:name"`` strings, imported on first use (:class:`Ref`). Returns the step."""
    function, command, apply = _callable(function), _callable(command), _callable(apply)
    doc = (function.__doc__ or "").strip().splitlines()
    return STEPS.add(name, Step(name, config, suffix, function, command=command, apply=apply, chain=chain,
                               help=help or (doc[0] if doc else name), cli=cli, cli_flag=cli_flag, section=section,
                               distributed=distributed, ladders=ladders, token=token))


def get(name: str) -> Step:
    """The registered step ``name`` (an unknown name raises, with a suggestion)."""
    return STEPS[name]


#: Entry-point group of installed packages that register steps, and the variable naming modules.
PLUGIN_GROUP = "tfopt.steps"
PLUGIN_ENV = "TFOPT_STEPS"


def load_plugins(environ=None) -> list[str]:
    """Import the modules that register more steps, for the command line: each module named in
    ``TFOPT_STEPS`` (comma-separated; importable from the current folder or the Python path)
    and each ``tfopt.steps`` entry point of an installed package. Returns the modules imported.

    Example: ``TFOPT_STEPS=my_steps tfopt zero-small RUN --threshold 0.1``.
    """
    import os
    import sys
    from importlib.metadata import entry_points

    environ = os.environ if environ is None else environ
    loaded = []
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as exc:  # noqa: BLE001  a broken plugin is reported, not a traceback
            raise TfoptError(f"the installed step plugin '{ep.name}' ({ep.value}) failed to load: "
                             f"{type(exc).__name__}: {exc}") from None
        loaded.append(ep.value)
    names = [n.strip() for n in environ.get(PLUGIN_ENV, "").split(",") if n.strip()]
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001
            raise TfoptError(f"{PLUGIN_ENV}: the module '{name}' could not be imported ({type(exc).__name__}: "
                             f"{exc}); name modules importable from the current folder or the Python path, "
                             f"separated by commas") from None
        loaded.append(name)
    return loaded
