"""The Lightning callback: a calibrator fitted on the validation data after ``trainer.fit``."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import scipy_temperature
from torch import nn

lightning = pytest.importorskip("lightning")

from lightning.pytorch.loggers import Logger  # noqa: E402

import torchcal  # noqa: E402
from torchcal import TemperatureScaler  # noqa: E402
from torchcal.integrations.lightning import TemperatureScalingCallback  # noqa: E402


class Classifier(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x) * 4

    def training_step(self, batch, _):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class RecordingLogger(Logger):
    """A logger that keeps every ``log_metrics`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[dict, int | None]] = []

    @property
    def name(self):
        return "recording"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.records.append((dict(metrics), step))


def loaders(n_train=256, n_val=400, seed=0):
    """Features with labels drawn from a fixed random network's softmax at T = 2."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    teacher = Classifier().eval()
    x = torch.randn(n_train + n_val, 6, generator=generator)
    with torch.no_grad():
        probs = torch.softmax(teacher(x) / 2, dim=1)
    y = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    data = torch.utils.data.TensorDataset
    train = torch.utils.data.DataLoader(data(x[:n_train], y[:n_train]), batch_size=64)
    val = torch.utils.data.DataLoader(data(x[n_train:], y[n_train:]), batch_size=100)
    return train, val


def trainer_options(tmp_path, **options):
    return {
        "max_epochs": 1,
        "accelerator": "cpu",
        "default_root_dir": str(tmp_path),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **options,
    }


def module_logits(module, loader):
    module.eval()
    with torch.no_grad():
        return torch.cat([module(x) for x, _ in loader]), torch.cat([y for _, y in loader])


def test_callback_fits_on_the_validation_data_logs_and_saves_next_to_the_best_checkpoint(tmp_path):
    torch.manual_seed(0)
    module, (train, val) = Classifier(), loaders()
    logger = RecordingLogger()
    callback = TemperatureScalingCallback(save=True)
    trainer = lightning.Trainer(
        **trainer_options(tmp_path, devices=1, logger=logger, callbacks=[callback])
    )
    trainer.fit(module, train, val)
    scaler = callback.calibrator
    assert isinstance(scaler, TemperatureScaler) and scaler.model is module
    assert module.training  # the module's mode is restored
    logits, labels = module_logits(module, val)
    direct = TemperatureScaler().fit(logits, labels)
    assert scaler.temperature == pytest.approx(direct.temperature, rel=1e-6)
    assert scaler.temperature == pytest.approx(scipy_temperature(logits, labels), rel=1e-5)
    # the logger received the before/after metrics, at the last training step
    recorded = [
        (metrics, step) for metrics, step in logger.records if "calibration/nll_after" in metrics
    ]
    assert len(recorded) == 1
    metrics, step = recorded[0]
    assert step == trainer.global_step
    assert metrics == callback.metrics
    for name in ("nll_before", "nll_after", "ece_before", "ece_after"):
        assert metrics[f"calibration/{name}"] == pytest.approx(getattr(direct.fit_result, name))
    assert metrics["calibration/temperature"] == scaler.fit_result.temperature
    assert metrics["calibration/nll_after"] < metrics["calibration/nll_before"]
    # saved next to the best checkpoint, and it loads to the same temperature
    best = trainer.checkpoint_callback.best_model_path
    assert best and callback.saved_path == os.path.join(
        os.path.dirname(best), "calibration.safetensors"
    )
    assert torchcal.load(callback.saved_path).temperature == scaler.temperature


def test_callback_takes_any_calibrator_kind_and_checks_options_before_training():
    with pytest.raises(ValueError, match="kind must be one of"):
        TemperatureScalingCallback("platt")
    with pytest.raises(ValueError, match="n_bins"):
        TemperatureScalingCallback(n_bins=0)
    assert TemperatureScalingCallback("vector").kind == "vector"


class RankRecordingCallback(TemperatureScalingCallback):
    """Writes each rank's fitted temperature to a file (ddp_spawn ranks are other processes)."""

    def __init__(self, folder, **options):
        super().__init__(**options)
        self.folder = folder

    def on_train_end(self, trainer, pl_module):
        super().on_train_end(trainer, pl_module)
        path = f"{self.folder}/rank{trainer.global_rank}.txt"
        with open(path, "w") as file:
            file.write(f"{self.calibrator.temperature!r} {self.calibrator.fit_result.n_samples}")


@pytest.mark.slow
def test_under_ddp_every_rank_gets_the_same_temperature_as_one_process(tmp_path):
    torch.manual_seed(0)
    module, (train, val) = Classifier(), loaders()
    callback = RankRecordingCallback(str(tmp_path))
    trainer = lightning.Trainer(
        **trainer_options(
            tmp_path, devices=2, strategy="ddp_spawn", logger=False, callbacks=[callback]
        )
    )
    trainer.fit(module, train, val)
    ranks = [(tmp_path / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]
    assert ranks[0] == ranks[1]  # bit-for-bit the same T on both ranks
    temperature, n_samples = float(ranks[0][0]), int(ranks[0][1])
    assert n_samples == len(val.dataset)
    logits, labels = module_logits(module, val)  # the trained weights, copied back from rank 0
    assert temperature == pytest.approx(
        TemperatureScaler().fit(logits, labels).temperature, rel=1e-6
    )
