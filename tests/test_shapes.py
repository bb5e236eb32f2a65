"""Every classifier shape: binary, multi-label, segmentation, token sequences, probabilities."""

from __future__ import annotations

import math

import pytest
import scipy.optimize
import torch
from conftest import tempered_logits

from torchcal import CalibrationWarning, TemperatureScaler
from torchcal.metrics import expected_calibration_error, negative_log_likelihood


def fit(logits, labels, **options):
    return TemperatureScaler(**options).fit(logits, labels, progress=False)


def scipy_binary_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Float64 optimum of the mean binary cross-entropy of sigmoid(z / T), by scipy."""
    z, y = logits.double().reshape(-1), targets.double().reshape(-1)

    def bce(log_t: float) -> float:
        scaled = z * math.exp(-log_t)
        return float(torch.nn.functional.binary_cross_entropy_with_logits(scaled, y))

    result = scipy.optimize.minimize_scalar(
        bce, bounds=(math.log(1e-3), math.log(1e3)), method="bounded", options={"xatol": 1e-10}
    )
    return math.exp(result.x)


def binary_problem(n=20_000, temperature=2.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=generator) * 3
    targets = torch.bernoulli(torch.sigmoid(logits.double() / temperature), generator=generator)
    return logits, targets


@pytest.mark.parametrize("shape", [(20_000,), (20_000, 1)])
@pytest.mark.parametrize("method", ["lbfgs", "newton"])
def test_binary_sigmoid_fit_is_exact(shape, method):
    logits, targets = binary_problem()
    scaler = fit(logits.reshape(shape), targets.long(), method=method)
    assert abs(scaler.temperature / scipy_binary_temperature(logits, targets) - 1) <= 1e-5
    assert torch.allclose(
        scaler.predict_proba(logits[:5]), torch.sigmoid(logits[:5] / scaler.temperature)
    )


def test_multilabel_shared_and_per_class_temperatures_are_exact():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5_000, 4, generator=generator) * 3
    true_t = torch.tensor([0.7, 1.0, 2.0, 3.0])
    targets = torch.bernoulli(torch.sigmoid(logits.double() / true_t), generator=generator).float()
    shared = fit(logits, targets, activation="sigmoid")
    assert abs(shared.temperature / scipy_binary_temperature(logits, targets) - 1) <= 1e-5
    per_class = fit(logits, targets, activation="sigmoid", per_class=True)
    for k in range(4):
        reference = scipy_binary_temperature(logits[:, k], targets[:, k])
        assert abs(float(per_class.temperatures[k]) / reference - 1) <= 1e-5
    assert len(per_class.fit_result) == 4
    torch.testing.assert_close(per_class(logits), logits / per_class.temperatures)
    with pytest.raises(ValueError, match=r"\.temperatures"):
        per_class.temperature  # noqa: B018


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)])
def test_segmentation_fit_equals_the_flattened_fit(spatial):
    flat_logits, flat_labels = tempered_logits(4 * math.prod(spatial), 5, 1.8, seed=2)
    dense = flat_logits.reshape(4, *spatial, 5).movedim(-1, 1).contiguous()  # (N, K, *spatial)
    labels = flat_labels.reshape(4, *spatial)
    scaler = fit(dense, labels)
    assert scaler.temperature == pytest.approx(fit(flat_logits, flat_labels).temperature, rel=1e-6)
    probs = scaler.predict_proba(dense)
    assert probs.shape == dense.shape
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(4, *spatial))
    ece_dense = expected_calibration_error(probs, labels)
    ece_flat = expected_calibration_error(
        torch.softmax(flat_logits / scaler.temperature, 1), flat_labels
    )
    assert float(ece_dense) == pytest.approx(float(ece_flat), abs=1e-6)


def test_token_sequences_leave_ignored_positions_out():
    flat_logits, flat_labels = tempered_logits(8 * 50, 30, 1.5, seed=3)
    logits, labels = flat_logits.reshape(8, 50, 30), flat_labels.reshape(8, 50).clone()
    labels[:, 40:] = -100  # padding
    scaler = fit(logits, labels)
    kept = labels.reshape(-1) != -100
    expected = fit(flat_logits[kept], flat_labels[kept]).temperature
    assert scaler.temperature == pytest.approx(expected, rel=1e-6)
    assert scaler.fit_result.n_samples == int(kept.sum())
    probs = scaler.predict_proba(logits)
    nll = negative_log_likelihood(probs, labels)
    expected_nll = negative_log_likelihood(
        torch.softmax(flat_logits[kept] / expected, 1), flat_labels[kept]
    )
    assert float(nll) == pytest.approx(float(expected_nll), rel=1e-6)


def test_every_position_ignored_is_an_error():
    with pytest.raises(ValueError, match="every one of the 12 labels equals ignore_index"):
        fit(torch.randn(2, 6, 5), torch.full((2, 6), -100))


def test_all_labels_of_one_class_warn():
    logits, _ = tempered_logits(500, 4, seed=4)
    with pytest.warns(CalibrationWarning, match="all 500 labels are class 2"):
        fit(logits, torch.full((500,), 2))


def test_probabilities_are_detected_and_accepted_when_declared():
    logits, labels = tempered_logits(2_000, 6, 2.0, seed=5)
    probs = torch.softmax(logits, dim=1)
    with pytest.raises(ValueError, match=r"look like probabilities.*inputs='probs'"):
        fit(probs, labels)
    declared = fit(probs, labels, inputs="probs")
    assert declared.temperature == pytest.approx(fit(logits, labels).temperature, rel=1e-5)
    binary, targets = binary_problem(n=2_000)
    with pytest.raises(ValueError, match="look like probabilities"):
        fit(torch.sigmoid(binary), targets)
    from_probs = fit(torch.sigmoid(binary.double()), targets, inputs="probs")
    assert from_probs.temperature == pytest.approx(
        fit(binary.double(), targets).temperature, rel=1e-6
    )


@pytest.mark.parametrize(
    ("logits", "labels", "options", "message"),
    [
        (torch.randn(4, 3), torch.eye(3)[[0, 1, 2, 0]], {}, "one-hot labels are not accepted"),
        (torch.randn(4, 3, 3, 3), torch.zeros(4, 3, 3, dtype=torch.long), {}, "ambiguous"),
        (torch.randn(4, 5, 6), torch.zeros(4, 7, dtype=torch.long), {}, "do not match"),
        (torch.randn(6), torch.tensor([0, 1, 2, 0, 1, 0]), {}, "must be 0 or 1"),
        (
            torch.randn(4, 3),
            torch.zeros(4, 3),
            {"activation": "sigmoid", "class_dim": 5},
            "out of range",
        ),
        (
            torch.randn(4, 3),
            torch.zeros(4, dtype=torch.long),
            {"per_class": True},
            "per_class=True",
        ),
    ],
)
def test_shape_mistakes_are_named(logits, labels, options, message):
    with pytest.raises(ValueError, match=message):
        fit(logits, labels, **options)


def test_state_dict_carries_per_class_temperatures_and_the_class_dim():
    logits = torch.randn(300, 3) * 2
    targets = torch.bernoulli(torch.sigmoid(logits / 2)).float()
    scaler = fit(logits, targets, activation="sigmoid", per_class=True)
    fresh = TemperatureScaler(activation="sigmoid", per_class=True)
    fresh.load_state_dict(scaler.state_dict())
    torch.testing.assert_close(fresh.predict_proba(logits), scaler.predict_proba(logits))
