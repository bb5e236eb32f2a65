"""Calibration after training, inside the training frameworks people use.

* :mod:`torchcal.integrations.lightning`: a Lightning ``Callback`` that fits a calibrator on the
  validation data once ``trainer.fit`` has trained the module
  (``pip install "torchcal[lightning]"``).
* :mod:`torchcal.integrations.hf`: the same for the Hugging Face ``Trainer``, as a
  ``TrainerCallback`` or one call after ``trainer.train()`` (``pip install "torchcal[hf]"``).

Neither is imported by ``import torchcal``; each imports its framework only when used.
"""

__all__: list[str] = []
