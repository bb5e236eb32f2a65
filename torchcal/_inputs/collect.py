"""Run a model over a data loader and gather its logits and labels.

This module holds the one set of batch and output conventions that every path shares
(``fit(loader)`` of every calibrator, :func:`collect_logits`, a wrapped model's ``forward``, the
Lightning and Transformers integrations):

* **Batches.** A tuple or list ``(inputs, labels, ...)``: the inputs at ``input_index`` (0) and the
  labels at ``label_index`` (1). A mapping (a ``dict``, a Transformers ``BatchEncoding``): the
  labels under ``labels_key`` (``"labels"``), every other entry a keyword argument of the model.
* **Inputs.** A mapping is passed to the model as keyword arguments (``model(**inputs)``),
  anything else as one positional argument (``model(inputs)``); tensors, also inside tuples,
  lists and mappings, are moved to the model's device first.
* **Outputs.** A tensor is the logits; otherwise an object with a ``logits`` attribute (a
  Transformers ``ModelOutput``), a mapping with a ``"logits"`` entry, or a tuple or list whose
  first element is a tensor; anything else needs ``output_fn(outputs) -> logits``.

:class:`Batches` wraps a loader with non-default conventions, for any ``fit``:
``TemperatureScaler(model).fit(Batches(loader, labels_key="label"))``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from torchcal._inputs.shapes import resolve_class_dim
from torchcal._inputs.sources import is_row_source

__all__ = ["BatchFormat", "Batches", "collect_logits", "logits_of", "model_logits"]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def move_to(inputs: Any, device: torch.device) -> Any:
    """Move a tensor, or the tensors in a tuple/list/mapping, to ``device``."""
    if isinstance(inputs, Tensor):
        return inputs.to(device)
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(move_to(item, device) for item in inputs)
    if isinstance(inputs, Mapping):
        return {key: move_to(value, device) for key, value in inputs.items()}
    return inputs


def _describe(value: Any) -> str:
    """A short description of ``value`` for error messages: its type, keys or length."""
    name = type(value).__name__
    if isinstance(value, Mapping):
        return f"{name} with keys {sorted(map(str, value))}"
    if isinstance(value, (tuple, list)):
        items = ", ".join(type(item).__name__ for item in value[:4])
        return f"{name} of length {len(value)} ({items}{', ...' if len(value) > 4 else ''})"
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return name


def logits_of(outputs: Any, output_fn: Callable[[Any], Tensor] | None = None) -> Tensor:
    """The logits in a model's ``outputs`` (see the module docstring for what is recognised).

    Example:
        >>> logits = torch.zeros(2, 3)
        >>> logits_of({"logits": logits, "loss": None}) is logits
        True
        >>> logits_of((logits, "hidden states")) is logits
        True
    """
    if output_fn is not None:
        logits = output_fn(outputs)
        if not isinstance(logits, Tensor):
            raise TypeError(
                f"output_fn must return the logits as a tensor, got {_describe(logits)}"
            )
        return logits
    if isinstance(outputs, Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if logits is None and isinstance(outputs, Mapping):
        logits = outputs.get("logits")
    if logits is None and isinstance(outputs, (tuple, list)) and outputs:
        logits = outputs[0]
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(
        f"cannot find the logits in the model's output, a {_describe(outputs)}: expected a "
        "tensor, an object or dict with 'logits', or a tuple whose first element is the logits; "
        "pass output_fn=lambda outputs: ... to pick them out (e.g. Batches(loader, output_fn=...))"
    )


def call_model(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping of inputs, ``model(inputs)`` otherwise."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    return model(inputs)


def model_logits(
    model: nn.Module, inputs: Any, output_fn: Callable[[Any], Tensor] | None = None
) -> Tensor:
    """The logits of ``model`` on ``inputs``, by the module's conventions (no device moves).

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> model_logits(model, torch.zeros(2, 4)).shape
        torch.Size([2, 3])
    """
    return logits_of(call_model(model, inputs), output_fn)


@dataclass(frozen=True)
class BatchFormat:
    """Where a batch keeps its inputs and labels, and how to find the logits in an output.

    Args:
        labels_key: the labels' key in mapping batches.
        input_index, label_index: the positions of the inputs and labels in tuple batches.
        output_fn: maps the model's output to its logits, for outputs the defaults do not cover.

    Example:
        >>> inputs, labels = BatchFormat().split({"x": torch.zeros(2), "labels": [0, 1]}, 0)
        >>> list(inputs), labels
        (['x'], tensor([0, 1]))
    """

    labels_key: str = "labels"
    input_index: int = 0
    label_index: int = 1
    output_fn: Callable[[Any], Tensor] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.labels_key, str):
            raise TypeError(f"labels_key must be a string, got {type(self.labels_key).__name__}")
        for name in ("input_index", "label_index"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.input_index == self.label_index:
            raise ValueError(
                f"input_index and label_index must differ, both are {self.input_index}"
            )
        if self.output_fn is not None and not callable(self.output_fn):
            raise TypeError(f"output_fn must be callable, got {type(self.output_fn).__name__}")

    def split(self, batch: Any, index: int) -> tuple[Any, Tensor]:
        """The inputs and the labels (as a tensor) of the loader's batch number ``index``."""
        if isinstance(batch, Mapping):
            if self.labels_key not in batch:
                raise ValueError(
                    f"batch {index} of the loader is a {_describe(batch)} without the labels key "
                    f"{self.labels_key!r}; name the key with Batches(loader, labels_key=...)"
                )
            inputs = {key: value for key, value in batch.items() if key != self.labels_key}
            labels = batch[self.labels_key]
        elif isinstance(batch, (tuple, list)):
            if batch and all(isinstance(item, (int, float)) for item in batch):
                raise TypeError(
                    f"batch {index} of the loader is a {_describe(batch)}: a row of numbers, not "
                    "an (inputs, labels) batch; to fit on logits call fit(logits, labels) with "
                    "a logits tensor and its labels"
                )
            needed = max(self.input_index, self.label_index) + 1
            if len(batch) < needed:
                raise TypeError(
                    f"batch {index} of the loader must be an (inputs, labels) pair, or a dict "
                    f"with {self.labels_key!r}; got a {_describe(batch)}, too short for "
                    f"input_index={self.input_index} and label_index={self.label_index}"
                )
            inputs, labels = batch[self.input_index], batch[self.label_index]
        else:
            raise TypeError(
                f"batch {index} of the loader must be an (inputs, labels) pair or a dict with "
                f"{self.labels_key!r}, got a {_describe(batch)}"
            )
        if not isinstance(labels, Tensor):
            try:
                labels = torch.as_tensor(labels)
            except (TypeError, ValueError, RuntimeError) as error:
                raise TypeError(
                    f"the labels of batch {index} of the loader must be a tensor or a list of "
                    f"numbers, got a {_describe(labels)}"
                ) from error
        return inputs, labels

    def logits(self, model: nn.Module | None, inputs: Any, index: int) -> Tensor:
        """The logits for a batch's ``inputs`` (already on the model's device), detached."""
        if model is not None:
            return model_logits(model, inputs, self.output_fn).detach()
        # A batch of logits: a tensor, or e.g. {"logits": ..., "labels": ...}
        if isinstance(inputs, Mapping) or self.output_fn is not None:
            inputs = logits_of(inputs, self.output_fn)
        if not isinstance(inputs, Tensor):
            raise TypeError(
                f"without a model the loader's batches hold logits, but batch {index} holds a "
                f"{_describe(inputs)} where the logits should be; to fit on logits already in "
                "memory call fit(logits, labels) with tensors"
            )
        return inputs.detach()


class Batches:
    """A loader whose batches follow non-default conventions (see :class:`BatchFormat`).

    Pass it wherever a loader goes: ``fit``, :func:`collect_logits`. It is iterated as the loader
    is, as often as the loader allows.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> loader = [{"input": torch.randn(8, 4), "target": torch.randint(0, 3, (8,))}]
        >>> logits, labels = collect_logits(model, Batches(loader, labels_key="target"))
        >>> tuple(logits.shape), tuple(labels.shape)
        ((8, 3), (8,))
    """

    def __init__(
        self,
        loader: Iterable[Any],
        *,
        labels_key: str = "labels",
        input_index: int = 0,
        label_index: int = 1,
        output_fn: Callable[[Any], Tensor] | None = None,
    ) -> None:
        if isinstance(loader, Batches):
            raise TypeError("loader is already a Batches: pass its options to one Batches")
        self.loader = loader
        self.format = BatchFormat(labels_key, input_index, label_index, output_fn)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def batch_format(loader: Iterable[Any]) -> BatchFormat:
    """The conventions of ``loader``: its own for a :class:`Batches`, else the defaults."""
    return loader.format if isinstance(loader, Batches) else BatchFormat()


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


def _class_dim(logits: Tensor, labels: Tensor, class_dim: int | None) -> int | None:
    """The class dimension of a batch's softmax logits, or None if it cannot be told apart."""
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or logits.ndim < 2:
        return None
    try:
        dim = resolve_class_dim(logits.shape, labels.shape, class_dim)
    except ValueError:
        return None
    return dim if dim > 0 else None  # dim 0 is the batch


def _concatenate(
    logits: list[Tensor], labels: list[Tensor], class_dim: int | None, ignore_index: int | None
) -> tuple[Tensor, Tensor]:
    """Every batch's logits and labels, concatenated along dim 0.

    Batches whose other dimensions differ (sequences padded per batch, images of several sizes)
    are padded to the largest size with zero logits and ``ignore_index`` labels, which the fit
    leaves out; batches whose numbers of classes differ are an error naming both.
    """
    first = logits[0]
    if all(part.shape[1:] == first.shape[1:] for part in logits) and all(
        part.shape[1:] == labels[0].shape[1:] for part in labels
    ):
        return torch.cat(logits), torch.cat(labels)
    dim = _class_dim(first, labels[0], class_dim)
    for index, (part, targets) in enumerate(zip(logits, labels, strict=True)):
        if part.ndim != first.ndim or targets.ndim != labels[0].ndim:
            raise ValueError(
                f"batch {index} of the loader gives logits of shape {tuple(part.shape)} and "
                f"labels of shape {tuple(targets.shape)}, but batch 0 gives "
                f"{tuple(first.shape)} and {tuple(labels[0].shape)}: every batch must have the "
                "same number of dimensions"
            )
        if dim is not None and part.shape[dim] != first.shape[dim]:
            raise ValueError(
                f"batch {index} of the loader has K={part.shape[dim]} classes (logits of shape "
                f"{tuple(part.shape)}), but batch 0 has K={first.shape[dim]} (shape "
                f"{tuple(first.shape)}): every batch must give the same number of classes"
            )
    if dim is None or ignore_index is None:
        shapes = sorted({tuple(part.shape[1:]) for part in logits})
        raise ValueError(
            f"the loader's batches give logits of different shapes beyond the batch dimension "
            f"({shapes[0]} and {shapes[1]}, e.g. batch 0 and batch "
            f"{next(i for i, p in enumerate(logits) if tuple(p.shape[1:]) != shapes[0])}) "
            "that cannot be padded"
            + (" without an ignore_index" if dim is not None else "")
            + ": give every batch the same shape"
        )
    size = [max(part.shape[d] for part in logits) for d in range(first.ndim)]
    label_dims = [d for d in range(first.ndim) if d != dim]
    padded_logits, padded_labels = [], []
    for part, targets in zip(logits, labels, strict=True):
        shape = [part.shape[0], *size[1:]]
        padded = part.new_zeros(shape)
        padded[tuple(slice(0, n) for n in part.shape)] = part
        padded_logits.append(padded)
        target_shape = [targets.shape[0], *(size[d] for d in label_dims[1:])]
        filled = targets.new_full(target_shape, ignore_index)
        filled[tuple(slice(0, n) for n in targets.shape)] = targets
        padded_labels.append(filled)
    return torch.cat(padded_logits), torch.cat(padded_labels)


def collect_logits(
    model: nn.Module | None,
    loader: Iterable[Any],
    *,
    progress: bool | None = None,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> tuple[Tensor, Tensor]:
    """Logits and labels for every batch of ``loader``, concatenated.

    The model runs in eval mode under ``torch.no_grad()`` on its own device; each submodule's
    train/eval mode is restored afterwards. With ``model=None`` the loader's inputs are taken to be
    logits already. Batches and outputs follow the module's conventions (wrap the loader in
    :class:`Batches` to change them). Batches padded to different lengths (token sequences,
    images) are padded to the longest with ``ignore_index`` labels, which every fit leaves out.
    ``progress=None`` shows a tqdm bar only on a terminal.

    Args:
        model: the classifier; ``None`` when the loader's batches hold logits.
        loader: batches of ``(inputs, labels)`` or mappings with labels (or a :class:`Batches`).
        progress: show a tqdm bar (``None``: only on a terminal).
        class_dim: the class dimension, for padding batches of different shapes.
        ignore_index: the label padded positions get; ``None`` refuses batches that need it.

    Example:
        >>> model = torch.nn.Linear(4, 3)
        >>> loader = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(2)]
        >>> logits, labels = collect_logits(model, loader, progress=False)
        >>> tuple(logits.shape), tuple(labels.shape)
        ((16, 3), (16,))
    """
    fmt = batch_format(loader)
    logits_parts: list[Tensor] = []
    label_parts: list[Tensor] = []
    disable = None if progress is None else not progress
    batches = tqdm(loader, desc="Collecting logits", unit="batch", disable=disable, leave=False)
    device = None if model is None else model_device(model)
    with _EvalMode(model or nn.Identity()), torch.no_grad():
        for index, batch in enumerate(batches):
            inputs, labels = fmt.split(batch, index)
            if device is not None:
                inputs = move_to(inputs, device)
            logits = fmt.logits(model, inputs, index)
            logits_parts.append(logits)
            label_parts.append(labels.to(logits.device))
    if not logits_parts:
        raise ValueError("the loader yielded no batches: at least one sample is needed to fit")
    return _concatenate(logits_parts, label_parts, class_dim, ignore_index)


def logits_and_labels(
    model: nn.Module | None,
    data: Tensor | Iterable[Any],
    labels: Tensor | None,
    *,
    progress: bool | None = None,
    class_dim: int | None = None,
    ignore_index: int | None = -100,
) -> tuple[Tensor, Tensor]:
    """What ``fit(data, labels)`` fits on: the tensors themselves, or a loader's collected logits.

    Example:
        >>> logits, labels = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
        >>> logits_and_labels(None, logits, labels)[0] is logits
        True
    """
    if labels is not None:
        return data, labels  # type: ignore[return-value]
    check_loader(data)
    return collect_logits(
        model, data, progress=progress, class_dim=class_dim, ignore_index=ignore_index
    )


def check_loader(data: Any) -> None:
    """``fit(data)`` without labels needs a loader: refuse tensors, arrays and non-iterables."""
    if isinstance(data, (Tensor, np.ndarray)) or is_row_source(data):
        raise TypeError(
            "fit(logits) needs labels: call fit(logits, labels), or fit(loader) with a "
            "loader of (inputs, labels) batches"
        )
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes, Mapping)):
        raise TypeError(
            "fit(data) without labels needs a loader of (inputs, labels) batches or of dicts "
            f"with 'labels', got a {_describe(data)}"
        )
