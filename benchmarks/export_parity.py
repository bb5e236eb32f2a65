"""Deploy a calibrated MLP and CNN by every export route and measure the outputs against eager.

Each route saves the exported module (batch size 4, dynamic batch dimension), loads it back and
runs it at batch sizes 3 and 7; the table shows the largest absolute difference from the eager
module in float32. The routes and models are those of ``tests/test_export.py``.

Usage:
    python benchmarks/export_parity.py
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from export_routes import CHECK_BATCHES, EXPORT_BATCH, MODELS, ROUTES, inputs

from torchcal import TemperatureScaler


def fitted_scaler(model_name: str) -> TemperatureScaler:
    model = MODELS[model_name][0]()
    with torch.no_grad():
        logits = model(inputs(model_name, 300))
    labels = torch.distributions.Categorical(logits=logits / 2).sample()
    return TemperatureScaler(model).fit(logits, labels, progress=False)


def main() -> None:
    torch.manual_seed(0)
    warnings.simplefilter("ignore")
    rows = []
    for model_name in MODELS:
        scaler = fitted_scaler(model_name)
        for output in ("logits", "probs"):
            exported = scaler.export(output)
            for route_name, route in ROUTES.items():
                with tempfile.TemporaryDirectory() as folder:
                    deployed = route(exported, inputs(model_name, EXPORT_BATCH), Path(folder))
                    worst = 0.0
                    for batch in CHECK_BATCHES:
                        x = inputs(model_name, batch)
                        with torch.no_grad():
                            worst = max(worst, (deployed(x) - exported(x)).abs().max().item())
                rows.append((route_name, model_name, output, worst))
    print(f"{'route':<22}{'model':<7}{'output':<8}max abs diff")
    for route_name, model_name, output, worst in sorted(rows):
        print(f"{route_name:<22}{model_name:<7}{output:<8}{worst:.3g}")


if __name__ == "__main__":
    main()
