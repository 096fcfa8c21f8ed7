"""Atomic file writes: write to a temporary file in the target folder, then rename.

A crash or interrupt never leaves a half-written checkpoint, result or feature file
behind, and never destroys the previous version of the file. The file gets the permissions any
other new file of the user gets (0666 minus the umask), not mkstemp's private 0600.
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
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def check_writable(folder: str | os.PathLike, flag: str = "--out-dir") -> Path:
    """Create ``folder`` if needed and check a file can be written there (a probe file is created and
    removed), before any result is computed -> the folder; PECRError naming ``flag`` if not."""
    from utils.errors import PECRError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise PECRError(f"cannot write to {folder} ({err.strerror or err}); choose another folder ({flag})") from None
    return folder


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (e.g. a JSON record) and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())
