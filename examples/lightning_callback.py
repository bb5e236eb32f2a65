"""Calibrate a Lightning module on its validation data as soon as training ends.

``TemperatureScalingCallback`` runs the validation dataloader through the trained module after
``trainer.fit``, fits the temperature, logs NLL and ECE before and after through the trainer's
logger (a CSV file here) and saves the calibration next to the best checkpoint.

    python examples/lightning_callback.py
"""

from __future__ import annotations

import tempfile

import lightning
import torch
from torch import nn

from torchcal.integrations.lightning import TemperatureScalingCallback


class Classifier(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.05)


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(3000, 10)
    y = (x[:, :5] * 3 + torch.randn(3000, 5) * 2).argmax(dim=1)  # noisy labels: overconfidence
    data = torch.utils.data.TensorDataset
    train = torch.utils.data.DataLoader(data(x[:2000], y[:2000]), batch_size=50, shuffle=True)
    val = torch.utils.data.DataLoader(data(x[2000:], y[2000:]), batch_size=250)

    callback = TemperatureScalingCallback(save=True)
    with tempfile.TemporaryDirectory() as folder:
        trainer = lightning.Trainer(
            max_epochs=3,
            accelerator="cpu",
            devices=1,
            default_root_dir=folder,
            logger=lightning.pytorch.loggers.CSVLogger(folder),
            callbacks=[callback],
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(Classifier(), train, val)
        print(callback.calibrator.fit_result)
        print("logged:", {name: round(value, 4) for name, value in callback.metrics.items()})
        print("saved next to the best checkpoint:", callback.saved_path is not None)


if __name__ == "__main__":
    main()
