"""Write a file so that an interrupted or failed write never destroys the file it replaces.

The bytes go to a temporary file in the target's own folder (so the final rename stays on one
file system), are flushed to disk, take the mode of the file they replace (or the mode a plain
``open`` would give under the current umask), and are renamed over the target in one step.
Targets that are not regular files (a folder, a device such as ``/dev/full``, a FIFO) are
refused before anything is written, so a rename never replaces a special file.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     target = Path(folder) / "report.json"
    ...     with atomic_write(target, "w") as file:
    ...         _ = file.write("{}")
    ...     target.read_text()
    '{}'
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

__all__ = ["atomic_write", "check_writable_target"]

_PathLike = str | os.PathLike[str]


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def check_writable_target(path: _PathLike) -> Path:
    """Return ``path`` as a Path if a file can be written there; raise ``OSError`` naming why not.

    Refused: a path that is a folder or any other non-regular file, and a path whose folder does
    not exist or is not a folder. Permission is checked by the write itself.

    Args:
        path: the file to be written.
    """
    target = Path(path)
    try:
        status = target.stat()
    except FileNotFoundError:
        status = None
    if status is not None and stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(f"{os.fspath(target)!r} is a folder, not a file")
    if status is not None and not stat.S_ISREG(status.st_mode):
        raise OSError(
            f"{os.fspath(target)!r} is not a regular file (a device, FIFO or socket); "
            "write to a regular file instead"
        )
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"the folder {os.fspath(folder)!r} does not exist")
    return target


@contextlib.contextmanager
def atomic_write(
    path: _PathLike, mode: Literal["w", "wb"] = "wb", **open_kwargs: Any
) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on a clean exit, rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was.

    Args:
        path: the file to (re)write; its folder must exist.
        mode: ``"w"`` for text, ``"wb"`` for bytes.
        **open_kwargs: passed to :func:`open` (e.g. ``encoding``).
    """
    target = check_writable_target(path)
    try:
        keep_mode = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        keep_mode = _default_mode()
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(descriptor, mode, **open_kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, keep_mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
