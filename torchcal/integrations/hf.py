"""Calibrate a model trained with the Hugging Face ``Trainer``, on the trainer's eval data.

Either one call after training::

    trainer.train()
    scaler = calibrate_trainer(trainer)  # a fitted TemperatureScaler wrapping trainer.model

or a callback that does the same when training ends::

    callback = TemperatureScalingCallback(trainer)
    trainer.add_callback(callback)
    trainer.train()
    callback.calibrator  # the fitted calibrator

Both read ``trainer.get_eval_dataloader()`` (the eval dataset, batched by the trainer's data
collator: dict batches with ``labels``), run the model in eval mode, fit the calibrator, and
report NLL and ECE before and after with ``trainer.log`` (so they reach ``state.log_history``
and every reporting integration). For a causal language model pass ``shift_labels=True``: the
next-token temperature is then fitted streaming, one batch of logits at a time.

Needs ``transformers`` (``pip install "torchcal[hf]"``); it is imported only through the trainer.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import Tensor

from torchcal.calibrators.base import Calibrator
from torchcal.integrations._common import (
    calibrate,
    framework_base,
    make_calibrator,
    save_calibrator,
)

__all__ = ["TemperatureScalingCallback", "calibrate_trainer"]


def calibrate_trainer(
    trainer: Any,
    kind: str = "temperature",
    *,
    eval_dataset: Any | None = None,
    save: bool | str | os.PathLike[str] = False,
    labels_key: str = "labels",
    output_fn: Callable[[Any], Tensor] | None = None,
    progress: bool = False,
    **options: Any,
) -> Calibrator:
    """Fit a calibrator of ``kind`` on ``trainer``'s eval data and log its metrics.

    Args:
        trainer: a ``transformers.Trainer`` (after ``trainer.train()``).
        kind: the calibrator (``"temperature"`` by default; any key of
            :attr:`torchcal.Calibrator.registry`).
        eval_dataset: the dataset to calibrate on (default: the trainer's eval dataset; a name
            for a dict of eval datasets).
        save: ``True`` saves with :func:`torchcal.save` as ``calibration.safetensors`` in the
            trainer's ``output_dir``; a path saves there.
        labels_key, output_fn: how to read the batches and outputs (see
            :class:`torchcal._inputs.collect.Batches`).
        progress: show a progress bar while collecting logits.
        **options: the calibrator's options, e.g. ``shift_labels=True`` for a causal LM.

    Returns the fitted calibrator, wrapping ``trainer.model``. The metrics are logged with
    ``trainer.log`` as ``calibration/nll_before``, ``nll_after``, ``ece_before``, ``ece_after``
    (and ``temperature``).
    """
    calibrator, metrics = calibrate(
        kind,
        trainer.model,
        options,
        trainer.get_eval_dataloader(eval_dataset),
        (labels_key, 0, 1, output_fn),
        sharded=True,  # the trainer shards its eval loader over the ranks
        progress=progress,
    )
    trainer.log(metrics)
    save_calibrator(calibrator, save, trainer.args.output_dir, trainer.is_world_process_zero)
    return calibrator


class TemperatureScalingCallback(  # type: ignore[misc]
    framework_base("transformers", "TrainerCallback", "hf")
):
    """A ``TrainerCallback`` that runs :func:`calibrate_trainer` when training ends.

    ``trainer.add_callback(TemperatureScalingCallback(trainer, **options))``; after
    ``trainer.train()`` the fitted calibrator is :attr:`calibrator`.

    Args:
        trainer: the ``transformers.Trainer`` the callback is added to.
        kind, **options: as in :func:`calibrate_trainer`.
    """

    def __init__(self, trainer: Any, kind: str = "temperature", **options: Any) -> None:
        super().__init__()  # without transformers: an ImportError saying what to install
        calibrator_options = {
            name: value
            for name, value in options.items()
            if name not in ("eval_dataset", "save", "labels_key", "output_fn", "progress")
        }
        make_calibrator(kind, None, calibrator_options)  # invalid options fail before training
        self.trainer, self.kind, self.options = trainer, kind, options
        self.calibrator: Calibrator | None = None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Calibrate once training ends.

        Args:
            args, state, control, **kwargs: the trainer's, as every callback hook gets them.
        """
        self.calibrator = calibrate_trainer(self.trainer, self.kind, **self.options)
