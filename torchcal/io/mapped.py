"""Logits in a file, read in row chunks: fitting on validation sets larger than memory.

:func:`open_logits` opens a ``.npy`` or ``.safetensors`` file (float16, bfloat16, float32 or
float64; safetensors is the way to store bfloat16) without reading its data. The returned
:class:`LogitsFile` reads rows on demand with plain positioned file reads, so only the rows asked
for are in memory and the operating system's page cache does the rest:
``TemperatureScaler().fit(open_logits("val.safetensors"), labels)`` holds one chunk of rows at a
time whatever the file's size.

A numpy memory map (``numpy.load("val.npy", mmap_mode="r")``) can be passed to ``fit`` as well and
is read in the same chunks; the difference is that the pages it touches stay mapped into the
process (counted in its resident memory as reclaimable page cache), while a :class:`LogitsFile`
copies each chunk out and keeps nothing mapped.
"""

from __future__ import annotations

import json
import math
import stat
import struct
import sys
import threading
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from torchcal._inputs.sources import NUMPY_FLOAT_DTYPES, strided_length

__all__ = ["LogitsFile", "open_logits"]

_SAFETENSORS_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}
#: Rows narrower than this many bytes (times the stride) are read as spans and thinned in memory.
_SPAN_BYTES = 1 << 20


class _Reader:
    """A file opened for positioned reads, shared by a :class:`LogitsFile` and its views."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BinaryIO | None = None
        self.lock = threading.Lock()

    def read_into(self, buffer: np.ndarray, offset: int) -> None:
        view = memoryview(buffer).cast("B")
        with self.lock:
            if self.file is None:
                self.file = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed by close)
            self.file.seek(offset)
            done = 0
            while done < len(view):
                count = self.file.readinto(view[done:])
                if not count:
                    raise ValueError(f"{self.path}: the file ends before its data does")
                done += count

    def close(self) -> None:
        with self.lock:
            if self.file is not None:
                self.file.close()
                self.file = None

    def __del__(self) -> None:
        if self.file is not None:
            self.file.close()


class LogitsFile:
    """Read-only rows of logits stored in a ``.npy`` or ``.safetensors`` file.

    Made by :func:`open_logits`. ``shape``, ``dtype`` and ``device`` (always the CPU) describe the
    stored array; indexing with an int or a slice (any step) reads those rows into a new tensor,
    and ``len()`` is the number of rows. :meth:`TemperatureScaler.fit
    <torchcal.TemperatureScaler.fit>` reads it chunk by chunk through :meth:`read` and
    :meth:`every`. The file stays open for reading until :meth:`close` (or the end of a ``with``
    block).

    Args:
        path: the file.
        key: the tensor's name in a ``.safetensors`` file (``None`` for ``.npy``).
        shape: the stored array's shape, rows first.
        dtype: the stored array's dtype.
        data_offset: where the array's data begins in the file, in bytes.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "logits.npy"
        >>> np.save(path, np.arange(12, dtype=np.float32).reshape(4, 3))
        >>> with open_logits(path) as logits:
        ...     print(logits.shape, logits.dtype, logits[1:4:2].tolist())
        torch.Size([4, 3]) torch.float32 [[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]]
    """

    def __init__(
        self,
        path: str | Path,
        key: str | None,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        data_offset: int,
        *,
        _reader: _Reader | None = None,
        _first: int = 0,
        _step: int = 1,
    ) -> None:
        self.path, self.key = Path(path), key
        self.dtype = dtype
        self.device = torch.device("cpu")
        self._stored_shape = tuple(shape)
        self._data_offset = data_offset
        self._row_shape = self._stored_shape[1:]
        self._row_bytes = math.prod(self._row_shape) * dtype.itemsize
        self._reader = _reader or _Reader(self.path)
        self._first, self._step = _first, _step
        n_rows = strided_length(self._stored_shape[0], _step, _first) if shape else 1
        self.shape = torch.Size((n_rows, *self._row_shape)) if shape else torch.Size()

    # ------------------------------------------------------------------ the row-source interface
    def read(self, start: int, stop: int) -> Tensor:
        """Rows ``start`` to ``stop`` (of this view) as a new tensor.

        Args:
            start: the first row, clipped to the rows there are.
            stop: one past the last row, clipped likewise.
        """
        start, stop = max(0, start), min(max(start, stop), len(self))
        out = torch.empty((stop - start, *self._row_shape), dtype=self.dtype)
        if stop == start or self._row_bytes == 0:
            return out
        raw = out.view(-1).view(torch.uint8).numpy().reshape(stop - start, self._row_bytes)
        first = self._first + start * self._step  # stored row of the first row asked for
        if self._step == 1:
            self._reader.read_into(raw, self._offset(first))
        elif self._row_bytes * self._step >= _SPAN_BYTES:  # wide rows: one read per row
            for i in range(stop - start):
                self._reader.read_into(raw[i], self._offset(first + i * self._step))
        else:  # narrow rows: read spans of about _SPAN_BYTES and keep every step-th row
            per_span = max(1, _SPAN_BYTES // (self._row_bytes * self._step))
            span = np.empty(((per_span - 1) * self._step + 1, self._row_bytes), dtype=np.uint8)
            for i in range(0, stop - start, per_span):
                count = min(per_span, stop - start - i)
                rows = span[: (count - 1) * self._step + 1]
                self._reader.read_into(rows, self._offset(first + i * self._step))
                raw[i : i + count] = rows[:: self._step]
        return out

    def every(self, step: int, offset: int = 0) -> LogitsFile:
        """The rows ``offset, offset + step, ...`` of this view, as a view of the same file.

        Args:
            step: the stride between rows, >= 1.
            offset: the first row.
        """
        return LogitsFile(
            self.path,
            self.key,
            self._stored_shape,
            self.dtype,
            self._data_offset,
            _reader=self._reader,
            _first=self._first + offset * self._step,
            _step=self._step * step,
        )

    def _offset(self, stored_row: int) -> int:
        return self._data_offset + stored_row * self._row_bytes

    # ------------------------------------------------------------------ python protocols
    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a 0-d array")
        return self.shape[0]

    def __getitem__(self, index: int | slice) -> Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self.read(start, stop)
            rows = range(start, stop, step)
            if step < 0:
                return torch.stack([self[i] for i in rows]) if rows else self.read(0, 0)
            return self.every(step, start).read(0, len(rows))
        if isinstance(index, (int, np.integer)) and not isinstance(index, bool):
            row = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {index} is out of range for {len(self)} rows")
            return self.read(row, row + 1)[0]
        raise TypeError(
            f"a LogitsFile is indexed by an int or a slice of rows, got {type(index).__name__}"
        )

    def __repr__(self) -> str:
        key = "" if self.key is None else f", key={self.key!r}"
        return f"LogitsFile({str(self.path)!r}{key}, shape={tuple(self.shape)}, dtype={self.dtype})"

    def close(self) -> None:
        """Close the file (a later read reopens it)."""
        self._reader.close()

    def __enter__(self) -> LogitsFile:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def open_logits(path: str | Path, key: str | None = None) -> LogitsFile:
    """Open logits stored in ``path`` (``.npy`` or ``.safetensors``) for reading in row chunks.

    Only the header is read here. ``key`` names the tensor in a safetensors file that holds
    several. Pass the result to :meth:`TemperatureScaler.fit <torchcal.TemperatureScaler.fit>`
    with in-memory labels to fit on logits larger than memory.

    Args:
        path: a ``.npy`` or ``.safetensors`` file of float16, bfloat16 (safetensors only),
            float32 or float64 logits.
        key: the tensor's name in a ``.safetensors`` file holding several.

    Returns:
        A :class:`LogitsFile`.

    Example:
        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> from torchcal import TemperatureScaler
        >>> _ = torch.manual_seed(0)
        >>> logits = torch.randn(5000, 10) * 3
        >>> labels = torch.distributions.Categorical(logits=logits / 2).sample()
        >>> path = Path(tempfile.mkdtemp()) / "val.safetensors"
        >>> save_file({"logits": logits.bfloat16()}, path)
        >>> stored = open_logits(path)
        >>> stored
        LogitsFile('...val.safetensors', key='logits', shape=(5000, 10), dtype=torch.bfloat16)
        >>> from_file = TemperatureScaler().fit(stored, labels, progress=False)
        >>> in_memory = TemperatureScaler().fit(logits.bfloat16(), labels, progress=False)
        >>> from_file.temperature == in_memory.temperature
        True
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".safetensors"):
        raise ValueError(
            f"{path}: open_logits reads .npy and .safetensors files, not {suffix or 'no suffix'!r}"
            "; load other formats whole with torch.load or numpy.load"
        )
    size = _regular_file_size(path)
    try:
        file = open(path, "rb")  # noqa: SIM115 (closed below; a FIFO was refused above)
    except PermissionError as error:
        raise ValueError(f"{path}: cannot be read: permission denied") from error
    with file:
        if suffix == ".npy":
            if key is not None:
                raise ValueError(f"{path}: a .npy file holds one array; key is for .safetensors")
            shape, dtype, offset = _npy_header(file, path)
        else:
            key, shape, dtype, offset = _safetensors_header(file, path, key, size)
    end = offset + math.prod(shape) * dtype.itemsize
    if end > size:
        raise ValueError(f"{path}: the file is shorter than its header says; is it truncated?")
    if suffix == ".npy" and end != size:  # numpy writes exactly the array: a header changed
        raise ValueError(
            f"{path}: the file holds {size - end} bytes more than its header's shape "
            f"{tuple(shape)} of {dtype} needs; is the header damaged?"
        )
    return LogitsFile(path, key, shape, dtype, offset)


def _npy_header(file: BinaryIO, path: Path) -> tuple[tuple[int, ...], torch.dtype, int]:
    from numpy.lib import format as npy

    try:
        version = npy.read_magic(file)
        if version == (1, 0):
            shape, fortran_order, dtype = npy.read_array_header_1_0(file)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy.read_array_header_2_0(file)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as error:  # numpy's header parser raises ValueError, TokenError, ...
        raise ValueError(f"{path}: not a readable .npy file: {error!r}") from error
    if dtype.newbyteorder("=") in NUMPY_FLOAT_DTYPES and not dtype.isnative:
        raise TypeError(
            f"{path}: the array is stored with byte order {dtype.byteorder!r}; re-save it with "
            "array.astype(array.dtype.newbyteorder('='))"
        )
    if dtype not in NUMPY_FLOAT_DTYPES:
        raise TypeError(
            f"{path}: logits must be float16, float32 or float64 in a .npy file (bfloat16 in "
            f".safetensors), got dtype {dtype}"
        )
    if fortran_order and len(shape) > 1:
        raise ValueError(
            f"{path}: the array is stored in Fortran (column-major) order, so its rows cannot be "
            "read one chunk at a time; re-save it with numpy.ascontiguousarray"
        )
    return tuple(shape), NUMPY_FLOAT_DTYPES[dtype], file.tell()


def _regular_file_size(path: Path) -> int:
    """The size of ``path``, which must be a regular file (a FIFO would block the first read,
    a device never end); a missing file and a permission problem are told apart."""
    try:
        status = path.stat()
    except FileNotFoundError as error:
        raise ValueError(f"{path}: no such file") from error
    except PermissionError as error:
        raise ValueError(f"{path}: cannot be read: permission denied") from error
    if stat.S_ISDIR(status.st_mode):
        raise ValueError(f"{path}: is a folder, not a file of logits")
    if not stat.S_ISREG(status.st_mode):
        raise ValueError(f"{path}: is not a regular file (a device, FIFO or socket)")
    return status.st_size


#: The largest safetensors header accepted, as in the safetensors library itself.
_MAX_SAFETENSORS_HEADER = 100_000_000


def _safetensors_header(
    file: BinaryIO, path: Path, key: str | None, size: int
) -> tuple[str, tuple[int, ...], torch.dtype, int]:
    """Key, shape, dtype and data offset of one tensor, every field of its entry checked
    against the file: no claimed length is allocated before it is known to fit in the file."""
    prefix = file.read(8)
    if len(prefix) < 8:
        raise ValueError(f"{path}: not a readable .safetensors file: shorter than 8 bytes")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
        raise ValueError(
            f"{path}: not a readable .safetensors file: its header length field claims {length} "
            f"bytes, but the file holds {size} bytes in all"
        )
    try:
        header = json.loads(file.read(length))
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: not a readable .safetensors file: {error}") from error
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a readable .safetensors file: the header is not an object")
    header.pop("__metadata__", None)
    if key is None:
        if len(header) != 1:
            raise ValueError(
                f"{path} holds {len(header)} tensors ({', '.join(sorted(header))}); name one "
                "with key"
            )
        key = next(iter(header))
    if key not in header:
        raise ValueError(f"{path}: no tensor named {key!r}; it holds {sorted(header)}")
    entry = header[key]
    field = f"{path}: tensor {key!r}"
    if not isinstance(entry, dict):
        raise ValueError(f"{field}: its header entry must be an object, got {entry!r:.80}")
    dtype_name = entry.get("dtype")
    if not isinstance(dtype_name, str) or dtype_name not in _SAFETENSORS_DTYPES:
        raise TypeError(
            f"{field} has dtype {dtype_name!r:.40}; logits must be F16, BF16, F32 or F64"
        )
    if sys.byteorder != "little":  # pragma: no cover
        raise TypeError(f"{path}: safetensors data is little-endian; this machine is not")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise ValueError(f"{field}: 'shape' must be a list of integers >= 0, got {shape!r:.80}")
    offsets = entry.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_count, offsets))):
        raise ValueError(
            f"{field}: 'data_offsets' must be [begin, end] with integers >= 0, got {offsets!r:.80}"
        )
    begin, end = offsets
    dtype = _SAFETENSORS_DTYPES[dtype_name]
    n_bytes = math.prod(shape) * dtype.itemsize
    if end - begin != n_bytes:
        raise ValueError(
            f"{field}: 'data_offsets' {offsets} span {end - begin} bytes, but shape "
            f"{tuple(shape)} of {dtype_name} needs {n_bytes}"
        )
    if 8 + length + end > size:
        raise ValueError(
            f"{field}: 'data_offsets' {offsets} end beyond the file ({size} bytes); is it "
            "truncated?"
        )
    return key, tuple(shape), dtype, 8 + length + begin


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
