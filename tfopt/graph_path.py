"""The graph path of the Python API: a Keras 3 model in through a tf_keras copy, refusals in one
paragraph, and channel pruning of a Keras 3 model whose data has several inputs or outputs."""

from __future__ import annotations

from tfopt import interop
from tfopt.config.fine_tune import FineTuneSettings
from tfopt.config.validation import validated
from tfopt.errors import TfoptError
from tfopt.kinds import enter, leave
from tfopt.steps import STEPS

#: How a refusal of a graph-path function for a Keras 3 model starts: ``"<function> cannot take the model"``.
GRAPH_REFUSAL = "cannot take the model"


def refusal(what: str, model, reason: str) -> TfoptError:
    """One paragraph: why a Keras 3 model cannot take a graph-path step, and what works on it."""
    import re

    reason = " ".join(str(reason).split())
    reason = re.sub(r"^model '[^']*'( \([^)]*\))? cannot be converted from \w+ to \w+: ", "", reason)
    reason = re.sub(r"^model '[^']*'( \([^)]*\))? is ", "it is ", reason)
    reason = re.split(r"(?<=[a-z0-9)'])(?:; |\. )", reason, maxsplit=1)[0].rstrip(".")
    return TfoptError(
        f"{what} {GRAPH_REFUSAL} '{model.name}' ({type(model).__name__}): {reason}. {what} rewrites a Sequential or "
        f"functional model of built-in layers on a tf_keras copy rebuilt layer by layer; prune, cluster, "
        f"quantize_aware and to_tflite work on any Keras 3 model, this one included.")


def enter_graph(what: str, model):
    """:func:`tfopt.kinds.enter` for a graph-path function: a Keras 3 model that cannot be
    converted is refused by :func:`_refusal` (a tf_keras one as before)."""
    try:
        return enter(model)
    except Exception as e:  # noqa: BLE001  (any failure to convert a Keras 3 model is a refusal)
        if interop.model_kind(model) != "keras3" or not isinstance(e, (TfoptError, ValueError, TypeError,
                                                                        NotImplementedError, AttributeError,
                                                                        KeyError)):
            raise
        reason = str(e) if isinstance(e, TfoptError) else \
            f"converting it to tf_keras failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        raise refusal(what, model, reason) from None


def several(data) -> bool:
    """Whether in-memory data has several inputs or outputs (``x`` or ``y`` a list or a dict)."""
    parts = [data] if isinstance(data, dict) else list(data[:2]) if isinstance(data, (tuple, list)) else []
    return any(isinstance(p, (dict, list, tuple)) for p in parts)


def graph_data(what: str, model, kind: str, data) -> None:
    """The graph path fine-tunes and checks one input and one output: for a Keras 3 model, data
    whose ``x`` or ``y`` is a list or a dict is refused in one paragraph."""
    if kind != "keras3" or data is None:
        return
    if several(data):
        raise refusal(what, model, "its data has several inputs or outputs (x or y a list or a dict), and this "
                                    "step fine-tunes and checks models of one input and one output")


class graph_step:
    """Around a graph-path step on a Keras 3 model's copy: an error that is not a TfoptError
    becomes a refusal in one paragraph naming it (a tf_keras model's errors pass as before)."""

    def __init__(self, what, model, kind):
        self.what, self.model, self.kind = what, model, kind

    def __enter__(self):
        return self

    def __exit__(self, cls, error, _trace):
        if error is None or self.kind != "keras3" or isinstance(error, TfoptError) or not isinstance(error, Exception):
            return False
        first = str(error).splitlines()[0] if str(error) else ""
        raise refusal(self.what, self.model, f"the step failed on its tf_keras copy ({cls.__name__}: {first})"
                       ) from None


def channels_of_several(model, data, settings: dict, fine, verbose: int, seed, log):
    """prune_channels on a Keras 3 model whose data has several inputs or outputs: each round's
    surgery runs on the tf_keras copy, checked against the masked original on the data's own
    inputs; the fine-tune is the Keras 3 engine's, on the data as given (the model's own loss, else
    one inferred per head)."""
    from tfopt.config.choices import DATA_CRITERIA
    from tfopt.engines.keras3 import public
    from tfopt.steps.structured import channel_prune, first_rows, per_round

    what = "prune_channels"
    if settings["criterion"] in DATA_CRITERIA:
        raise TfoptError(f"{what}: criterion '{settings['criterion']}' ranks channels on data of one input and one "
                         f"output; with several inputs or outputs rank them by their weights: l1, l2 or bn_gamma")
    step = STEPS["structured"]
    config = validated(step.config, {**settings, "lr": fine.lr, "batch_size": fine.batch_size}, "structured")
    one = config.model_copy(update={"rounds": 1, "ratio": per_round(config.ratio, config.rounds),
                                    "per_layer": {k: per_round(v, config.rounds) for k, v in config.per_layer.items()}})
    x = data[0] if isinstance(data, (tuple, list)) else data
    current = model
    for round_ in range(config.rounds):
        kind, work = enter_graph(what, current)
        with graph_step(what, model, kind):
            smaller, _ = channel_prune(work, None, one, FineTuneSettings(epochs=0), log=log, check_x=first_rows(x))
            current = leave(smaller, kind)
        if fine.epochs:
            current = public.fine_tune(what, current, data, fine, verbose, seed, log)
        log(f"{what}: round {round_ + 1}/{config.rounds} done")
    return current
