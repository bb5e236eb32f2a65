"""Small test models and the deployment routes of an exported module, shared by the export tests
and ``benchmarks/export_parity.py``.

Each route takes an eager module, an example input (whose batch size is exported as dynamic) and
a folder; it saves the module the way that route deploys it, loads it back and returns a function
mapping a float32 input tensor to the deployed module's output tensor.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

EXPORT_BATCH = 4
CHECK_BATCHES = (3, 7)  # differ from EXPORT_BATCH: the batch dimension must be dynamic
Deployed = Callable[[Tensor], Tensor]


def mlp() -> nn.Module:
    """An MLP on (N, 20) inputs with 5 classes (eval mode, so dropout is off)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 5))
    return model.eval()


def cnn() -> nn.Module:
    """A small CNN on (N, 3, 16, 16) images with 5 classes (eval mode, batch norm frozen)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )
    return model.eval()


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (mlp, (20,)),
    "cnn": (cnn, (3, 16, 16)),
}


def inputs(model_name: str, batch: int, seed: int = 1) -> Tensor:
    """Random float32 inputs for ``model_name`` with ``batch`` rows."""
    generator = torch.Generator().manual_seed(seed + batch)
    return torch.randn(batch, *MODELS[model_name][1], generator=generator) * 2


def _dynamic_batch() -> dict[str, dict[int, object]]:
    return {"inputs": {0: torch.export.Dim("batch", min=1, max=1024)}}


def jit_script(module: nn.Module, example: Tensor, folder: Path) -> Deployed:
    path = folder / "model.torchscript.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(module), str(path))
        return torch.jit.load(str(path))


def jit_trace(module: nn.Module, example: Tensor, folder: Path) -> Deployed:
    path = folder / "model.traced.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(module, (example,)), str(path))
        return torch.jit.load(str(path))


def torch_export(module: nn.Module, example: Tensor, folder: Path) -> Deployed:
    path = folder / "model.pt2"
    program = torch.export.export(module, (example,), dynamic_shapes=_dynamic_batch())
    torch.export.save(program, path)
    return torch.export.load(path).module()


def onnx(module: nn.Module, example: Tensor, folder: Path) -> Deployed:
    import onnxruntime

    path = folder / "model.onnx"
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["inputs"],
        output_names=["outputs"],
        dynamic_shapes=_dynamic_batch(),
        dynamo=True,
        verbose=False,
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> Tensor:
        return torch.from_numpy(session.run(None, {"inputs": x.numpy()})[0])

    return run


ROUTES: dict[str, Callable[[nn.Module, Tensor, Path], Deployed]] = {
    "jit.script": jit_script,
    "jit.trace": jit_trace,
    "torch.export (.pt2)": torch_export,
    "onnx (onnxruntime)": onnx,
}
