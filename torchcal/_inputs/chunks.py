"""Row chunks: how many rows every streamed pass reads at a time, decided once per row width.

Every pass over a fit's rows (the temperature objectives, the affine objective, the ensemble's
weight statistics) reads them in chunks of whole rows whose elements fit a device's chunk
budget: cache-sized on a CPU, large on an accelerator, where bigger chunks amortise kernel
launches.

Example:
    >>> chunks = RowChunks.fitting(10, row_width=4, device=torch.device("cpu"), chunk_elements=12)
    >>> chunks.rows, list(chunks)
    (3, [(0, 3), (3, 6), (6, 9), (9, 10)])
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

#: Elements per chunk: small enough for the temporaries to stay in cache on a CPU.
CPU_CHUNK_ELEMENTS = 1 << 18
#: On a GPU bigger chunks amortise kernel launches.
CUDA_CHUNK_ELEMENTS = 1 << 24


def default_chunk_elements(device: torch.device) -> int:
    """Elements per chunk for a device: cache-sized on CPU, large on accelerators.

    Args:
        device: the device the chunks are computed on.

    Example:
        >>> default_chunk_elements(torch.device("cpu")) == CPU_CHUNK_ELEMENTS
        True
    """
    return CPU_CHUNK_ELEMENTS if device.type == "cpu" else CUDA_CHUNK_ELEMENTS


@dataclass(frozen=True)
class RowChunks:
    """The ``(start, stop)`` ranges of ``n_rows`` rows, ``rows`` of them per chunk (the last one
    shorter). Build it with :meth:`fitting`, which decides ``rows`` from the chunk budget.

    Args:
        n_rows: how many rows a pass reads.
        rows: rows per chunk (at least 1).
    """

    n_rows: int
    rows: int

    @classmethod
    def fitting(
        cls,
        n_rows: int,
        *,
        row_width: int,
        device: torch.device,
        chunk_elements: int | None = None,
    ) -> RowChunks:
        """Chunks of as many whole rows as the chunk budget holds (at least one).

        Args:
            n_rows: how many rows a pass reads.
            row_width: elements per row (1 for a flat vector of entries).
            device: the device whose budget (:func:`default_chunk_elements`) applies.
            chunk_elements: elements per chunk; ``None`` for the device's default.
        """
        elements = chunk_elements or default_chunk_elements(device)
        return cls(n_rows, max(1, elements // max(1, row_width)))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for start in range(0, self.n_rows, self.rows):
            yield start, min(start + self.rows, self.n_rows)

    def __len__(self) -> int:
        """The number of chunks."""
        return -(-self.n_rows // self.rows)
