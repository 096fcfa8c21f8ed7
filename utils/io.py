"""Atomic file writes: write to a temporary file in the target folder, then rename.

A crash or interrupt never leaves a half-written checkpoint, result or feature file
behind, and never destroys the previous version of the file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, IO


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_save(path: str | os.PathLike, writer: Callable[[IO], Any]) -> None:
    """Call ``writer(binary_file)`` on a temporary file, then move it to ``path``.

    Examples: ``atomic_save(p, lambda f: torch.save(obj, f))``,
    ``atomic_save(p, lambda f: np.save(f, array))``.
    """
    with atomic_open(path, "wb") as f:
        writer(f)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (e.g. a JSON record) and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def writable_folder(path: str | os.PathLike, flag: str = "--out-dir") -> Path:
    """Create folder ``path`` if needed and check that files can be written there (a probe file is
    created and removed), before any result is computed; PECRError naming the folder and ``flag``."""
    from utils.errors import PECRError

    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise PECRError(f"output folder {path} is not writable ({err.strerror or err}); pass a writable {flag}") from None
    return path
