"""A Lightning callback that calibrates the trained module on its validation data.

``Trainer(callbacks=[TemperatureScalingCallback()])``: once ``trainer.fit`` has trained the
module (in ``on_train_end``, with the module still on its device), the callback runs the
validation dataloader through it, fits a calibrator (temperature scaling by default, any kind by
option), logs NLL and ECE before and after through the trainer's loggers, and keeps the fitted
calibrator as ``callback.calibrator``. Under DDP every rank fits on its shard of the validation
data and all ranks end with the same calibration (see
:meth:`torchcal.TemperatureScaler.fit` with ``distributed=True``).

Needs ``lightning`` (``pip install "torchcal[lightning]"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from torch import Tensor

from torchcal.calibrators.base import Calibrator
from torchcal.integrations._common import (
    BatchOptions,
    calibrate,
    framework_base,
    make_calibrator,
    save_calibrator,
)

__all__ = ["TemperatureScalingCallback"]


class TemperatureScalingCallback(  # type: ignore[misc]
    framework_base("lightning.pytorch", "Callback", "lightning")
):
    """Fit a calibrator on the validation data once training ends.

    Args:
        kind: the calibrator: ``"temperature"`` (default), ``"vector"``, ``"matrix"``,
            ``"dirichlet"``, ``"ensemble"``, ``"histogram"``, ``"isotonic"``.
        save: ``True`` saves the calibrator with :func:`torchcal.save` as
            ``calibration.safetensors`` next to the best checkpoint (or in the trainer's
            ``default_root_dir`` without one); a path saves it there; ``False`` (default) does not.
        dataloader: the data to calibrate on (default: the trainer's validation dataloader,
            sharded over the ranks under DDP, or else the datamodule's or module's
            ``val_dataloader()``). A loader given here or found that way is not sharded: every
            rank then fits on all of it, alone, to the same result.
        dataloader_index: which validation dataloader to use when there are several.
        labels_key, input_index, label_index, output_fn: how to read the batches and the
            module's outputs (see
            :class:`torchcal._inputs.collect.Batches`); the module is called as
            ``module(inputs)``, or ``module(**inputs)`` for dict batches.
        progress: show a progress bar while collecting logits.
        **options: the calibrator's options, e.g. ``temperature_bounds`` or ``n_bins``.

    After training: :attr:`calibrator` (wrapping the module), :attr:`metrics` (what was logged:
    ``calibration/nll_before``, ``nll_after``, ``ece_before``, ``ece_after`` and, for temperature
    scaling, ``temperature``) and :attr:`saved_path`.

    Example:
        >>> import lightning  # doctest: +SKIP
        >>> callback = TemperatureScalingCallback(n_bins=10)  # doctest: +SKIP
        >>> trainer = lightning.Trainer(max_epochs=1, callbacks=[callback])  # doctest: +SKIP
        >>> trainer.fit(module, train_loader, val_loader)  # doctest: +SKIP
        >>> callback.calibrator.temperature  # doctest: +SKIP
    """

    def __init__(
        self,
        kind: str = "temperature",
        *,
        save: bool | str | os.PathLike[str] = False,
        dataloader: Any | None = None,
        dataloader_index: int = 0,
        labels_key: str = "labels",
        input_index: int = 0,
        label_index: int = 1,
        output_fn: Callable[[Any], Tensor] | None = None,
        progress: bool = False,
        **options: Any,
    ) -> None:
        super().__init__()  # without lightning: an ImportError saying what to install
        make_calibrator(kind, None, options)  # invalid options fail now, not after training
        self.kind, self.options, self.save = kind, options, save
        self.dataloader, self.dataloader_index = dataloader, dataloader_index
        self.batch_options: BatchOptions = (labels_key, input_index, label_index, output_fn)
        self.progress = progress
        self.calibrator: Calibrator | None = None
        self.metrics: dict[str, float] = {}
        self.saved_path: str | None = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        """Calibrate ``pl_module`` on the validation data once training ends.

        Args:
            trainer: the Lightning trainer.
            pl_module: the trained module, wrapped by the calibrator.
        """
        loader, sharded = self._validation_loader(trainer, pl_module)
        self.calibrator, self.metrics = calibrate(
            self.kind,
            pl_module,
            self.options,
            loader,
            self.batch_options,
            sharded=sharded,
            progress=self.progress,
        )
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics, step=trainer.global_step)
        checkpoint = getattr(trainer.checkpoint_callback, "best_model_path", "") or ""
        folder = os.path.dirname(checkpoint) if checkpoint else trainer.default_root_dir
        self.saved_path = save_calibrator(
            self.calibrator, self.save, folder, lambda: trainer.is_global_zero
        )

    def _validation_loader(self, trainer: Any, pl_module: Any) -> tuple[Any, bool]:
        """The loader to calibrate on, and whether the trainer sharded it over the ranks."""
        loaders, sharded = self.dataloader, False
        if loaders is None:
            loaders, sharded = trainer.val_dataloaders, True
        if loaders is None:  # validation never ran: ask the datamodule or the module
            source = trainer.datamodule if trainer.datamodule is not None else pl_module
            sharded = False
            try:
                loaders = source.val_dataloader()
            except Exception as error:
                raise ValueError(
                    "TemperatureScalingCallback found no validation data (the validation loop "
                    "did not run, e.g. without a validation_step): pass the loader as "
                    "TemperatureScalingCallback(dataloader=...), or define val_dataloader() on "
                    "the module or datamodule"
                ) from error
        if isinstance(loaders, (list, tuple)):
            return loaders[self.dataloader_index], sharded
        if isinstance(loaders, dict):
            return list(loaders.values())[self.dataloader_index], sharded
        return loaders, sharded
