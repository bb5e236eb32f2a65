"""The streaming meter equals the one-shot metrics, batch by batch and across 2 gloo ranks."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from torchcal.metrics import (
    CalibrationErrorMeter,
    accuracy,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_bins,
)


def data(n: int = 3000, k: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=generator) * 3
    labels = torch.multinomial(torch.softmax(logits / 2, dim=1), 1, generator=generator)
    return logits, labels.squeeze(1)


def feed(meter: CalibrationErrorMeter, inputs: torch.Tensor, labels: torch.Tensor) -> None:
    for start in range(0, len(labels), 257):
        meter.update(inputs[start : start + 257], labels[start : start + 257])


@pytest.mark.parametrize("norm", ["l1", "l2", "max"])
def test_meter_equals_one_shot_metrics(norm):
    logits, labels = data()
    probs = torch.softmax(logits, dim=1)
    meter = CalibrationErrorMeter(n_bins=15, norm=norm)
    feed(meter, probs, labels)
    expected = expected_calibration_error(probs, labels, norm=norm)
    assert float(meter.compute()) == pytest.approx(float(expected), abs=1e-12)
    bins, reference = meter.bins(), reliability_bins(probs, labels)
    assert torch.equal(bins.counts, reference.counts)
    assert torch.allclose(bins.confidence, reference.confidence, rtol=0, atol=1e-12)
    assert torch.allclose(bins.accuracy, reference.accuracy, rtol=0, atol=1e-12)
    summary = meter.summary()
    assert summary["n_samples"] == 3000
    assert summary["accuracy"] == pytest.approx(float(accuracy(probs, labels)), abs=1e-12)
    assert summary["nll"] == pytest.approx(float(negative_log_likelihood(probs, labels)), abs=1e-12)
    assert summary["brier"] == pytest.approx(float(brier_score(probs, labels)), abs=1e-12)


def test_meter_on_logits_and_reset():
    logits, labels = data()
    probs = torch.softmax(logits, dim=1)
    meter = CalibrationErrorMeter(inputs="logits")
    feed(meter, logits, labels)
    summary = meter.summary()
    assert summary["ece"] == pytest.approx(float(expected_calibration_error(probs, labels)), 1e-12)
    # log_softmax in float64 against log(softmax) in float32: float32 rounding apart
    assert summary["nll"] == pytest.approx(float(negative_log_likelihood(probs, labels)), rel=1e-6)
    meter.reset()
    assert meter.n_samples == 0
    with pytest.raises(RuntimeError, match="no data"):
        meter.compute()


def test_meter_refuses_logits_passed_as_probabilities():
    logits, labels = data(100)
    with pytest.raises(ValueError, match="softmax"):
        CalibrationErrorMeter(inputs="probs").update(logits, labels)
    with pytest.raises(ValueError, match="inputs"):
        CalibrationErrorMeter(inputs="scores")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, world_size: int, port: int, results: dict) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        logits, labels = data()
        half = slice(rank * 1500, (rank + 1) * 1500)
        meter = CalibrationErrorMeter(inputs="logits")
        feed(meter, logits[half], labels[half])
        summary = meter.summary()
        summary["local_ece"] = float(meter.compute(sync=False))
        summary["local_n"] = meter.n_samples
        results[rank] = summary
    finally:
        dist.destroy_process_group()


def test_meter_syncs_across_two_gloo_processes():
    logits, labels = data()
    probs = torch.softmax(logits, dim=1)
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank_main, args=(2, _free_port(), results), nprocs=2, join=True)
        results = dict(results)
    one_shot = float(expected_calibration_error(probs, labels))
    for rank in (0, 1):
        assert results[rank]["n_samples"] == 3000
        assert results[rank]["local_n"] == 1500
        assert results[rank]["ece"] == pytest.approx(one_shot, abs=1e-12)
        assert results[rank]["mce"] == pytest.approx(
            float(expected_calibration_error(probs, labels, norm="max")), abs=1e-12
        )
        assert results[rank]["accuracy"] == pytest.approx(float(accuracy(probs, labels)), 1e-12)
    half = probs[:1500], labels[:1500]
    assert results[0]["local_ece"] == pytest.approx(float(expected_calibration_error(*half)), 1e-12)


def test_meter_on_logits_takes_the_nll_and_brier_in_float64(monkeypatch):
    from torchcal import _terms

    monkeypatch.setattr(_terms, "CHUNK_ELEMENTS", 50)  # several row chunks per batch
    logits, labels = data(n=1000, k=6, seed=3)
    meter = CalibrationErrorMeter(inputs="logits")
    feed(meter, logits.numpy(), labels.numpy())
    wide = logits.double()
    nll = float((torch.logsumexp(wide, 1) - wide.gather(1, labels[:, None]).squeeze(1)).mean())
    probs = torch.softmax(logits, dim=1).double()  # the meter's probabilities: float32 softmax
    brier = float(((probs - torch.eye(6, dtype=torch.float64)[labels]) ** 2).sum(1).mean())
    summary = meter.summary()
    assert summary["nll"] == pytest.approx(nll, rel=1e-13)
    assert summary["brier"] == pytest.approx(brier, rel=1e-13)
    assert summary["n_samples"] == 1000
