"""Inference-only modules for deploying a calibrated classifier.

A deployed model is the trained classifier followed by a small *calibration head*: a pure-tensor
module that maps logits to calibrated logits, holding its fitted values as buffers. Nothing else
travels with it: no fitting code, no options, no Python-side state, so ``torch.jit.script``,
``torch.export.export`` and ``torch.onnx.export`` see plain tensor operations.

A Hugging Face Transformers model is wrapped in :class:`KeywordCalibratedModel`, whose forward
takes the model's keyword inputs (``input_ids=..., attention_mask=...``) and picks the logits
out of its ``ModelOutput``; it passes ``torch.export.export(module, (), kwargs=inputs)``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

from torchcal._inputs import probabilities_to_logits
from torchcal._inputs.collect import logits_of
from torchcal._inputs.validation import check_choice, check_model

__all__ = [
    "CalibratedModel",
    "KeywordCalibratedModel",
    "Link",
    "Output",
    "ProbabilitiesToLogits",
    "TemperatureHead",
]

#: What a calibrated model returns: calibrated logits, or the probabilities they give.
Output = Literal["logits", "probs"]
#: How logits become probabilities: one class per sample (softmax) or each on its own (sigmoid).
Link = Literal["softmax", "sigmoid"]
_OUTPUTS: tuple[str, ...] = get_args(Output)
_LINKS: tuple[str, ...] = get_args(Link)


def in_compute_dtype(logits: Tensor) -> Tensor:
    """``logits`` in the dtype heads compute in: float64 stays float64, anything else (half
    precision included) becomes float32. Shared by the calibrators' heads.

    Args:
        logits: the logits to compute with.

    Example:
        >>> import torch
        >>> in_compute_dtype(torch.ones(2, dtype=torch.float16)).dtype
        torch.float32
    """
    if logits.dtype == torch.float64:
        return logits
    return logits.float()


class ProbabilitiesToLogits(nn.Module):
    """Map a model's probabilities to logits: ``log p`` (softmax) or ``log(p / (1 - p))``.

    Put in front of a calibration head when the model outputs probabilities (a calibrator
    fitted with ``inputs="probs"``).

    Args:
        activation: the activation that made the probabilities: ``"softmax"`` (rows summing to
            1) maps ``p`` to ``log p``, ``"sigmoid"`` (each probability on its own) to
            ``log(p / (1 - p))``.

    Example:
        >>> import torch
        >>> ProbabilitiesToLogits("sigmoid")(torch.tensor([0.5, 0.75]))
        tensor([0.0000, 1.0986])
    """

    def __init__(self, activation: Link = "softmax") -> None:
        super().__init__()
        self.activation = check_choice(activation, "activation", _LINKS)

    def forward(self, probs: Tensor) -> Tensor:
        """The logits of ``probs``.

        Args:
            probs: probabilities, classes last.
        """
        return probabilities_to_logits(probs, self.activation)


class TemperatureHead(nn.Module):
    """Divide logits by a fixed temperature T, held as a buffer (not a parameter).

    The temperature is copied, so the head is a snapshot: changing the tensor it was built from
    (for instance by refitting a scaler) leaves the head as it was.

    Args:
        temperature: T > 0, a 0-dim tensor or one that broadcasts to the logits (e.g. (K,)).

    Example:
        >>> import torch
        >>> head = TemperatureHead(torch.tensor(2.0))
        >>> head(torch.tensor([[2.0, 4.0]]))
        tensor([[1., 2.]])
        >>> [name for name, _ in head.named_buffers()], list(head.parameters())
        (['temperature'], [])
    """

    def __init__(self, temperature: Tensor) -> None:
        super().__init__()
        self.register_buffer("temperature", temperature.detach().clone())

    def forward(self, logits: Tensor) -> Tensor:
        """``logits / T``.

        Args:
            logits: logits, classes last.
        """
        return logits / self.temperature


class CalibratedModel(nn.Module):
    """A classifier followed by a fixed calibration head: ``inputs -> model -> head -> output``.

    Args:
        model: the classifier mapping inputs to (N, K) logits, or ``None`` to take logits as input.
            It is shared, not copied: the calibrated model reuses its modules, parameters and
            train/eval mode, so a large network is not duplicated in memory. The calibrated model
            starts in the model's mode; deploy it in eval mode, as the model itself.
        head: a pure-tensor module mapping logits to calibrated logits, e.g.
            :class:`TemperatureHead`.
        output: ``"logits"`` for calibrated logits, ``"probs"`` for their softmax over the
            class dimension (or their sigmoid, with ``link="sigmoid"``).
        link: ``"softmax"`` (one class per sample) or ``"sigmoid"`` (binary, multi-label): how
            ``output="probs"`` turns calibrated logits into probabilities.
        class_dim: the (negative) class dimension of the model's logits, as fitted: ``-1`` for
            (N, K) logits and (B, L, V) token logits, ``-3`` for (N, K, H, W) maps. The head sees
            the classes in the last dimension, and the softmax runs over this one.

    Example:
        >>> import math, torch
        >>> calibrated = CalibratedModel(None, TemperatureHead(torch.tensor(2.0)), output="probs")
        >>> calibrated(torch.tensor([[0.0, 2.0 * math.log(3.0)]]))
        tensor([[0.2500, 0.7500]])
    """

    def __init__(
        self,
        model: nn.Module | None,
        head: nn.Module,
        output: Output = "logits",
        link: Link = "softmax",
        class_dim: int = -1,
    ) -> None:
        super().__init__()
        check_model(model)
        if isinstance(class_dim, bool) or not isinstance(class_dim, int) or class_dim >= 0:
            raise ValueError(f"class_dim must be a negative integer, got {class_dim!r}")
        self.class_dim = class_dim
        check_choice(output, "output", _OUTPUTS)
        check_choice(link, "link", _LINKS)
        self.model = nn.Identity() if model is None else model
        self.head = head
        if output == "logits":
            self.link: nn.Module = nn.Identity()
        else:
            self.link = nn.Softmax(dim=-1) if link == "softmax" else nn.Sigmoid()
        # Start in the wrapped model's mode (eval without a model) without changing that model.
        if model is None:
            self.eval()
        else:
            self.head.train(model.training)
            self.link.train(model.training)
            self.training = model.training

    def forward(self, inputs: Tensor) -> Tensor:
        """The calibrated output for ``inputs``: ``calibrate(model(inputs))``.

        Args:
            inputs: what the model takes (logits, when it was built without a model).
        """
        return self.calibrate(self.model(inputs))

    def calibrate(self, logits: Tensor) -> Tensor:
        """The head and link applied with the classes moved to the last dimension and back.

        Args:
            logits: the model's logits, classes in ``class_dim``.
        """
        if self.class_dim == -1:
            return self.link(self.head(logits))
        calibrated = self.link(self.head(logits.movedim(self.class_dim, -1)))
        return calibrated.movedim(-1, self.class_dim)


class KeywordCalibratedModel(CalibratedModel):
    """A :class:`CalibratedModel` whose forward takes the model's keyword inputs.

    ``calibrated(input_ids=..., attention_mask=...)`` runs ``model(**inputs)``, takes the logits
    from its output (a tensor, an object or dict with ``logits``, or a tuple led by the logits)
    and applies the head and link. :meth:`~torchcal.TemperatureScaler.export` builds one for a
    Hugging Face Transformers model (see :func:`takes_keyword_inputs`). Export it with
    ``torch.export.export(calibrated, (), kwargs=inputs)``; it cannot be scripted.

    Args:
        model: the classifier, called as ``model(**inputs)``.
        head: as for :class:`CalibratedModel`.
        output: as for :class:`CalibratedModel`.
        link: as for :class:`CalibratedModel`.
        class_dim: as for :class:`CalibratedModel`.

    Example:
        >>> class Classifier(torch.nn.Module):
        ...     def forward(self, features, scale):
        ...         return {"logits": features * scale}
        >>> calibrated = KeywordCalibratedModel(
        ...     Classifier(), TemperatureHead(torch.tensor(2.0)), output="logits"
        ... )
        >>> calibrated(features=torch.tensor([[1.0, 3.0]]), scale=torch.tensor(2.0))
        tensor([[1., 3.]])
    """

    def forward(self, **inputs: Tensor) -> Tensor:  # type: ignore[override]
        """The calibrated output of ``model(**inputs)``.

        Args:
            **inputs: the model's keyword inputs (``input_ids=..., attention_mask=...``).
        """
        return self.calibrate(logits_of(self.model(**inputs)))


def takes_keyword_inputs(model: nn.Module | None) -> bool:
    """Whether ``model`` is a Hugging Face Transformers model (called with keyword inputs).

    Told from the class hierarchy, without importing transformers.

    Args:
        model: the model, or ``None``.

    Example:
        >>> takes_keyword_inputs(torch.nn.Linear(2, 2))
        False
    """
    if model is None:
        return False
    return any(cls.__module__.split(".")[0] == "transformers" for cls in type(model).__mro__)
