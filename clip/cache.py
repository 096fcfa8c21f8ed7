"""The CLIP file cache: checksummed, resumable-safe downloads of checkpoints and the vocabulary.

A download streams into a temporary file beside its target and is renamed into place only when
complete and its SHA-256 verified, so the cache never holds a partial or corrupt file.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path


from utils.errors import PECRError
from utils.progress import progress as progress_bar

ROOT_ENV = "PECR_CLIP_ROOT"
DEFAULT_ROOT = os.path.join("~", ".cache", "clip")
CHUNK = 1 << 20


def cache_root(download_root: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``download_root`` if given, else ``$PECR_CLIP_ROOT``, else ``~/.cache/clip``."""
    root = download_root or os.environ.get(ROOT_ENV) or DEFAULT_ROOT
    return Path(os.path.expandvars(os.path.expanduser(str(root))))


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_from_url(url: str) -> str | None:
    """OpenAI's release URLs carry the file's SHA-256 as a 64-hex folder name."""
    for part in url.split("/"):
        if re.fullmatch(r"[0-9a-f]{64}", part):
            return part
    return None


def download(url: str, root: str | os.PathLike, sha256: str | None = None, hint: str = "",
             progress: bool = True, timeout: float = 30.0) -> Path:
    """The verified file ``root/<basename of url>``, downloaded first when missing or corrupt.

    ``sha256`` defaults to the 64-hex folder of ``url``. ``hint`` ends the offline message
    (how else to point at the file). Raises PECRError when offline, on an interrupted transfer,
    or on a checksum mismatch; no partial or unverified file is left in ``root``.
    """
    sha256 = sha256 or sha256_from_url(url)
    target = Path(root) / os.path.basename(url)
    if target.is_file():
        if sha256 is None or sha256_file(target) == sha256:
            return target
        warnings.warn(f"{target} does not match its SHA-256 {sha256}; downloading it again")
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise PECRError(f"cannot download {url} ({reason}); without network, place the file at {target}"
                        + (f" {hint}" if hint else "")) from None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as err:
        response.close()
        raise PECRError(f"cannot write into the CLIP cache folder {target.parent} ({err}); make it writable "
                        "or choose another folder") from None
    try:
        with response, os.fdopen(fd, "wb") as out:
            total = response.length                      # Content-Length, None when not sent
            digest, received = hashlib.sha256(), 0
            with progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
                      disable=not progress, leave=False) as bar:
                while block := response.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
            if total is not None and received != total:
                raise http.client.IncompleteRead(b"", total - received)
            out.flush()
            os.fsync(out.fileno())
        if sha256 is not None and digest.hexdigest() != sha256:
            raise PECRError(f"downloaded {url} has SHA-256 {digest.hexdigest()}, expected {sha256}; the file was "
                            f"discarded: retry, or place a verified copy at {target}")
        os.replace(tmp, target)
    except (http.client.HTTPException, OSError) as err:
        raise PECRError(f"download of {url} was interrupted ({type(err).__name__}: {err}); nothing was kept: "
                        f"retry, or place the file at {target}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target
