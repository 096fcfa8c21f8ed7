"""Benchmarks (never unit tests): ``python tools/bench.py {train,eval,test,clip,rescore,data,sweep,schedule} [options]``.

Each sub-command lives in ``tools/bench_<name>.py`` as ``main(argv)`` and prints one JSON
line of figures at the end.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COMMANDS = ("train", "eval", "test", "clip", "rescore", "data", "sweep", "schedule")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        sys.exit(f"usage: python tools/bench.py {{{','.join(COMMANDS)}}} [options]   (--help after the command)")
    module = importlib.import_module(f"tools.bench_{argv[0]}")
    module.main(argv[1:])


if __name__ == "__main__":
    main()
