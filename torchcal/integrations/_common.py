"""What the training-framework integrations share: build, fit, report and save a calibrator."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from torch import Tensor, nn

from torchcal._inputs.collect import Batches, _concatenate, collect_logits
from torchcal.calibrators.base import Calibrator
from torchcal.calibrators.temperature import TemperatureScaler

#: The prefix of every logged metric name.
PREFIX = "calibration/"


def make_calibrator(kind: str, model: nn.Module, options: dict[str, Any]) -> Calibrator:
    """A calibrator of ``kind`` (a key of :attr:`Calibrator.registry`) wrapping ``model``."""
    cls = Calibrator.registry.get(kind)
    if cls is None:
        known = ", ".join(repr(name) for name in sorted(Calibrator.registry))
        raise ValueError(f"kind must be one of {known}, got {kind!r}")
    return cls(model, **options)


def batches(
    loader: Iterable[Any],
    labels_key: str,
    input_index: int,
    label_index: int,
    output_fn: Callable[[Any], Tensor] | None,
) -> Batches:
    """``loader`` with the batch conventions given to a callback."""
    return Batches(
        loader,
        labels_key=labels_key,
        input_index=input_index,
        label_index=label_index,
        output_fn=output_fn,
    )


def is_distributed() -> bool:
    """Whether an initialised ``torch.distributed`` process group has more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def fit_calibrator(
    calibrator: Calibrator, loader: Batches, *, distributed: bool, progress: bool | None
) -> Calibrator:
    """Fit on ``loader``; with ``distributed`` on the data of every rank, identically everywhere.

    Temperature scaling uses its distributed fit (each rank streams its shard, the ranks exchange
    sums). The other calibrators have no distributed fit: every rank collects its shard's logits,
    the ranks exchange them, and each fits on all of them (O(N K) memory per rank).
    """
    if isinstance(calibrator, TemperatureScaler):
        return calibrator.fit(loader, progress=progress, distributed=distributed)
    if not distributed:
        return calibrator.fit(loader, progress=progress)
    import torch.distributed as dist

    options = getattr(calibrator, "options", dict)()
    logits, labels = collect_logits(
        calibrator.model,
        loader,
        progress=progress,
        class_dim=options.get("class_dim"),
        ignore_index=options.get("ignore_index", -100),
    )
    shards: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(shards, (logits.cpu(), labels.cpu()))
    logits, labels = _concatenate(
        [shard[0] for shard in shards],
        [shard[1] for shard in shards],
        options.get("class_dim"),
        options.get("ignore_index", -100),
    )
    return calibrator.fit(logits, labels, progress=progress)


def fit_metrics(calibrator: Calibrator) -> dict[str, float]:
    """NLL and ECE before and after calibration (and T), named ``calibration/...``."""
    results = calibrator.fit_result
    if not isinstance(results, tuple):
        results = (results,)
    metrics: dict[str, float] = {}
    for index, result in enumerate(results):
        prefix = PREFIX if len(results) == 1 else f"{PREFIX}label_{index}/"
        for name in ("nll_before", "nll_after", "ece_before", "ece_after"):
            metrics[prefix + name] = float(getattr(result, name))
        if result.temperature is not None:  # a temperature fit's record
            metrics[prefix + "temperature"] = float(result.temperature)
    return metrics


def save_path(save: bool | str | os.PathLike[str], folder: str | os.PathLike[str]) -> str | None:
    """Where to save: ``None`` for ``save=False``, ``folder/calibration.safetensors`` for True."""
    if save is False or save is None:
        return None
    if save is True:
        return os.path.join(os.fspath(folder), "calibration.safetensors")
    return os.fspath(save)
