"""The one exception type users see as a single clear line, and the wrapper that prints it."""
from __future__ import annotations

import errno
import functools
import sys
from typing import Callable


class PECRError(Exception):
    """Bad input or configuration: the message says what, where and how to fix it."""

    exit_code = 2  # the command's exit status when this error ends it


# OS errors that are the user's situation, not a bug: reported in one line like a PECRError.
_OS_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.ENOENT, errno.EISDIR,
              errno.ENOTDIR}


def cli(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a command-line ``main``: a PECRError becomes one ``error: ...`` line on stderr and its exit
    status (2); a full disk or a refused write one ``error: cannot write ...`` line (status 2); Ctrl-C one
    ``interrupted`` line (status 130)."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except PECRError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        except OSError as err:
            if err.errno not in _OS_ERRNOS:
                raise
            where = f" {err.filename}" if err.filename else ""
            print(f"error: cannot access{where}: {err.strerror or err}; free space or choose another folder", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return run
