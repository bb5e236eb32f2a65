"""Run a model over a data loader and gather its logits and labels."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from torchcal._sources import is_row_source


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def move_to(inputs: Any, device: torch.device) -> Any:
    """Move a tensor, or the tensors in a tuple/list/dict, to ``device``."""
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(move_to(item, device) for item in inputs)
    if isinstance(inputs, dict):
        return {key: move_to(value, device) for key, value in inputs.items()}
    return inputs


def _split_batch(batch: Any, index: int) -> tuple[Any, Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise TypeError(
            f"batch {index} of the loader must be a (inputs, labels) pair, "
            f"got {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    inputs, labels = batch[0], batch[1]
    if not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    return inputs, labels


class _EvalMode:
    """Put every submodule in eval mode and restore each one's own mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        return self.model

    def __exit__(self, *exc_info: object) -> None:
        for module, training in self.modes:
            module.training = training


def collect_logits(
    model: nn.Module | None,
    loader: Iterable[Any],
    *,
    progress: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Logits and labels for every batch of ``loader``, concatenated.

    The model runs in eval mode under ``torch.no_grad()`` on its own device; each submodule's
    train/eval mode is restored afterwards. With ``model=None`` the loader's inputs are taken to be
    logits already. ``progress=None`` shows a tqdm bar only on a terminal.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> loader = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(2)]
        >>> logits, labels = collect_logits(model, loader, progress=False)
        >>> tuple(logits.shape), tuple(labels.shape)
        ((16, 3), (16,))
    """
    logits_parts: list[Tensor] = []
    label_parts: list[Tensor] = []
    disable = None if progress is None else not progress
    batches = tqdm(loader, desc="Collecting logits", unit="batch", disable=disable, leave=False)
    if model is None:
        for index, batch in enumerate(batches):
            inputs, labels = _split_batch(batch, index)
            logits_parts.append(inputs)
            label_parts.append(labels.to(inputs.device))
    else:
        device = model_device(model)
        with _EvalMode(model), torch.no_grad():
            for index, batch in enumerate(batches):
                inputs, labels = _split_batch(batch, index)
                outputs = model(move_to(inputs, device))
                if not isinstance(outputs, Tensor):
                    raise TypeError(
                        f"the model must return a logits tensor, got {type(outputs).__name__}"
                    )
                logits_parts.append(outputs.detach())
                label_parts.append(labels.to(outputs.device))
    if not logits_parts:
        raise ValueError("the loader yielded no batches: at least one sample is needed to fit")
    return torch.cat(logits_parts), torch.cat(label_parts)


def logits_and_labels(
    model: nn.Module | None,
    data: Tensor | Iterable[Any],
    labels: Tensor | None,
    *,
    progress: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """What ``fit(data, labels)`` fits on: the tensors themselves, or a loader's collected logits.

    Example:
        >>> logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
        >>> logits_and_labels(None, logits, labels)[0] is logits
        True
    """
    if labels is not None:
        return data, labels  # type: ignore[return-value]
    if isinstance(data, (Tensor, np.ndarray)) or is_row_source(data):
        raise TypeError(
            "fit(logits) needs labels: call fit(logits, labels), or fit(loader) with a "
            "loader of (inputs, labels) batches"
        )
    return collect_logits(model, data, progress=progress)
