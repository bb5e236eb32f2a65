"""Write the saved calibrators that every later torchcal version must keep loading.

Run once per file-format change, from the repository root, with the version that writes them::

    PYTHONPATH=. python tests/data/make_saved_files.py

It fits one calibrator of each kind on small seeded data (temperature scaling twice: a softmax
scaler and a per-class sigmoid one) and writes, under ``tests/data/saved_v<version>/``:

* ``<name>.safetensors``: the calibrator as :func:`torchcal.save` writes it;
* ``<name>.pt``: its ``state_dict()`` as ``torch.save`` writes it;
* ``expected.pt``: for each name, the fixed inputs, the calibrated logits the fitted calibrator
  gives for them, and its ``fit_result`` as a dict (a tuple of dicts for per-class scalers).

``tests/test_saved_files.py`` loads every folder written here and checks the outputs. The files
are a few KB each; the data are small on purpose. An existing folder is never overwritten: the
files of a version are what that version wrote.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

import torchcal
from torchcal import CalibrationWarning, Calibrator, FitResult

#: name -> (kind, constructor options); the name is the file's stem.
CALIBRATORS: dict[str, tuple[str, dict[str, Any]]] = {
    "temperature": ("temperature", {}),
    "temperature_sigmoid_per_class": ("temperature", {"activation": "sigmoid", "per_class": True}),
    "vector": ("vector", {}),
    "matrix": ("matrix", {}),
    "dirichlet": ("dirichlet", {}),
    "ensemble_temperature": ("ensemble_temperature", {}),
    "histogram": ("histogram", {"bins": 5}),
    "isotonic": ("isotonic", {}),
}
N_CLASSES = 4


def data(name: str, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded logits and labels (0/1 targets for the sigmoid scaler) of the calibrator ``name``."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, N_CLASSES, generator=generator) * 3
    if "sigmoid" in name:
        return logits, torch.bernoulli(torch.sigmoid(logits / 2), generator=generator)
    probs = torch.softmax(logits / 2, dim=1)
    return logits, torch.multinomial(probs, 1, generator=generator).squeeze(1)


def fitted(name: str) -> Calibrator:
    kind, options = CALIBRATORS[name]
    logits, labels = data(name, 300, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return Calibrator.registry[kind](**options).fit(logits, labels, progress=False)


def result_dicts(result: FitResult | tuple[FitResult, ...] | None) -> Any:
    if result is None:
        return None
    if hasattr(result, "to_dict"):  # 0.1.0 had a second record type for the others
        return result.to_dict()
    return tuple(record.to_dict() for record in result)


def main() -> None:
    folder = Path(__file__).parent / f"saved_v{torchcal.__version__}"
    if folder.exists():  # the files of a released version are never rewritten
        raise SystemExit(f"{folder} exists: bump torchcal's version to write new files")
    folder.mkdir()
    expected = {}
    for name in CALIBRATORS:
        calibrator = fitted(name)
        torchcal.save(calibrator, folder / f"{name}.safetensors")
        torch.save(calibrator.state_dict(), folder / f"{name}.pt")
        inputs, _ = data(name, 16, seed=1)
        with torch.no_grad():
            outputs = calibrator(inputs)
        expected[name] = {
            "inputs": inputs,
            "outputs": outputs,
            "fit_result": result_dicts(calibrator.fit_result),
        }
    torch.save(expected, folder / "expected.pt")


if __name__ == "__main__":
    main()
