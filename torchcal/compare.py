"""Fit several calibrators on one validation split and score them on one test split.

Example:
    >>> import torch, torchcal
    >>> _ = torch.manual_seed(0)
    >>> logits = torch.randn(4000, 5) * 3
    >>> labels = torch.distributions.Categorical(logits=logits / 2).sample()
    >>> table = torchcal.compare(logits[:2000], labels[:2000], logits[2000:], labels[2000:],
    ...                          methods=["temperature", "isotonic"], n_resamples=100)
    >>> list(table.summaries)
    ['uncalibrated', 'temperature', 'isotonic']
    >>> table.best("NLL")
    'temperature'
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from torchcal._inputs import prepare
from torchcal._report import METRICS, format_table
from torchcal.calibrators.base import Calibrator
from torchcal.metrics import Bootstrap, MetricInterval

__all__ = ["DEFAULT_METHODS", "Comparison", "MethodSpec", "Metric", "compare"]

#: The methods compared by default, in table order (after the uncalibrated baseline).
DEFAULT_METHODS = (
    "temperature",
    "vector",
    "matrix",
    "dirichlet",
    "ensemble_temperature",
    "histogram",
    "isotonic",
)
#: The row name of the uncalibrated model's probabilities.
UNCALIBRATED = "uncalibrated"
_LOWER_IS_BETTER = {"NLL", "ECE", "MCE", "Brier"}

#: A test-split metric of a :class:`Comparison`; only accuracy is better when higher.
Metric = Literal["accuracy", "NLL", "ECE", "MCE", "Brier"]
#: A method to compare: a calibrator kind (e.g. ``"temperature"``) or an unfitted calibrator.
MethodSpec = str | Calibrator


@dataclass(frozen=True)
class Comparison:
    """Test-split metrics per method, the calibrators fitted, and their fit times.

    Attributes:
        summaries: method name -> metric name (accuracy, NLL, ECE, MCE, Brier) -> value with a
            bootstrap interval, on the test split. The first method is ``"uncalibrated"``.
        calibrators: method name -> the calibrator fitted on the validation split.
        fit_seconds: method name -> wall-clock seconds of its fit.
    """

    summaries: dict[str, dict[str, MetricInterval]]
    calibrators: dict[str, Calibrator]
    fit_seconds: dict[str, float]

    def best(self, metric: Metric) -> str:
        """The method with the best value of ``metric`` (highest accuracy, lowest otherwise).

        Args:
            metric: ``"accuracy"``, ``"NLL"``, ``"ECE"``, ``"MCE"`` or ``"Brier"``.
        """
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {sorted(METRICS)}, got {metric!r}")
        sign = 1.0 if metric in _LOWER_IS_BETTER else -1.0
        return min(self.summaries, key=lambda name: sign * self.summaries[name][metric].value)

    def to_markdown(self, *, fit_times: bool = True) -> str:
        """A markdown table: one row per method, values with their bootstrap intervals.

        Args:
            fit_times: add a column of fit times (leave them out where output must not vary
                from run to run).
        """
        header = [*METRICS, "fit time"] if fit_times else list(METRICS)
        lines = ["| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        for name, summary in self.summaries.items():
            cells = [f"{summary[metric]}" for metric in METRICS]
            if fit_times:
                cells.append(_format_seconds(self.fit_seconds.get(name)))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return format_table(self.summaries, rows="names")


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _calibrators(methods: Sequence[MethodSpec] | Mapping[str, MethodSpec]) -> dict[str, Calibrator]:
    named = methods.items() if isinstance(methods, Mapping) else ((None, m) for m in methods)
    calibrators: dict[str, Calibrator] = {}
    for name, method in named:
        if isinstance(method, str):
            if method not in Calibrator.registry:
                known = ", ".join(repr(kind) for kind in Calibrator.registry)
                raise ValueError(f"unknown calibration method {method!r}; known: {known}")
            calibrator = Calibrator.registry[method]()
        elif isinstance(method, Calibrator):
            if method.model is not None:
                raise ValueError(
                    "compare works on logits: pass calibrators without a wrapped model"
                )
            if method.inputs != "logits" or method.class_dim not in (None, 1, -1):
                raise ValueError(
                    f"compare fits each calibrator on (M, K) rows of logits; this {method.kind} "
                    f"calibrator has inputs={method.inputs!r}, class_dim={method.class_dim!r}: "
                    "build it with the defaults and pass inputs= and class_dim= to compare"
                )
            calibrator = method
        else:
            raise TypeError(
                f"methods must be calibrator kinds or Calibrator instances, got "
                f"{type(method).__name__}"
            )
        label = name or calibrator.kind
        if label in calibrators or label == UNCALIBRATED:
            raise ValueError(f"method {label!r} is given twice: name them with a dict")
        calibrators[label] = calibrator
    return calibrators


def compare(
    logits_val: Tensor,
    labels_val: Tensor,
    logits_test: Tensor,
    labels_test: Tensor,
    methods: Sequence[MethodSpec] | Mapping[str, MethodSpec] = DEFAULT_METHODS,
    *,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
    inputs: Literal["logits", "probs"] = "logits",
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> Comparison:
    """Fit each method on the validation split; score it on the test split.

    Every softmax shape is accepted (see :class:`~torchcal.TemperatureScaler`): the splits are
    flattened to (M, K) rows first, leaving out labels equal to ``ignore_index``.

    The test-split bootstrap intervals are drawn once for all methods: each method's metrics
    come from per-sample statistics of its test probabilities.

    Args:
        logits_val: the logits the calibrators are fitted on.
        labels_val: their labels.
        logits_test: the logits the calibrators are scored on.
        labels_test: their labels.
        methods: calibrator kinds (``torchcal.Calibrator.registry``, e.g. ``"temperature"``,
            ``"isotonic"``), unfitted calibrator instances (for non-default options), or a dict
            naming them. The uncalibrated model is always the first row.
        class_dim: the class dimension of the logits; ``None`` infers it from the labels' shape
            (as for :class:`~torchcal.TemperatureScaler`).
        ignore_index: labels equal to this are left out (``None``: none are).
        inputs: ``"logits"``, or ``"probs"`` (probabilities, used as log-probabilities).
        n_resamples: the number of bootstrap resamples of the test split.
        confidence: the bootstrap intervals' confidence level.
        seed: the bootstrap's random seed.
        progress: show progress bars (tqdm, on stderr) for the fits and the bootstrap.

    Returns:
        A :class:`Comparison`; ``print(comparison)`` shows the table.
    """
    options = {"activation": "softmax", "class_dim": class_dim, "ignore_index": ignore_index}
    val = prepare(logits_val, labels_val, inputs=inputs, **options).rows()
    test = prepare(logits_test, labels_test, inputs=inputs, **options).rows()
    if val.logits.shape[1] != test.logits.shape[1]:
        raise ValueError(
            f"the validation split has {val.logits.shape[1]} classes but the test split has "
            f"{test.logits.shape[1]}"
        )
    calibrators = _calibrators(methods)

    bootstrap = Bootstrap(n_resamples=n_resamples, confidence=confidence, seed=seed)
    # torch.optim's first optimizer in a process imports torch._dynamo (about 1.5 s on a CPU):
    # pay it here so that it is not charged to whichever method happens to be timed first.
    torch.optim.LBFGS([torch.zeros(1, requires_grad=True)])
    bootstrap.add(UNCALIBRATED, METRICS, torch.softmax(test.logits.double(), dim=1), test.labels)
    fit_seconds: dict[str, float] = {}
    for name, calibrator in tqdm(
        calibrators.items(), desc="fitting", unit="method", disable=not progress
    ):
        start = time.perf_counter()
        calibrator.fit(val.logits, val.labels, progress=False)
        fit_seconds[name] = time.perf_counter() - start
        with torch.no_grad():
            probs = calibrator.predict_proba(test.logits)
        bootstrap.add(name, METRICS, probs.double(), test.labels)
    summaries = bootstrap.intervals(progress=progress)
    return Comparison(summaries=summaries, calibrators=calibrators, fit_seconds=fit_seconds)
