"""Does a TFLite file compute what its Keras model computes? One rule per kind of head.

Every output (head) of the model is compared with the file's on the same inputs:

- **every head** — signal-to-noise ratio ``SNR = 10·log10(Σ y² / Σ (y − ŷ)²)`` in dB, ``y`` the
  model's output and ``ŷ`` the file's: how small the file's error is next to the outputs
  themselves. It must reach :data:`MIN_SNR_DB` for the mode: 60 dB for float32 (the same
  arithmetic), 40 dB for float16 and dynamic (16-bit or 8-bit weights, float activations), 20 dB
  for int8 (8-bit weights and activations: an error near 1% of the output's magnitude). Measured
  on the families of ``tests/test_model_families.py``, faithful files land at 135-145 dB
  (float32), 58-110 dB (float16), 63-145 dB (dynamic) and 34-49 dB (int8).
- **classifier heads** (one row of scores per input: a softmax, a sigmoid, or logits the model's
  loss reads ``from_logits``; rank 2, more than one unit) — top-1 agreement too, at least
  ``min_agreement`` (99.9% for float32 and float16, 99% for dynamic and int8). A disagreement is
  *excused* (counted as agreeing, and reported) when the model's own top-2 margin on that input
  is within the file's quantization error: twice the 90th percentile over inputs of the largest
  ``|y − ŷ|`` of an input. Such an input is a near tie: any faithful rounding may flip it. A
  one-unit sigmoid (or logit) head is a binary classifier: its margin is the distance to 0.5 (0).
- **per-pixel heads** (rank ≥ 3, a segmentation map), **regression heads** (a linear output)
  and every head of a multi-output model not named above: the SNR rule alone.

A refusal names what it measured: the head, the agreement, how many near ties were excused,
the SNR and the largest difference, with the thresholds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tfopt.tflite import VerificationFailed

#: The least SNR (dB) of every head, by TFLite mode.
MIN_SNR_DB = {"float32": 60.0, "float16": 40.0, "dynamic": 40.0, "int8": 20.0}
#: The least top-1 agreement of a classifier head, by TFLite mode.
MIN_AGREEMENT = {"float32": 0.999, "float16": 0.999, "dynamic": 0.99, "int8": 0.99}
#: A near tie: a margin within this many times the file's typical error (its 90th percentile).
TIE_FACTOR = 2.0
TIE_QUANTILE = 0.9

CLASSIFIER, BINARY, SIGNAL = "classifier", "binary", "signal"


def snr_db(reference, got) -> float:
    """The signal-to-noise ratio of ``got`` against ``reference``: ``10·log10(Σ y² / Σ (y − ŷ)²)``.

    Args:
        reference: the model's outputs ``y`` (an array).
        got: the file's outputs ``ŷ``, of the same shape.

    Returns:
        The SNR in dB: ``inf`` when the two are equal, ``-inf`` when ``reference`` is all zeros
        and ``got`` is not.
    """
    y = np.asarray(reference, np.float64)
    noise = float(np.sum((y - np.asarray(got, np.float64)) ** 2))
    signal = float(np.sum(y ** 2))
    if noise == 0:
        return float("inf")
    return 10.0 * float(np.log10(signal / noise)) if signal > 0 else float("-inf")


@dataclass
class HeadCheck:
    """One head's comparison."""

    name: str
    rule: str
    samples: int
    snr_db: float
    min_snr_db: float
    max_abs_diff: float
    agreement: float | None = None
    min_agreement: float | None = None
    excused: int = 0

    @property
    def passed(self) -> bool:
        """Whether the SNR, and for a classifier head the top-1 agreement, reach their thresholds."""
        ok = self.snr_db >= self.min_snr_db
        if self.agreement is not None:
            ok = ok and self.agreement >= self.min_agreement
        return ok

    def line(self, mode: str) -> str:
        """The head's measurements and thresholds in one line.

        Args:
            mode: the TFLite mode the line starts with.

        Returns:
            ``"<mode>: <head>top-1 agreement ..., SNR ... dB (threshold ... dB), max |Δoutput| ..."``.
        """
        parts = []
        if self.agreement is not None:
            parts.append(f"top-1 agreement with the model {self.agreement:.2%} on {self.samples} images "
                         f"(threshold {self.min_agreement:.2%}), {self.excused} near ties excused")
        parts.append(f"SNR {self.snr_db:.1f} dB (threshold {self.min_snr_db:.0f} dB)"
                     + ("" if self.agreement is not None else f" on {self.samples} inputs"))
        parts.append(f"max |Δoutput| {self.max_abs_diff:.3g}")
        return f"{mode}: {self.name}{', '.join(parts)}"


@dataclass
class Report:
    """All heads of one file."""

    mode: str
    heads: list = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every head passed."""
        return all(h.passed for h in self.heads)

    def lines(self) -> list:
        """Every head's line (see :meth:`HeadCheck.line`).

        Returns:
            One string per head.
        """
        return [h.line(self.mode) for h in self.heads]

    def failures(self) -> list:
        """The lines of the heads that failed.

        Returns:
            One string per failing head; empty when the file passed.
        """
        return [h.line(self.mode) for h in self.heads if not h.passed]


def _top1(reference, got, binary_at=None):
    """``(agreement with near ties excused, excused count)``."""
    error = np.max(np.abs(reference - got), axis=-1)
    tolerance = TIE_FACTOR * float(np.quantile(error, TIE_QUANTILE)) if error.size else 0.0
    if binary_at is not None:
        r, g = reference[:, 0], got[:, 0]
        disagree = (r > binary_at) != (g > binary_at)
        margin = np.abs(r - binary_at)
        tolerance /= TIE_FACTOR  # one value crosses the threshold: its own error is enough
    else:
        disagree = reference.argmax(-1) != got.argmax(-1)
        top = np.sort(reference, axis=-1)
        margin = top[:, -1] - top[:, -2]
    excused = disagree & (margin <= tolerance)
    return 1.0 - float(np.mean(disagree & ~excused)) if len(disagree) else 1.0, int(excused.sum())


def check_head(name, rule, reference, got, mode, min_agreement=None, min_snr=None, binary_at=0.5) -> HeadCheck:
    """Compare one head of the model with the file's under ``rule``.

    Args:
        name: the head's label in the line (``""`` for a model of one output, else
            ``"head '<name>': "``).
        rule: ``"classifier"``, ``"binary"`` or ``"signal"`` (see :func:`rule_for`).
        reference: the model's outputs for the head.
        got: the file's outputs for the head, of the same shape.
        mode: the TFLite mode whose default thresholds apply (``float32``, ``float16``,
            ``dynamic`` or ``int8``).
        min_agreement: least top-1 agreement of a classifier or binary head (default:
            :data:`MIN_AGREEMENT` of ``mode``).
        min_snr: least SNR in dB (default: :data:`MIN_SNR_DB` of ``mode``).
        binary_at: the decision threshold of a binary head (0.5 for a sigmoid, 0 for a logit).

    Returns:
        The head's :class:`HeadCheck` (its ``passed`` says whether it met the thresholds).

    Raises:
        tfopt.tflite.VerificationFailed: the file's output has another shape than the model's.
        KeyError: an unknown ``mode`` whose default threshold is needed.
    """
    reference = np.asarray(reference, np.float64)
    got = np.asarray(got, np.float64)
    if reference.shape != got.shape:
        raise VerificationFailed(f"TFLite verification failed: {mode}: {name}the file's output has shape "
                                 f"{got.shape}, the model's {reference.shape}")
    check = HeadCheck(name=name, rule=rule, samples=int(len(reference)), snr_db=snr_db(reference, got),
                      min_snr_db=MIN_SNR_DB[mode] if min_snr is None else float(min_snr),
                      max_abs_diff=float(np.max(np.abs(reference - got))) if reference.size else 0.0)
    if rule in (CLASSIFIER, BINARY):
        check.min_agreement = MIN_AGREEMENT[mode] if min_agreement is None else float(min_agreement)
        check.agreement, check.excused = _top1(reference.reshape(len(reference), -1), got.reshape(len(got), -1),
                                               binary_at if rule == BINARY else None)
    return check


def rule_for(kind: str, shape) -> tuple[str, float | None]:
    """The comparison rule for a head.

    Args:
        kind: the head's kind: ``"softmax"``, ``"sigmoid"``, ``"logits"`` or ``"regression"``.
        shape: the shape of the head's output, batch axis included.

    Returns:
        ``(rule, binary threshold)``: ``("classifier", None)`` for a softmax, sigmoid or logits
        head of one row of several scores per input; for such a head of one unit
        ``("binary", 0.5)`` (a sigmoid) or ``("binary", 0.0)`` (a logit); ``("signal", None)``
        for any other head (a map, a regression).
    """
    if len(shape) != 2 or kind not in ("softmax", "sigmoid", "logits"):
        return SIGNAL, None
    if shape[-1] > 1:
        return CLASSIFIER, None
    return BINARY, (0.5 if kind == "sigmoid" else 0.0)


def compare(references, gots, kinds, mode, names=None, min_agreement=None, min_snr=None) -> Report:
    """Compare every head of the model with the file's.

    Args:
        references: the model's outputs, one array per head.
        gots: the file's outputs, one array per head, in the same order.
        kinds: the heads' kinds (see :func:`rule_for`).
        mode: the TFLite mode whose default thresholds apply.
        names: the heads' names for the lines of a model of several outputs (default: their
            positions).
        min_agreement: least top-1 agreement of a classifier head (default: :data:`MIN_AGREEMENT`).
        min_snr: least SNR in dB of every head (default: :data:`MIN_SNR_DB`).

    Returns:
        A :class:`Report` of one :class:`HeadCheck` per head; a head below its thresholds is
        reported, not raised (see :func:`enforce`).

    Raises:
        tfopt.tflite.VerificationFailed: a head whose output shapes differ between model and file.
        KeyError: an unknown ``mode`` whose default threshold is needed.
    """
    report = Report(mode)
    several = len(references) > 1
    for i, (ref, got, kind) in enumerate(zip(references, gots, kinds)):
        label = (f"head '{names[i]}': " if names else f"head {i}: ") if several else ""
        rule, at = rule_for(kind, np.shape(ref))
        report.heads.append(check_head(label, rule, ref, got, mode, min_agreement, min_snr, at))
    return report


def enforce(report: Report, log=None) -> None:
    """Log each head's line, then refuse a file with a failing head.

    Args:
        report: the :class:`Report` of :func:`compare`.
        log: receives each head's line (none by default).

    Raises:
        tfopt.tflite.VerificationFailed: a head below its thresholds; the message holds the
            failing heads' lines.
    """
    for line in report.lines():
        if log:
            log(line)
    failures = report.failures()
    if failures:
        raise VerificationFailed(f"TFLite verification failed: {'; '.join(failures)}")
