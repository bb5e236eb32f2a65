"""Reliability diagrams draw exactly the bins they are given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchcal.metrics import reliability_bins

pytest.importorskip("matplotlib")
from torchcal.plots import reliability_diagram, reliability_diagram_from_probs


def probs_and_labels():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3000, 10, generator=generator) * 3
    labels = torch.multinomial(torch.softmax(logits / 2, 1), 1, generator=generator)[:, 0]
    return torch.softmax(logits, 1), torch.softmax(logits / 2, 1), labels


def test_drawn_bars_equal_the_bins(tmp_path):
    before, after, labels = probs_and_labels()
    bins = {
        "uncalibrated": reliability_bins(before, labels),
        "calibrated": reliability_bins(after, labels),
    }
    figure = reliability_diagram(bins, path=tmp_path / "diagram.svg")
    top, bottom = figure.axes
    assert (tmp_path / "diagram.svg").read_text().lstrip().startswith("<?xml")
    for index, (name, these) in enumerate(bins.items()):
        filled = (these.counts > 0).numpy()
        accuracy_bars, gap_bars = top.containers[2 * index], top.containers[2 * index + 1]
        heights = [bar.get_height() for bar in accuracy_bars]
        np.testing.assert_allclose(heights, these.accuracy.numpy()[filled], atol=1e-12)
        tops = [bar.get_y() + bar.get_height() for bar in gap_bars]
        np.testing.assert_allclose(tops, these.confidence.numpy()[filled], atol=1e-12)
        counts = [bar.get_height() for bar in bottom.containers[index]]
        np.testing.assert_array_equal(counts, these.counts.numpy())
        ece = float(these.calibration_error())
        assert f"{name} (ECE {ece:.4f})" in [t.get_text() for t in top.get_legend().get_texts()]


def test_convenience_on_probabilities_saves_png_and_pdf(tmp_path):
    before, _, labels = probs_and_labels()
    figure = reliability_diagram_from_probs(before, labels, n_bins=10, path=tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    figure.savefig(tmp_path / "d.pdf")
    assert (tmp_path / "d.pdf").read_bytes()[:4] == b"%PDF"
    assert len(figure.axes[1].containers[0]) == 10
