"""The one exception type users see as a single clear line (``main.py`` / ``test.py`` print it)."""


class PECRError(Exception):
    """Bad input or configuration: the message says what, where and how to fix it."""
