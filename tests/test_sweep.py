"""Temperature sweeps: values against the tempered softmax, shapes, checks and the plot."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

from torchcal import TemperatureScaler
from torchcal.dial import plot_temperature_sweep, softmax, temperature_sweep
from torchcal.metrics import entropy, top1_margin

matplotlib.use("Agg")


def test_values_match_the_tempered_softmax_at_each_temperature():
    logits = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(0)) * 2
    temperatures = [0.3, 1.0, 2.5]
    sweep = temperature_sweep(logits, temperatures)
    assert sweep.probabilities.shape == (3, 5, 4, 6)
    assert sweep.entropy.shape == sweep.margin.shape == (3, 5, 4)
    assert sweep.temperatures.tolist() == temperatures
    for i, t in enumerate(temperatures):
        torch.testing.assert_close(sweep.probabilities[i], softmax(logits, t))
        torch.testing.assert_close(sweep.entropy[i], entropy(softmax(logits, t)))
        torch.testing.assert_close(sweep.margin[i], top1_margin(softmax(logits, t)))


def test_entropy_rises_and_margin_falls_with_temperature():
    sweep = temperature_sweep(
        torch.tensor([3.2, 2.8, 0.5]), [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0, 100.0]
    )
    assert bool((torch.diff(sweep.entropy) > 0).all())
    assert bool((torch.diff(sweep.margin) < 0).all())
    assert float(sweep.entropy[-1]) == pytest.approx(math.log(3), abs=1e-3)
    assert round(float(sweep.margin[sweep.temperatures.tolist().index(1.0)]), 4) == 0.1897


def test_works_with_a_fitted_scaler():
    logits = torch.randn(500, 4, generator=torch.Generator().manual_seed(1)) * 4
    labels = torch.distributions.Categorical(logits=logits / 2).sample()
    scaler = TemperatureScaler().fit(logits, labels, progress=False)
    sweep = temperature_sweep(logits[:3], [1.0, scaler.temperature])
    torch.testing.assert_close(sweep.probabilities[1], torch.softmax(scaler(logits[:3]), dim=1))


@pytest.mark.parametrize(
    ("temperatures", "error", "match"),
    [
        ([], ValueError, "non-empty"),
        ([1.0, 0.0], ValueError, "finite and > 0"),
        ([1.0, math.nan], ValueError, "finite and > 0"),
        (torch.ones(2, 2), ValueError, "1-D"),
        (["a"], TypeError, "real numbers"),
    ],
)
def test_bad_temperatures_raise(temperatures, error, match):
    with pytest.raises(error, match=match):
        temperature_sweep(torch.zeros(3), temperatures)


def test_one_class_is_rejected():
    with pytest.raises(ValueError, match="K >= 2"):
        temperature_sweep(torch.zeros(4, 1), [1.0])


def test_plot_draws_each_class_and_the_entropy(tmp_path):
    sweep = temperature_sweep(torch.tensor([[0.0, 1.0, 2.0], [3.2, 2.8, 0.5]]), [4.0, 0.5, 1.0])
    figure = plot_temperature_sweep(sweep, index=1, class_names=["a", "b", "c"], mark=2.0)
    left, right = figure.axes
    lines = {line.get_label(): line for line in left.get_lines()}
    assert [name for name in lines if name.startswith("class")] == ["class a", "class b", "class c"]
    x, y = lines["class a"].get_data()
    assert list(x) == [0.5, 1.0, 4.0]  # drawn in increasing T
    assert y[1] == pytest.approx(0.5755, abs=1e-4)
    entropy_line = next(line for line in right.get_lines() if line.get_label() == "entropy (nats)")
    assert list(entropy_line.get_ydata()) == pytest.approx(sorted(sweep.entropy[:, 1].tolist()))
    path = tmp_path / "sweep.png"
    figure.savefig(path)
    assert path.stat().st_size > 10_000


def test_plot_limits_the_classes_drawn():
    logits = torch.arange(20.0)
    figure = plot_temperature_sweep(temperature_sweep(logits, [0.5, 1.0]), max_classes=3)
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert [label for label in labels if label.startswith("class")] == [
        "class 19",
        "class 18",
        "class 17",
    ]


def test_plot_checks_its_arguments():
    sweep = temperature_sweep(torch.zeros(2, 3), [1.0])
    with pytest.raises(ValueError, match="out of range"):
        plot_temperature_sweep(sweep, index=2)
    with pytest.raises(ValueError, match="class_names"):
        plot_temperature_sweep(sweep, class_names=["a"])
    with pytest.raises(TypeError, match="TemperatureSweep"):
        plot_temperature_sweep(torch.zeros(3))
