"""The one exception type users see as a single clear line, and the wrapper that prints it."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class PECRError(Exception):
    """Bad input or configuration: the message says what, where and how to fix it."""


def cli(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a command-line ``main``: a PECRError becomes one ``error: ...`` line on stderr and exit status 2."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except PECRError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run
