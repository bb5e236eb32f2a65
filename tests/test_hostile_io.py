"""Hostile input for the file entry points: ``torchcal.load``/``save``, ``load_state_dict``,
``open_logits`` and ``torchcal report --scaler``.

Every case ends in one of the harness's outcomes (see ``tests/hostile.py``): a ValueError or
TypeError (OSError for a target that cannot be written) naming the file and the field, or an
exact result checked against the values that were saved. The families:

- loaded values no fit could produce (issue cause 4), for every calibrator kind through one
  parametrised contract, by ``load`` and by ``load_state_dict`` (which must leave the target
  calibrator untouched);
- malformed torchcal files: missing or invalid ``options`` and ``fit_result`` (cause 13), and
  hypothesis-drawn JSON values, byte flips and truncations;
- malformed ``.safetensors`` and ``.npy`` headers for ``open_logits`` (cause 13), hand-written and
  hypothesis-drawn;
- files that are not regular files or cannot be read (cause 9), and saving (cause 10).

The hypothesis families run a small profile by default; ``pytest -m slow`` runs a larger one.
"""

from __future__ import annotations

import copy
import json
import os
import stat
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from conftest import tempered_logits
from hostile import expect_exact, expect_refused
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torchcal
from torchcal import TemperatureScaler, open_logits

ROOT = Path(torchcal.__file__).resolve().parents[1]  # the torchcal under test, for subprocesses
NAN, INF = float("nan"), float("inf")
FAST = settings(  # the same examples on every run: counts that do not change
    max_examples=40,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
LARGE = settings(  # derandomized too: a run that fails fails on every machine, every time
    max_examples=600,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# ------------------------------------------------------------------------------------ fixtures
K = 4


def _fit(kind: str) -> torchcal.Calibrator:
    logits, labels = tempered_logits(400, K, temperature=1.5, seed=7)
    calibrator = torchcal.Calibrator.registry[kind]()
    return calibrator.fit(logits, labels, progress=False)


KINDS = [
    "temperature",
    "ensemble_temperature",
    "vector",
    "matrix",
    "dirichlet",
    "histogram",
    "isotonic",
]
FITTED: dict[str, torchcal.Calibrator] = {}


def fitted(kind: str) -> torchcal.Calibrator:
    """One fitted calibrator of each kind, shared by the tests (never modified by them)."""
    if kind not in FITTED:
        FITTED[kind] = _fit(kind)
    return FITTED[kind]


def saved(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.safetensors"
    torchcal.save(fitted(kind), path)
    return path


def read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safetensors.safe_open(str(path), framework="pt") as file:
        return {k: file.get_tensor(k) for k in file.keys()}, file.metadata()  # noqa: SIM118


def rewritten(
    path: Path,
    tensors: dict[str, torch.Tensor] | None = None,
    metadata: dict[str, str | None] | None = None,
) -> Path:
    """Rewrite a saved file with some tensors replaced and metadata fields changed (None: drop)."""
    stored, header = read_file(path)
    stored.update(tensors or {})
    for key, value in (metadata or {}).items():
        if value is None:
            header.pop(key, None)
        else:
            header[key] = value
    safetensors.torch.save_file(stored, str(path), metadata=header)
    return path


def same_predictions(original: torchcal.Calibrator) -> Callable[[Any], None]:
    """The check of an exact load: the loaded calibrator predicts exactly as the saved one."""
    logits, _ = tempered_logits(50, K, seed=8)

    def check(loaded: torchcal.Calibrator) -> None:
        assert type(loaded) is type(original) and loaded.is_fitted
        for (name, a), (_, b) in zip(
            loaded.fitted_tensors().items(), original.fitted_tensors().items(), strict=True
        ):
            assert torch.equal(a, b), name
        layout = ("_fitted_class_dim", "_n_classes", "_fitted_activation")
        if all(getattr(loaded, n, None) == getattr(original, n, None) for n in layout):
            assert torch.equal(loaded.predict_proba(logits), original.predict_proba(logits))
        else:  # a file that says it was fitted on other logits refuses these, naming them
            with pytest.raises(ValueError, match="fitted on"):
                loaded.predict_proba(logits)

    return check


# ------------------------------------------------------- cause 4: values no fit could produce
BAD_T = [
    (-2.0, "> 0"),
    (0.0, "> 0"),
    (NAN, "finite"),
    (INF, "finite"),
    (-INF, "finite"),
    (1e-9, "temperature_bounds"),
    (1e9, "temperature_bounds"),
]


def _bad_values() -> list[tuple[str, str, Any, str]]:
    """(kind, tensor, replacement or a function of the saved tensor, words of the refusal)."""
    cases: list[tuple[str, str, Any, str]] = []
    for value, words in BAD_T:
        cases.append(("temperature", "temperature_", torch.tensor(value), words))
        cases.append(("ensemble_temperature", "temperature_", torch.tensor(value), words))
    cases += [
        ("temperature", "temperature_", torch.tensor([1.5, 1.5]), "shape"),
        ("temperature", "temperature_", torch.tensor(2, dtype=torch.int64), "dtype"),
        ("ensemble_temperature", "weights_", torch.tensor([NAN, 0.5, 0.5]), "finite"),
        ("ensemble_temperature", "weights_", torch.tensor([-0.5, 1.0, 0.5]), ">= 0"),
        ("ensemble_temperature", "weights_", torch.tensor([0.5, 0.5, 0.5]), "sum to 1"),
        ("ensemble_temperature", "weights_", torch.tensor([0.5, 0.5]), "shape"),
    ]
    for kind in ("vector", "matrix", "dirichlet"):
        square = kind != "vector"
        seven = torch.eye(7) if square else torch.ones(7)
        cases += [
            (kind, "weight_", lambda w: torch.full_like(w, NAN), "finite"),
            (kind, "weight_", lambda w: torch.full_like(w, INF), "finite"),
            (kind, "weight_", seven, "shape"),  # would output 7 classes for 4-class logits
            (kind, "bias_", torch.zeros(7), "shape"),
            (kind, "bias_", lambda b: b.double().fill_(-INF), "finite"),
        ]
    cases += [
        ("histogram", "bin_values_", lambda v: v - 0.5, "[0, 1]"),
        ("histogram", "bin_values_", lambda v: v + 1.5, "[0, 1]"),
        ("histogram", "bin_values_", lambda v: torch.full_like(v, NAN), "finite"),
        ("histogram", "bin_values_", torch.full((7, 15), 0.5), "shape"),
        ("isotonic", "thresholds_", lambda t: t.flip(1), "non-decreasing"),
        ("isotonic", "values_", lambda v: v * 3, "[0, 1]"),
        ("isotonic", "values_", lambda v: torch.full_like(v, NAN), "finite"),
        ("isotonic", "values_", lambda v: v[:, :-1], "shape"),
        ("isotonic", "thresholds_", torch.zeros(7, 3), "shape"),
    ]
    return cases


BAD_VALUES = _bad_values()


def _replacement(kind: str, name: str, value: Any) -> torch.Tensor:
    original = fitted(kind).fitted_tensors()[name]
    return (value(original.clone()) if callable(value) else value).contiguous()


@pytest.mark.parametrize(
    ("kind", "name", "value", "words"),
    BAD_VALUES,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(BAD_VALUES)],
)
def test_load_refuses_values_no_fit_could_produce(tmp_path, kind, name, value, words):
    path = rewritten(saved(kind, tmp_path), {name: _replacement(kind, name, value)})
    expect_refused(lambda: torchcal.load(path), str(path), name, words)


@pytest.mark.parametrize(
    ("kind", "name", "value", "words"),
    BAD_VALUES,
    ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(BAD_VALUES)],
)
def test_load_state_dict_refuses_them_and_leaves_the_calibrator_as_it_was(kind, name, value, words):
    state = fitted(kind).state_dict()
    state[name] = _replacement(kind, name, value)
    for target in (type(fitted(kind))(), copy.deepcopy(fitted(kind))):
        before = copy.deepcopy(target)
        expect_refused(lambda t=target: t.load_state_dict(state), name, words)
        assert target.is_fitted == before.is_fitted
        for (key, a), (_, b) in zip(
            target.state_dict().items(), before.state_dict().items(), strict=True
        ):
            if isinstance(a, torch.Tensor):  # (an unfitted scaler's T is NaN)
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=key)
            else:
                assert a == b, key


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips_exactly(tmp_path, kind):
    path = saved(kind, tmp_path)
    expect_exact(lambda: torchcal.load(path), same_predictions(fitted(kind)))
    fresh = type(fitted(kind))()

    def load_state() -> torchcal.Calibrator:
        fresh.load_state_dict(fitted(kind).state_dict())
        return fresh

    expect_exact(load_state, same_predictions(fitted(kind)))


def test_a_temperature_that_disagrees_with_its_fit_result_is_refused(tmp_path):
    path = rewritten(saved("temperature", tmp_path), {"temperature_": torch.tensor(2.5)})
    expect_refused(lambda: torchcal.load(path), str(path), "fit_results[0].temperature")


def test_a_temperature_held_at_its_float32_rounded_bound_loads(tmp_path):
    scaler = TemperatureScaler(temperature_bounds=(0.01, 0.1))  # 0.1 rounds up in float32
    scaler._set_fitted(torch.tensor(0.1), None)
    assert float(scaler.temperature_) > 0.1
    torchcal.save(scaler, tmp_path / "t.safetensors")
    expect_exact(lambda: torchcal.load(tmp_path / "t.safetensors"), same_predictions(scaler))


def test_an_unfitted_state_dict_still_loads_as_unfitted():
    for kind in KINDS:
        fresh = type(fitted(kind))()
        fresh.load_state_dict(type(fitted(kind))().state_dict())
        assert not fresh.is_fitted


# ------------------------------------------------------- cause 4 through the command line
def test_report_with_a_negative_temperature_scaler_fails_naming_it(tmp_path):
    path = rewritten(saved("temperature", tmp_path), {"temperature_": torch.tensor(-2.0)})
    logits, labels = tempered_logits(200, K, seed=10)
    np.save(tmp_path / "logits.npy", logits.numpy())
    np.save(tmp_path / "labels.npy", labels.numpy())
    command = [
        sys.executable,
        "-m",
        "torchcal",
        "report",
        str(tmp_path / "logits.npy"),
        str(tmp_path / "labels.npy"),
        "--scaler",
        str(path),
        "--resamples",
        "10",
        "--output-dir",
        str(tmp_path / "report"),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )

    def report_refuses() -> int:  # the exit status, or the error the command printed
        if result.returncode != 0:
            raise ValueError(result.stderr)
        return result.returncode

    expect_refused(report_refuses, "temperature", "-2", path.name)
    assert not (tmp_path / "report" / "report.json").exists()


# ------------------------------------------------------- cause 13: malformed torchcal files
MALFORMED_METADATA = [
    ({"options": None}, "options", "missing"),
    ({"fit_result": None}, "fit_result", "missing"),
    ({"options": "{"}, "options", "not valid JSON"),
    ({"fit_result": "{not json"}, "fit_result", "not valid JSON"),
    ({"options": "[1, 2]"}, "options", "JSON object"),
    ({"fit_result": "[1, 2]"}, "fit_result", "JSON object"),
    ({"fit_result": "3"}, "fit_result", "JSON object"),
    ({"options": '{"n_bins": "15"}'}, "options", "n_bins"),
    ({"options": '{"n_bins": -1}'}, "options", "n_bins"),
    ({"options": '{"per_class": "yes"}'}, "options", "per_class"),
    ({"options": '{"tol": NaN}'}, "options", "tol"),
    ({"options": '{"temperature_bounds": [1, "x"]}'}, "options", "temperature_bounds"),
    ({"options": '{"temperature_bounds": [2, 1]}'}, "options", "temperature_bounds"),
    ({"options": '{"surprise": 1}'}, "options", "surprise"),
    ({"fit_result": '{"fit_results": [{"temperature": 1.0}]}'}, "fit_result", "nll_before"),
    ({"fit_result": '{"fit_results": "abc"}'}, "fit_result", "fit_results"),
    ({"fit_result": '{"fit_results": []}'}, "fit_result", "fit_results"),
    ({"fit_result": '{"fit_results": [1]}'}, "fit_result", "JSON object"),
    ({"fit_result": '{"activation": "relu", "fit_results": null}'}, "fit_result", "activation"),
    ({"fit_result": '{"class_dim": 1, "fit_results": null}'}, "fit_result", "class_dim"),
    ({"format_version": "x"}, "format", "not a torchcal file"),
    ({"calibrator": "banana"}, "banana", "cannot load"),
]


@pytest.mark.parametrize(("metadata", "field", "words"), MALFORMED_METADATA)
def test_malformed_temperature_files_name_the_file_and_field(tmp_path, metadata, field, words):
    path = rewritten(saved("temperature", tmp_path), metadata=metadata)
    expect_refused(lambda: torchcal.load(path), str(path), field, words)


def _edited_fit_result(kind: str, path: Path, **changes: Any) -> Path:
    state = json.loads(read_file(path)[1]["fit_result"])
    for key, value in changes.items():
        if isinstance(value, dict):
            state[key] = {**state[key], **value}
        else:
            state[key] = value
    return rewritten(path, metadata={"fit_result": json.dumps(state)})


def test_temperature_fit_results_of_the_wrong_kind_are_refused(tmp_path):
    path = saved("temperature", tmp_path)
    state = json.loads(read_file(path)[1]["fit_result"])
    record = state["fit_results"][0]
    for change, words in [
        ({"solver": "adam"}, "solver"),
        ({"calibrator": "vector"}, "calibrator"),
        ({"bound": "middle"}, "bound"),
        ({"n_samples": -3}, "n_samples"),
        ({"converged": "yes"}, "converged"),
        ({"nll_after": NAN}, "nll_after"),
    ]:
        edited = {**state, "fit_results": [{**record, **change}]}
        rewritten(path, metadata={"fit_result": json.dumps(edited)})
        expect_refused(lambda: torchcal.load(path), str(path), words)
    two = {**state, "fit_results": [record, record]}
    rewritten(path, metadata={"fit_result": json.dumps(two)})
    expect_refused(lambda: torchcal.load(path), str(path), "fit_results")


@pytest.mark.parametrize(
    "kind", ["vector", "matrix", "dirichlet", "histogram", "isotonic", "ensemble_temperature"]
)
def test_a_softmax_calibrator_state_that_contradicts_its_tensors_is_refused(tmp_path, kind):
    path = saved(kind, tmp_path)
    original = read_file(path)[1]["fit_result"]
    (record,) = json.loads(original)["fit_results"]
    for changes, words in [
        ({"n_classes": 7}, "shape"),
        ({"n_classes": 0}, "n_classes"),
        ({"n_classes": "4"}, "n_classes"),
        ({"class_dim": 0}, "class_dim"),
        ({"fitted": "yes"}, "fitted"),
        ({"fitted": False}, "fitted"),
        ({"fit_results": [{**record, "calibrator": "banana"}]}, "calibrator"),
        ({"fit_results": [{**record, "n_samples": None}]}, "n_samples"),
    ]:
        if kind == "ensemble_temperature" and changes == {"n_classes": 7}:
            continue  # its T and weights do not depend on K (it then refuses 4-class logits)
        rewritten(path, metadata={"fit_result": original})
        _edited_fit_result(kind, path, **changes)
        expect_refused(lambda: torchcal.load(path), str(path), words)
        rewritten(path, fitted(kind).fitted_tensors())


def test_a_file_with_a_tensor_it_should_not_hold_is_refused(tmp_path):
    path = rewritten(saved("temperature", tmp_path), {"payload": torch.zeros(3)})
    expect_refused(lambda: torchcal.load(path), str(path), "payload")


def _refused_or_exact(call: Callable[[], Any], check: Callable[[Any], None], *words: str) -> str:
    """Either outcome is right for a drawn case; the harness classifies whichever happened."""
    try:
        call()
    except Exception:
        return expect_refused(call, *words)
    return expect_exact(call, check)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.sampled_from(["options", "fit_result"])
KEYS = st.sampled_from(
    [
        "n_bins",
        "tol",
        "max_iter",
        "temperature_bounds",
        "method",
        "per_class",
        "class_dim",
        "fit_results",
        "activation",
        "n_classes",
        "fitted",
        "fit_result",
        "bins",
        "loss",
        "diagonal",
    ]
)


def _random_metadata_case(tmp_path: Path, kind: str, field: str, key: str, value: Any) -> None:
    path = saved(kind, tmp_path)
    state = json.loads(read_file(path)[1][field])
    if isinstance(state, dict):
        state[key] = value
    rewritten(path, metadata={field: json.dumps(state)})
    whole = rewritten(saved(kind, tmp_path / "whole"), metadata={field: json.dumps(value)})
    for target in (path, whole):
        check = same_predictions(fitted(kind))
        _refused_or_exact(lambda t=target: torchcal.load(t), check, str(target))


@given(kind=st.sampled_from(KINDS), field=FIELDS, key=KEYS, value=JSON)
@FAST
def test_random_json_in_the_metadata_is_refused_or_harmless(tmp_path, kind, field, key, value):
    (tmp_path / "whole").mkdir(exist_ok=True)
    _random_metadata_case(tmp_path, kind, field, key, value)


@pytest.mark.slow
@given(kind=st.sampled_from(KINDS), field=FIELDS, key=KEYS, value=JSON)
@LARGE
def test_random_json_in_the_metadata_larger_profile(tmp_path, kind, field, key, value):
    (tmp_path / "whole").mkdir(exist_ok=True)
    _random_metadata_case(tmp_path, kind, field, key, value)


def _damaged(original: bytes, header_end: int, data: st.DataObject) -> bytes:
    """``original`` truncated, extended, or with one byte of its header changed (the tensors'
    bytes carry no checksum, so a changed value there is a different, valid file)."""
    how = data.draw(st.sampled_from(["flip", "flip", "truncate", "extend"]))
    if how == "truncate":
        return original[: data.draw(st.integers(0, len(original) - 1))]
    if how == "extend":
        return original + data.draw(st.binary(min_size=1, max_size=16))
    at = data.draw(st.integers(0, header_end - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != original[at]))
    return original[:at] + bytes([byte]) + original[at + 1 :]


def _header_end(raw: bytes, suffix: str = ".safetensors") -> int:
    if suffix == ".npy":
        return len(raw) - LOGITS.numel() * LOGITS.element_size()
    return 8 + struct.unpack("<Q", raw[:8])[0]


def _corrupted_file_case(tmp_path: Path, kind: str, data: st.DataObject) -> None:
    original = saved(kind, tmp_path).read_bytes()
    corrupted = _damaged(original, _header_end(original), data)
    path = tmp_path / "corrupted.safetensors"
    path.write_bytes(corrupted)
    _refused_or_exact(lambda: torchcal.load(path), same_predictions(fitted(kind)), str(path))


@given(kind=st.sampled_from(KINDS), data=st.data())
@FAST
def test_corrupted_or_truncated_files_are_refused_or_load_exactly(tmp_path, kind, data):
    _corrupted_file_case(tmp_path, kind, data)


@pytest.mark.slow
@given(kind=st.sampled_from(KINDS), data=st.data())
@LARGE
def test_corrupted_or_truncated_files_larger_profile(tmp_path, kind, data):
    _corrupted_file_case(tmp_path, kind, data)


# ------------------------------------------------------- cause 13: open_logits headers
def _safetensors_bytes(header: Any, data: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


LOGITS = torch.arange(24, dtype=torch.float32).reshape(6, 4)
DATA = LOGITS.numpy().tobytes() + (-LOGITS).numpy().tobytes()  # two tensors' bytes
ENTRY = {"dtype": "F32", "shape": [6, 4], "data_offsets": [0, 96]}
NEIGHBOUR = {"dtype": "F32", "shape": [6, 4], "data_offsets": [96, 192]}
MALFORMED_HEADERS = [
    (_safetensors_bytes({"x": ENTRY}, DATA, 2**63 - 1), "header length"),
    (_safetensors_bytes({"x": ENTRY}, DATA, 2**40), "header length"),
    (_safetensors_bytes({"x": ENTRY}, DATA, 3), "readable"),
    (b"\x01\x02", "8 bytes"),
    (_safetensors_bytes({"x": {"dtype": "F32", "shape": [6, 4]}}, DATA), "data_offsets"),
    (_safetensors_bytes({"x": [1, 2, 3]}, DATA), "object"),
    (_safetensors_bytes({"x": "F32"}, DATA), "object"),
    (_safetensors_bytes({"x": {**ENTRY, "shape": ["6", "4"]}}, DATA), "shape"),
    (_safetensors_bytes({"x": {**ENTRY, "shape": [6, -4]}}, DATA), "shape"),
    (_safetensors_bytes({"x": {**ENTRY, "shape": [6, True]}}, DATA), "shape"),
    (_safetensors_bytes({"x": {**ENTRY, "shape": "6x4"}}, DATA), "shape"),
    (_safetensors_bytes({"x": {**ENTRY, "dtype": ["F32"]}}, DATA), "dtype"),
    (_safetensors_bytes({"x": {**ENTRY, "dtype": "I64"}}, DATA), "dtype"),
    (_safetensors_bytes({"x": {**ENTRY, "data_offsets": [0]}}, DATA), "data_offsets"),
    (_safetensors_bytes({"x": {**ENTRY, "data_offsets": [0, "96"]}}, DATA), "data_offsets"),
    (_safetensors_bytes({"x": {**ENTRY, "data_offsets": [-8, 88]}}, DATA), "data_offsets"),
    # offsets that disagree with the shape: 6 x 4 floats would be read from the neighbour
    (
        _safetensors_bytes({"x": {**ENTRY, "data_offsets": [0, 48]}, "y": NEIGHBOUR}, DATA),
        "data_offsets",
    ),
    (
        _safetensors_bytes({"x": {**ENTRY, "data_offsets": [96, 96]}, "y": NEIGHBOUR}, DATA),
        "data_offsets",
    ),
    (_safetensors_bytes({"x": {**ENTRY, "data_offsets": [192, 288]}}, DATA), "data_offsets"),
    (_safetensors_bytes([ENTRY], DATA), "object"),
    (_safetensors_bytes({"x": ENTRY}, DATA[:96])[:-1], "truncated"),
]


@pytest.mark.parametrize(("raw", "words"), MALFORMED_HEADERS)
def test_open_logits_refuses_malformed_safetensors_headers(tmp_path, raw, words):
    path = tmp_path / "logits.safetensors"
    path.write_bytes(raw)
    expect_refused(lambda: open_logits(path, key="x"), str(path), words)


def test_open_logits_reads_a_well_formed_file_exactly(tmp_path):
    path = tmp_path / "logits.safetensors"
    path.write_bytes(_safetensors_bytes({"x": ENTRY, "y": NEIGHBOUR}, DATA))

    def check(opened) -> None:
        assert torch.equal(opened[:], LOGITS)

    expect_exact(lambda: open_logits(path, key="x"), check)


def _reference_rows(raw: bytes, shape: tuple[int, ...], dtype: torch.dtype, offset: int):
    """The rows as numpy reads them straight from the file's bytes (independent of torchcal)."""
    count = int(np.prod(shape))
    if dtype == torch.bfloat16:
        words = np.frombuffer(raw, dtype="<u2", count=count, offset=offset).astype(np.uint32)
        return torch.from_numpy((words << 16).view(np.float32).reshape(shape)).bfloat16()
    numpy_dtype = {torch.float16: "<f2", torch.float32: "<f4", torch.float64: "<f8"}[dtype]
    return torch.from_numpy(np.frombuffer(raw, numpy_dtype, count, offset).reshape(shape).copy())


def _open_logits_case(tmp_path: Path, data: st.DataObject, suffix: str) -> None:
    path = tmp_path / f"logits{suffix}"
    if suffix == ".npy":
        np.save(path, LOGITS.numpy())
    else:
        path.write_bytes(_safetensors_bytes({"x": ENTRY}, LOGITS.numpy().tobytes()))
    original = path.read_bytes()
    raw = _damaged(original, _header_end(original, suffix), data)
    path.write_bytes(raw)

    def check(opened) -> None:  # whatever opened must read exactly the bytes it describes
        rows = opened[:]
        assert rows.shape == opened.shape and rows.dtype == opened.dtype
        expected = _reference_rows(raw, tuple(opened.shape), opened.dtype, opened._data_offset)
        assert torch.equal(rows.view(torch.uint8), expected.view(torch.uint8))
        assert opened.shape == LOGITS.shape  # one changed header byte never passes as another

    _refused_or_exact(lambda: open_logits(path), check, str(path))


@given(data=st.data(), suffix=st.sampled_from([".npy", ".safetensors"]))
@FAST
def test_corrupted_logits_headers_are_refused_or_read_exactly(tmp_path, data, suffix):
    _open_logits_case(tmp_path, data, suffix)


@pytest.mark.slow
@given(data=st.data(), suffix=st.sampled_from([".npy", ".safetensors"]))
@LARGE
def test_corrupted_logits_headers_larger_profile(tmp_path, data, suffix):
    _open_logits_case(tmp_path, data, suffix)


ENTRY_VALUES = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F16", "BF16", "F32", "F64", "I32"]) | JSON,
        "shape": st.lists(st.integers(-2, 30), max_size=3) | JSON,
        "data_offsets": st.lists(st.integers(-8, 200), min_size=2, max_size=2) | JSON,
    },
)


def _drawn_entry_case(tmp_path: Path, entry: Any, extra: bytes) -> None:
    path = tmp_path / "drawn.safetensors"
    raw = _safetensors_bytes({"x": entry}, DATA + extra)
    path.write_bytes(raw)

    def check(opened) -> None:
        begin, end = entry["data_offsets"]
        assert end - begin == int(np.prod(entry["shape"])) * opened.dtype.itemsize
        assert opened._data_offset == len(raw) - len(DATA + extra) + begin
        if opened.shape:  # (a 0-d array has no rows to read)
            expected = _reference_rows(raw, tuple(opened.shape), opened.dtype, opened._data_offset)
            assert torch.equal(opened[:].view(torch.uint8), expected.view(torch.uint8))

    _refused_or_exact(lambda: open_logits(path), check, str(path))


@given(entry=ENTRY_VALUES | JSON, extra=st.binary(max_size=8))
@FAST
def test_drawn_safetensors_entries_are_refused_or_read_exactly(tmp_path, entry, extra):
    _drawn_entry_case(tmp_path, entry, extra)


@pytest.mark.slow
@given(entry=ENTRY_VALUES | JSON, extra=st.binary(max_size=8))
@LARGE
def test_drawn_safetensors_entries_larger_profile(tmp_path, entry, extra):
    _drawn_entry_case(tmp_path, entry, extra)


# ------------------------------------------------------- cause 9: not regular, not readable
def _without_blocking(path: Path, call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` run in a thread; if it blocks on the FIFO at ``path`` for 10 s, a writer is
    opened to release it and the case fails as a hang."""

    def run() -> Any:
        outcome: dict[str, Any] = {}

        def target() -> None:
            try:
                outcome["result"] = call()
            except BaseException as error:  # handed to the caller's thread
                outcome["error"] = error

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        thread.join(10)
        if thread.is_alive():
            writer = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(writer)
            thread.join(10)
            raise RuntimeError(f"blocked on the FIFO {path} for 10 s")
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")

    return run


@pytest.mark.parametrize("entry_point", ["load", "open_logits"])
def test_a_fifo_is_refused_without_blocking(tmp_path, entry_point):
    path = tmp_path / "pipe.safetensors"
    os.mkfifo(path)
    call = (lambda: torchcal.load(path)) if entry_point == "load" else (lambda: open_logits(path))
    expect_refused(_without_blocking(path, call), str(path), "not a regular file")
    assert stat.S_ISFIFO(path.stat().st_mode)


@pytest.mark.parametrize("entry_point", ["load", "open_logits"])
def test_a_folder_and_a_device_are_refused(tmp_path, entry_point):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    opener = torchcal.load if entry_point == "load" else open_logits
    expect_refused(lambda: opener(folder), str(folder), "folder")
    if entry_point == "load":  # open_logits wants a .npy or .safetensors suffix
        expect_refused(lambda: opener("/dev/zero"), "/dev/zero", "not a regular file")


def _denied(*args: Any, **kwargs: Any) -> Any:
    raise PermissionError(13, "Permission denied")


def test_an_unreadable_file_is_a_permission_problem_not_a_missing_one(tmp_path, monkeypatch):
    path = saved("temperature", tmp_path)
    logits = tmp_path / "logits.npy"
    np.save(logits, LOGITS.numpy())
    monkeypatch.setattr(os, "open", _denied)
    expect_refused(lambda: torchcal.load(path), str(path), "permission denied")
    monkeypatch.undo()
    monkeypatch.setattr("torchcal.io.mapped.open", _denied, raising=False)
    expect_refused(lambda: open_logits(logits), str(logits), "permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="permission bits do not bind root")
def test_a_file_without_read_permission_says_so(tmp_path):
    path = saved("temperature", tmp_path)
    path.chmod(0)
    expect_refused(lambda: torchcal.load(path), str(path), "permission denied")


def test_a_missing_file_is_named_as_missing(tmp_path):
    missing = tmp_path / "missing.safetensors"
    expect_refused(lambda: torchcal.load(missing), str(missing), "no such file")
    expect_refused(lambda: open_logits(missing), str(missing), "no such file")


# ------------------------------------------------------- cause 10: saving
def test_saving_over_a_fifo_or_into_a_folder_is_refused_and_changes_nothing(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    scaler = fitted("temperature")
    expect_refused(
        _without_blocking(fifo, lambda: torchcal.save(scaler, fifo)),
        str(fifo),
        "not a regular file",
        errors=(OSError, ValueError),
    )
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    folder = tmp_path / "folder"
    folder.mkdir()
    expect_refused(
        lambda: torchcal.save(scaler, folder), str(folder), "folder", errors=(OSError, ValueError)
    )
    assert folder.is_dir() and not any(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "pipe.safetensors"]


def test_a_failed_save_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = saved("temperature", tmp_path)
    before = path.read_bytes()

    def disk_full(descriptor: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    expect_refused(lambda: torchcal.save(fitted("vector"), path), "space", errors=(OSError,))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    expect_exact(lambda: torchcal.load(path), same_predictions(fitted("temperature")))


def test_save_keeps_the_previous_files_mode_and_a_new_file_gets_the_umask_mode(tmp_path):
    path = saved("temperature", tmp_path)
    path.chmod(0o640)
    torchcal.save(fitted("temperature"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    umask = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.safetensors"
        torchcal.save(fitted("temperature"), fresh)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
