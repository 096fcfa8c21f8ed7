"""Progress bars that suit where the output goes.

On a terminal, :func:`progress` is a plain tqdm bar. Redirected to a file or a pipe (a log, a batch
job), a bar's carriage-return redraws would flood the log, so the bar prints one plain line at most
every ``log_every_s`` seconds instead (and one at the end), and nothing for work that ends sooner.
"""
from __future__ import annotations

import io
import sys
from typing import Iterable

from tqdm import tqdm


def interactive() -> bool:
    """Whether stderr is a terminal (progress bars redraw in place there)."""
    return sys.stderr.isatty()


class _Lines(io.TextIOBase):
    """A file for tqdm that turns every redraw into one line on stderr (no carriage returns, no repeats)."""

    last = ""

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line and line != self.last:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
            self.last = line
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def progress(iterable: Iterable | None = None, *, log_every_s: float = 30.0, disable: bool = False, **kwargs) -> tqdm:
    """tqdm on a terminal; one line per ``log_every_s`` seconds when stderr is redirected."""
    if disable or interactive():
        return tqdm(iterable, disable=disable, **kwargs)
    kwargs.pop("leave", None)
    return tqdm(iterable, file=_Lines(), mininterval=log_every_s, maxinterval=log_every_s, delay=log_every_s, ascii=True,
                dynamic_ncols=False, ncols=100, leave=True, **kwargs)
