"""Re-score saved raw predictions with other post-processing settings: no model, no features, no
annotation folder (docs/method.md §5-§6).

    python -m eval.rescore --raw outputs/PECR/raw_predictions.npz [--out-dir DIR] [--act-s 0.2 ...]

Reads a ``raw_predictions.npz`` (``--save-raw true`` of test.py or main.py), applies the inference
and proposal options and the evaluation options given on the command line (``--vid-thresh``,
``--cas-s/-e/-num``, ``--act-s/-e/-num``, ``--gamma-oic``, ``--oic-margin``, ``--nms-sigma``,
``--test-topk``, ``--lone-first-snippet``, ``--cls-topk``, ``--protocol``, ``--tiou-thresholds``;
the file's own options are the defaults, checked by the same rules as in training), prints the
table of test.py and writes ``detections.json``, ``metrics.json`` and ``rescore_options.yaml`` (the
resolved options) to ``--out-dir`` (default: ``rescore/`` beside the raw file). With unchanged
options and a float32 file the detections and metrics are test.py's, exactly.
``--annotation-dir DIR`` scores against that W-TALC folder's ground truth instead of the stored one.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import options
from eval.raw import RawFile, annotation_reference, load_raw
from eval.report import format_table
from eval.scoring import SCORING_OPTIONS, Evaluation, Reference, score, write_evaluation
from utils.errors import PECRError, cli
from utils.io import check_writable


def add_scoring_options(parser: argparse.ArgumentParser) -> None:
    """Add options.py's definitions (flags, types, choices, help) of :data:`SCORING_OPTIONS` to
    ``parser``, in their option groups."""
    for group in options.build_parser()._action_groups:
        actions = [a for a in group._group_actions if a.dest in SCORING_OPTIONS]
        if actions:
            target = parser.add_argument_group(group.title)
            for action in actions:
                target._add_action(action)


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[argparse.Namespace, RawFile, argparse.Namespace]:
    """Parse ``argv`` with ``parser`` (which has ``--raw`` and :func:`add_scoring_options`), the raw file's
    options being the defaults -> (arguments, raw file, resolved options). The scoring options are
    checked by options.py's rules (types, ranges, consistency); an error names the option."""
    argv = sys.argv[1:] if argv is None else list(argv)
    front = argparse.ArgumentParser(add_help=False)
    front.add_argument("--raw")
    known, _ = front.parse_known_args(argv)
    raw = None
    if known.raw:  # its options become the defaults (shown by --help too)
        raw = load_raw(known.raw)
        missing = [k for k in SCORING_OPTIONS if k not in raw.options]
        if missing:
            raise PECRError(f"raw predictions file {raw.path} lacks option {missing[0]!r}; write it again with this version")
        parser.set_defaults(**{k: raw.options[k] for k in SCORING_OPTIONS})
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise PECRError(f"{unknown[0]} cannot be changed when re-scoring: the raw file fixes everything up to the "
                        "network outputs; the options that apply are listed by --help")
    raw = raw or load_raw(args.raw)
    given = options._given_on_command_line(parser, argv)
    opts = argparse.Namespace(**{**raw.options, **{k: getattr(args, k) for k in SCORING_OPTIONS}})
    source = lambda key: f"--{key.replace('_', '-')}" if key in given else f"{key} in {raw.path}"
    scoring = argparse.ArgumentParser(add_help=False)
    add_scoring_options(scoring)
    options.check_types(scoring, opts, source)
    options.check_ranges(opts, source)
    options.check_consistency(opts)
    return args, raw, opts


def rescore(raw: RawFile, opts, reference: Reference | None = None, progress: bool = True) -> Evaluation:
    """Score the raw file's outputs with ``opts`` against ``reference`` (default: the stored one)."""
    return score(raw.predictions.videos, raw.predictions.labels, reference or raw.reference, opts, raw.classlist,
                 raw.iteration, progress, desc="proposals")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval.rescore", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--raw", required=True, help="raw_predictions.npz written with --save-raw true")
    p.add_argument("--out-dir", dest="out_dir", default=None, help="where to write detections.json, metrics.json and "
                   "rescore_options.yaml (default: rescore/ beside the raw file)")
    p.add_argument("--annotation-dir", dest="annotation_dir", default=None, help="score against this W-TALC "
                   "annotation folder's ground truth (and its Ambiguous_test.txt when present) instead of the one "
                   "stored in the raw file; its class list must be the raw file's")
    add_scoring_options(p)
    return p


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args, raw, opts = parse(build_parser(), argv)
    out_dir = check_writable(args.out_dir or Path(args.raw).parent / "rescore")
    reference = annotation_reference(raw, args.annotation_dir) if args.annotation_dir else None
    t0 = time.perf_counter()
    evaluation = rescore(raw, opts, reference)
    print(format_table(evaluation.record, opts.protocol))
    written = [*write_evaluation(out_dir, evaluation, raw.classlist, opts), out_dir / "rescore_options.yaml"]
    options.save_options(opts, written[-1])
    print(f"re-scored {len(raw.predictions.videos)} videos in {time.perf_counter() - t0:.1f} s; wrote "
          + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
