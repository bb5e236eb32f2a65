"""Row sources: what a fit reads its logits from, one chunk of rows at a time.

A fit never needs all the logits at once, only consecutive rows (a chunk) and, for the warm start,
every ``step``-th row. A source offers exactly that:

* ``shape``, ``dtype``, ``device``: of the (N, K) matrix of rows, or of (N,) single logits;
* ``read(start, stop)``: rows ``start`` to ``stop`` as a tensor (a view where possible);
* ``every(step, offset)``: the source of rows ``offset``, ``offset + step``, ... (no copy).

:class:`TensorSource` serves an in-memory tensor (any layout: rows that cannot be viewed as a
matrix, such as the pixels of an (N, K, H, W) map, are gathered per chunk), :class:`NumpySource` a
numpy array, including one memory-mapped with ``numpy.load(path, mmap_mode="r")``, and
:class:`torchcal.io.mapped.LogitsFile` a ``.npy`` or ``.safetensors`` file read with plain file
reads.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from torchcal._inputs.validation import check_float_dtype


class RowSource(Protocol):
    """The interface a fit reads rows through (see the module docstring)."""

    @property
    def shape(self) -> torch.Size: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...

    def read(self, start: int, stop: int) -> Tensor: ...

    def every(self, step: int, offset: int = 0) -> RowSource: ...


def strided_length(length: int, step: int, offset: int) -> int:
    """How many of ``length`` rows ``offset, offset + step, ...`` covers."""
    return max(0, -(-(length - offset) // step))


class TensorSource:
    """Rows of an in-memory tensor whose last dimension (if ``rows_of_width``) holds a row.

    ``tensor`` of shape (*batch, K) gives the rows of ``tensor.reshape(-1, K)``; with
    ``rows_of_width=False`` it gives the entries of ``tensor.reshape(-1)``. Neither copies
    ``tensor``: when it cannot be viewed that way (e.g. classes moved to the last dimension of a
    segmentation map), each chunk is gathered by index.

    Example:
        >>> maps = torch.arange(24.0).reshape(2, 3, 2, 2)  # (N, K, H, W)
        >>> rows = TensorSource(maps.movedim(1, -1))
        >>> tuple(rows.shape), rows.read(0, 2).tolist()
        ((8, 3), [[0.0, 4.0, 8.0], [1.0, 5.0, 9.0]])
        >>> rows.every(3, offset=1).read(0, 2).tolist()
        [[1.0, 5.0, 9.0], [12.0, 16.0, 20.0]]
    """

    def __init__(
        self, tensor: Tensor, rows_of_width: bool = True, *, step: int = 1, offset: int = 0
    ) -> None:
        self.tensor = tensor
        self.rows_of_width = rows_of_width
        self.step, self.offset = step, offset
        width = (tensor.shape[-1],) if rows_of_width else ()
        self._batch_shape = tensor.shape[:-1] if rows_of_width else tensor.shape
        total = self._batch_shape.numel()
        try:
            flat = tensor.view(-1, *width)
        except RuntimeError:  # not viewable as rows: gather each chunk by index
            flat = None
        self._flat = None if flat is None else flat[offset::step]
        self.shape = torch.Size((strided_length(total, step, offset), *width))

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def read(self, start: int, stop: int) -> Tensor:
        if self._flat is not None:
            return self._flat[start:stop]
        index = torch.arange(start, stop, device=self.device) * self.step + self.offset
        coordinates = []
        for size in reversed(self._batch_shape):
            coordinates.append(index % size)
            index = index // size
        return self.tensor[tuple(reversed(coordinates))]

    def all_rows(self) -> Tensor:
        """Every row at once: a view of the tensor where its layout allows, else one copy."""
        if self._flat is not None:
            return self._flat
        width = (self.tensor.shape[-1],) if self.rows_of_width else ()
        return self.tensor.reshape(-1, *width)[self.offset :: self.step]

    def every(self, step: int, offset: int = 0) -> TensorSource:
        return TensorSource(
            self.tensor,
            self.rows_of_width,
            step=self.step * step,
            offset=self.offset + self.step * offset,
        )


NUMPY_FLOAT_DTYPES = {
    np.dtype(np.float16): torch.float16,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
}


class NumpySource:
    """Rows of a numpy array (N, K) or (N,), read chunk by chunk with ``torch.from_numpy``.

    A memory-mapped array (``numpy.load(path, mmap_mode="r")``) is read through its mapping, one
    chunk at a time, so the array is never loaded whole. The chunks are read-only views: the fit
    never writes to them.

    Example:
        >>> rows = NumpySource(np.arange(12, dtype=np.float32).reshape(6, 2))
        >>> rows.read(1, 3).tolist(), rows.every(4).read(0, 2).tolist()
        ([[2.0, 3.0], [4.0, 5.0]], [[0.0, 1.0], [8.0, 9.0]])
    """

    def __init__(self, array: np.ndarray) -> None:
        if array.dtype.newbyteorder("=") in NUMPY_FLOAT_DTYPES and not array.dtype.isnative:
            raise TypeError(
                f"logits are stored with byte order {array.dtype.byteorder!r}, not this machine's; "
                "convert them with array.astype(array.dtype.newbyteorder('='))"
            )
        if array.dtype not in NUMPY_FLOAT_DTYPES:
            raise TypeError(
                "numpy logits must be float16, float32 or float64 (bfloat16 logits can be saved "
                f"as .safetensors and read with torchcal.open_logits), got dtype {array.dtype}"
            )
        self.array = array
        self.shape = torch.Size(array.shape)
        self.dtype = NUMPY_FLOAT_DTYPES[array.dtype]
        self.device = torch.device("cpu")

    def read(self, start: int, stop: int) -> Tensor:
        chunk = self.array[start:stop]
        if not chunk.flags.c_contiguous:
            chunk = np.ascontiguousarray(chunk)
        with warnings.catch_warnings():  # read-only memory maps: the fit only reads the chunk
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            return torch.from_numpy(chunk)

    def every(self, step: int, offset: int = 0) -> NumpySource:
        return NumpySource(self.array[offset::step])


def as_tensor(value: Any) -> Any:
    """A numpy array as a tensor sharing its memory (nothing here writes to it); anything else
    (a tensor, a loader, a file opened with :func:`~torchcal.open_logits`) as it is.

    Example:
        >>> as_tensor(np.array([[0.25, 0.75]]))
        tensor([[0.2500, 0.7500]], dtype=torch.float64)
    """
    if not isinstance(value, np.ndarray):
        return value
    if any(stride < 0 for stride in value.strides):  # torch.from_numpy refuses reversed views
        value = value.copy()
    with warnings.catch_warnings():  # read-only arrays and memory maps are only read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(value)


def is_row_source(value: object) -> bool:
    """Whether ``value`` is a source of rows (not a tensor): it has ``read`` and ``every``."""
    return not isinstance(value, Tensor) and all(
        callable(getattr(value, name, None)) for name in ("read", "every")
    )


def as_source(logits: object) -> RowSource:
    """A numpy array or a source (``torchcal.open_logits``) as a :class:`RowSource`."""
    if isinstance(logits, np.ndarray):
        return NumpySource(logits)
    if is_row_source(logits):
        return logits  # type: ignore[return-value]
    raise TypeError(
        "logits must be a torch.Tensor, a numpy array (memory-mapped arrays are read in chunks) "
        f"or a file opened with torchcal.open_logits, got {type(logits).__name__}"
    )


def check_source(source: RowSource, name: str = "logits") -> None:
    """A source's dtype must be floating and it must hold at least one row."""
    check_float_dtype(source.dtype, name)
    if len(source.shape) == 0 or source.shape[0] == 0:
        raise ValueError(
            f"{name} are empty (shape {tuple(source.shape)}): at least 1 sample is needed"
        )


class ColumnSource:
    """One column of a source of (N, K) rows, as a source of (N,) entries.

    Example:
        >>> ColumnSource(TensorSource(torch.tensor([[1.0], [2.0], [3.0]]))).read(1, 3)
        tensor([2., 3.])
    """

    def __init__(self, source: RowSource, column: int = 0) -> None:
        self.source, self.column = source, column
        self.shape = torch.Size(source.shape[:1])
        self.dtype, self.device = source.dtype, source.device

    def read(self, start: int, stop: int) -> Tensor:
        return self.source.read(start, stop)[:, self.column]

    def every(self, step: int, offset: int = 0) -> ColumnSource:
        return ColumnSource(self.source.every(step, offset), self.column)
