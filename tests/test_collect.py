"""Batches and outputs in the ecosystem's conventions, and the streamed next-token fit.

Everything here runs on plain torch modules that mimic the conventions (dict batches, outputs
with ``.logits``, causal language models); tests/test_integrations_hf.py repeats the key checks on
real Transformers models.
"""

from __future__ import annotations

import re
import subprocess
import sys
import weakref

import pytest
import torch
from conftest import scipy_temperature, tempered_logits
from torch import nn

from torchcal import TemperatureScaler, collect_logits
from torchcal._inputs.collect import Batches, logits_of
from torchcal.calibrators.base import Calibrator
from torchcal.calibrators.scaling import VectorScaler


class Output(dict):
    """An output object like a Transformers ModelOutput: a dict whose keys are attributes."""

    __getattr__ = dict.__getitem__


class KeywordClassifier(nn.Module):
    """A classifier called with keyword inputs, returning an object with ``.logits``."""

    def __init__(self, n_features: int = 6, n_classes: int = 4) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_classes)

    def forward(self, features, scale=None):
        logits = self.linear(features) * (4.0 if scale is None else scale[:, None])
        return Output(logits=logits, loss=None)


class TinyCausalLM(nn.Module):
    """Embedding -> linear over the vocabulary: (B, L) token ids to (B, L, V) logits."""

    def __init__(self, vocab: int = 11, width: int = 8, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, vocab)
        self.dropout = nn.Dropout(0.5)  # must be off during the fit
        self.outputs: list[weakref.ref] = []
        self.live_at_call: list[int] = []

    def forward(self, input_ids, attention_mask=None):
        self.live_at_call.append(sum(ref() is not None for ref in self.outputs))
        logits = self.head(self.dropout(torch.tanh(self.embed(input_ids)))) * 3
        self.outputs.append(weakref.ref(logits.untyped_storage()))
        return Output(logits=logits)


def sample_tokens(model, n, length, temperature, generator):
    """(n, length) token ids sampled from ``model`` at ``temperature``: the optimum T is near it."""
    ids = torch.randint(1, model.head.out_features, (n, 1), generator=generator)
    model.eval()
    with torch.no_grad():
        for _ in range(length - 1):
            probs = torch.softmax(model(ids).logits[:, -1] / temperature, dim=-1)
            ids = torch.cat([ids, torch.multinomial(probs, 1, generator=generator)], dim=1)
    model.live_at_call.clear()
    return ids


def token_batches(n_batches=6, batch_size=5, seed=0, model=None):
    """HF-convention batches: right-padded ids, attention masks, labels = ids with -100 padding.

    The tokens are sampled from ``model`` at temperature 1.5. Each batch is padded to its own
    longest sequence, so batches differ in length.
    """
    generator = torch.Generator().manual_seed(seed)
    model = model or TinyCausalLM()
    batches = []
    for _ in range(n_batches):
        lengths = torch.randint(2, 9, (batch_size,), generator=generator)
        width = int(lengths.max())
        ids = sample_tokens(model, batch_size, width, 1.5, generator)
        mask = torch.arange(width)[None, :] < lengths[:, None]
        ids = ids.where(mask, 0)
        labels = ids.where(mask, -100)
        batches.append({"input_ids": ids, "attention_mask": mask.long(), "labels": labels})
    return batches


def shifted_rows(model, batches):
    """The reference: logits[:, :-1] against labels[:, 1:] without -100, written out by hand."""
    model.eval()
    rows, targets = [], []
    with torch.no_grad():
        for batch in batches:
            logits = model(batch["input_ids"], batch["attention_mask"]).logits[:, :-1]
            labels = batch["labels"][:, 1:]
            keep = labels != -100
            rows.append(logits[keep])
            targets.append(labels[keep])
    return torch.cat(rows), torch.cat(targets)


# ------------------------------------------------------------------ batches and outputs
def test_dict_batches_with_an_output_object_fit_like_their_logits():
    torch.manual_seed(0)
    model = KeywordClassifier()
    features = torch.randn(400, 6)
    with torch.no_grad():
        probs = torch.softmax(model.linear(features) * 2, dim=1)
    labels = torch.multinomial(probs, 1, generator=torch.Generator().manual_seed(1)).squeeze(1)
    loader = [
        {"features": features[i : i + 64], "labels": labels[i : i + 64]} for i in range(0, 400, 64)
    ]
    scaler = TemperatureScaler(model).fit(loader, progress=False)
    with torch.no_grad():
        logits = model.linear(features) * 4
    assert scaler.temperature == pytest.approx(
        TemperatureScaler().fit(logits, labels).temperature, rel=1e-6
    )
    assert scaler.temperature == pytest.approx(scipy_temperature(logits, labels), rel=1e-5)
    # the fitted scaler takes the same dict inputs, and forwards them as keywords
    calibrated = scaler({"features": features[:3]})
    torch.testing.assert_close(calibrated, logits[:3] / scaler.temperature)


def test_labels_key_and_tuple_positions_are_options():
    logits, labels = tempered_logits(300, 5, seed=2)
    model = nn.Identity()
    reference = TemperatureScaler().fit(logits, labels).temperature
    renamed = [
        {"input": logits[i : i + 50], "target": labels[i : i + 50]} for i in range(0, 300, 50)
    ]
    triples = [(labels[i : i + 50], "id", logits[i : i + 50]) for i in range(0, 300, 50)]
    for loader in (
        Batches(renamed, labels_key="target"),
        Batches(triples, input_index=2, label_index=0),
    ):
        assert TemperatureScaler(model).fit(loader).temperature == pytest.approx(
            reference, rel=1e-7
        )


@pytest.mark.parametrize(
    ("outputs", "found"),
    [
        ("tensor", True),
        ({"logits": "tensor", "loss": 1.0}, True),
        (("tensor", "hidden"), True),
        (["tensor"], True),
    ],
)
def test_logits_are_found_in_every_output_convention(outputs, found):
    logits = torch.randn(3, 2)

    def put(value):
        if value == "tensor":
            return logits
        if isinstance(value, dict):
            return Output({k: put(v) for k, v in value.items()})
        if isinstance(value, (tuple, list)):
            return type(value)(put(v) for v in value)
        return value

    assert logits_of(put(outputs)) is logits


@pytest.mark.parametrize(
    ("outputs", "named"),
    [({"scores": torch.zeros(2)}, "dict with keys ['scores']"), ((1, 2), "tuple of length 2")],
)
def test_unrecognised_outputs_are_named_and_output_fn_picks_them(outputs, named):
    with pytest.raises(TypeError, match=re.escape(f"a {named}") + ".*output_fn"):
        logits_of(outputs)
    torch.testing.assert_close(
        logits_of({"scores": torch.ones(2, 3)}, lambda out: out["scores"]), torch.ones(2, 3)
    )
    with pytest.raises(TypeError, match="output_fn must return the logits as a tensor"):
        logits_of({"scores": 1}, lambda out: out["scores"])


def test_output_fn_reaches_every_calibrator_fit():
    logits, labels = tempered_logits(300, 4, seed=3)

    class Scores(nn.Module):
        def forward(self, x):
            return {"scores": x, "other": None}

    loader = Batches([(logits, labels)], output_fn=lambda out: out["scores"])
    assert TemperatureScaler(Scores()).fit(loader).temperature == pytest.approx(
        TemperatureScaler().fit(logits, labels).temperature, rel=1e-7
    )
    vector = VectorScaler(Scores()).fit(loader)
    torch.testing.assert_close(vector.head()(logits), VectorScaler().fit(logits, labels)(logits))


@pytest.mark.parametrize(
    ("loader", "error", "words"),
    [
        ([[0.1, 0.2], [0.3, 0.4]], TypeError, "batch 0 of the loader is a list of length 2.*row"),
        ([(0.5, 1)], TypeError, "batch 0 of the loader is a tuple of length 2"),
        ([{"x": torch.zeros(2, 3)}], ValueError, "batch 0 .* without the labels key 'labels'"),
        ([(torch.zeros(2, 3),)], TypeError, "too short"),
        ([torch.zeros(2, 3)], TypeError, "batch 0 .* got a tensor of shape"),
        ([(["a", "b"], torch.zeros(2))], TypeError, "batch 0 holds a list"),
        ([(torch.zeros(2, 3), "ab")], TypeError, "labels of batch 0"),
        ({"logits": torch.zeros(2)}, TypeError, "needs a loader"),
        (
            [
                (torch.zeros(2, 3), torch.zeros(2).long()),
                (torch.zeros(2, 5), torch.zeros(2).long()),
            ],
            ValueError,
            "batch 1 of the loader has K=5 classes.*batch 0 has K=3",
        ),
        (
            [
                (torch.zeros(2, 4, 3), torch.zeros(2, 4).long()),
                (torch.zeros(2, 4, 7), torch.zeros(2, 4).long()),
            ],
            ValueError,
            "batch 1 of the loader has K=7 classes.*batch 0 has K=3",
        ),
    ],
)
def test_loaders_that_break_the_conventions_get_a_clear_error(loader, error, words):
    with pytest.raises(error, match=words):
        TemperatureScaler().fit(loader, progress=False)


def test_batches_differing_in_k_are_named_for_every_calibrator():
    loader = [(torch.randn(4, 3), torch.tensor([0, 1, 2, 0])), (torch.randn(4, 6), torch.arange(4))]
    for cls in Calibrator.registry.values():
        with pytest.raises(ValueError, match=r"batch 1 of the loader has K=6 classes.*K=3"):
            cls().fit(loader, progress=False)


def test_batch_conventions_are_checked_when_given():
    with pytest.raises(ValueError, match="input_index and label_index must differ"):
        Batches([], input_index=1, label_index=1)
    with pytest.raises(ValueError, match="label_index must be an int >= 0"):
        Batches([], label_index=-1)
    with pytest.raises(TypeError, match="output_fn must be callable"):
        Batches([], output_fn="logits")


def test_token_batches_padded_to_different_lengths_fit_like_their_rows():
    """A token classifier's batches padded per batch: padded to one length with -100."""
    model = TinyCausalLM()
    batches = token_batches(model=model)
    logits, labels = collect_logits(model, batches, progress=False)
    assert logits.shape[1] == max(b["input_ids"].shape[1] for b in batches)
    rows, targets = [], []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            keep = batch["labels"] != -100
            rows.append(model(batch["input_ids"]).logits[keep])
            targets.append(batch["labels"][keep])
    assert int((labels != -100).sum()) == sum(t.numel() for t in targets)
    direct = TemperatureScaler().fit(torch.cat(rows), torch.cat(targets))
    scaler = TemperatureScaler(model).fit(batches, progress=False)
    assert scaler.temperature == pytest.approx(direct.temperature, rel=1e-6)


# ------------------------------------------------------------------ next-token streaming
def test_shift_labels_fits_the_shifted_rows_exactly_and_streams():
    model = TinyCausalLM()
    batches = token_batches(n_batches=8, model=model)
    model.train()
    scaler = TemperatureScaler(model, shift_labels=True).fit(batches, progress=False)
    assert model.training and model.dropout.training  # modes restored
    live_at_call = list(model.live_at_call)
    rows, targets = shifted_rows(model, batches)
    direct = TemperatureScaler().fit(rows, targets)
    assert scaler.temperature == pytest.approx(direct.temperature, rel=1e-6)
    assert scaler.temperature == pytest.approx(scipy_temperature(rows, targets), rel=1e-5)
    result = scaler.fit_result
    assert result.n_samples == rows.shape[0] and result.bound is None
    assert result.nll_before == pytest.approx(direct.fit_result.nll_before, rel=1e-6)
    assert result.ece_after == pytest.approx(direct.fit_result.ece_after, abs=1e-6)
    # one model pass per batch per pass over the loader, the count reported in data_passes
    assert len(live_at_call) == result.data_passes * len(batches)
    assert result.data_passes >= 2
    # never more than the held batch's logits alive when the model runs again
    assert max(live_at_call) <= 1


def test_collecting_keeps_every_batch_alive_which_is_what_streaming_avoids():
    model = TinyCausalLM()
    batches = token_batches(n_batches=8, model=model)
    logits, _ = collect_logits(model, batches)
    assert model.live_at_call == list(range(8))  # the contrast to the streamed fit above
    del logits


def test_shift_labels_on_tensors_slices_and_matches_the_stream():
    model = TinyCausalLM()
    batches = token_batches(n_batches=1, batch_size=12, model=model)
    ids, labels = batches[0]["input_ids"], batches[0]["labels"]
    with torch.no_grad():
        logits = model.eval()(ids).logits
    on_tensors = TemperatureScaler(shift_labels=True).fit(logits, labels)
    streamed = TemperatureScaler(model, shift_labels=True).fit(batches)
    rows, targets = shifted_rows(model, batches)
    direct = TemperatureScaler().fit(rows, targets).temperature
    assert on_tensors.temperature == pytest.approx(direct, rel=1e-6)
    assert streamed.temperature == pytest.approx(direct, rel=1e-6)
    # a loader of logits (no model) streams too
    of_logits = [{"logits": logits, "labels": labels}]
    assert TemperatureScaler(shift_labels=True).fit(of_logits).temperature == pytest.approx(
        direct, rel=1e-6
    )


def test_shift_labels_with_a_distributed_group_of_one_is_the_same_fit(tmp_path):
    import torch.distributed as dist

    model = TinyCausalLM()
    batches = token_batches(n_batches=4, model=model)
    local = TemperatureScaler(model, shift_labels=True).fit(batches)
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        shared = TemperatureScaler(model, shift_labels=True).fit(batches, distributed=True)
    finally:
        dist.destroy_process_group()
    assert shared.temperature == local.temperature


def test_a_shuffling_loader_is_refused_not_misread():
    model = TinyCausalLM()
    batches = token_batches(n_batches=6, model=model)

    class Shuffled:
        def __init__(self):
            self.generator = torch.Generator().manual_seed(0)

        def __iter__(self):
            order = torch.randperm(len(batches), generator=self.generator).tolist()
            return iter([batches[i] for i in order])

    with pytest.raises(ValueError, match=r"different labels on this pass.*shuffle=False"):
        TemperatureScaler(model, shift_labels=True).fit(Shuffled())


@pytest.mark.parametrize(
    ("data", "labels", "options", "error", "words"),
    [
        ((b for b in token_batches(2)), None, {}, TypeError, "iterated again.*generator"),
        (torch.zeros(2, 3), torch.zeros(2).long(), {}, ValueError, r"\(B, L, V\) logits"),
        (
            [{"input_ids": torch.ones(2, 3).long(), "labels": torch.full((2, 3), -100)}],
            None,
            {},
            ValueError,
            "every next-token label equals ignore_index=-100",
        ),
        (
            [{"input_ids": torch.ones(2, 3).long(), "labels": torch.ones(2).long()}],
            None,
            {},
            ValueError,
            r"\(B, L\) token labels.*shape \(2,\)",
        ),
        (
            torch.zeros(2, 3, 4),
            torch.zeros(2, 3).long(),
            {"per_class": True},
            ValueError,
            "softmax",
        ),
        (torch.zeros(2, 3, 4), torch.zeros(2, 3).long(), {"class_dim": 1}, ValueError, "last"),
        ([], None, {}, ValueError, "no batches"),
    ],
)
def test_shift_labels_bad_input_is_named(data, labels, options, error, words):
    model = None if labels is not None else TinyCausalLM()
    with pytest.raises(error, match=words):
        TemperatureScaler(model, shift_labels=True, **options).fit(data, labels)


def test_shift_labels_is_an_option_that_saves_and_loads(tmp_path):
    pytest.importorskip("safetensors")
    import torchcal

    with pytest.raises(TypeError, match="shift_labels must be True or False"):
        TemperatureScaler(shift_labels="yes")
    model = TinyCausalLM()
    scaler = TemperatureScaler(model, shift_labels=True).fit(
        token_batches(n_batches=2, model=model)
    )
    torchcal.save(scaler, tmp_path / "lm.safetensors")
    loaded = torchcal.load(tmp_path / "lm.safetensors", model)
    assert loaded.shift_labels and loaded.temperature == scaler.temperature


def test_importing_torchcal_imports_no_training_framework():
    code = (
        "import sys, torchcal, torchcal._inputs.collect, torchcal.export\n"
        "print([m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_calibrators_without_a_distributed_fit_fit_on_every_ranks_logits(tmp_path):
    """The integrations' fit under DDP for kinds other than temperature: shards are exchanged."""
    import torch.distributed as dist

    from torchcal.integrations._common import fit_calibrator

    logits, labels = tempered_logits(300, 4, seed=5)
    loader = Batches([(logits[:150], labels[:150]), (logits[150:], labels[150:])])
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        shared = fit_calibrator(VectorScaler(), loader, distributed=True, progress=False)
    finally:
        dist.destroy_process_group()
    local = VectorScaler().fit(logits, labels)
    for name, value in local.fitted_tensors().items():
        torch.testing.assert_close(shared.fitted_tensors()[name], value, rtol=0, atol=0)
