"""Temporal detection AP by the ActivityNet protocol (docs/method.md §6), vectorised and exact.

Protocol, per class and tIoU threshold θ:
1. the class's predictions are ranked by score, descending; ties keep input order
   (stable sort; the official code's reversed quicksort order is arbitrary, a stable order
   makes results reproducible and independent of the sort algorithm);
2. in that order each prediction takes, among the ground truths of its video and class not
   yet taken, the one with the highest tIoU if that tIoU >= θ (true positive); otherwise it is
   a false positive. Ground truths of equal tIoU are tried in input order (lowest index first).
   A prediction for a video without ground truth of its class is a false positive;
3. precision / recall are cumulative over the ranking, recall over the number of ground truths
   of the class; AP is the VOC-interpolated area: sentinels (recall 0, precision 0) and
   (recall 1, precision 0) are added, precision is made monotone from the right, and
   Δrecall × precision is summed where recall changes.
mAP is the mean over the classes that have ground truth (a class with ground truth and no
prediction has AP 0); classes without ground truth get AP NaN and are left out of the mean.
tIoU = |A ∩ B| / |A ∪ B| of closed intervals [s, e] without the "+1" (0 when the union is 0).

Vectorisation. Matching is greedy and order dependent, but only within one (video, class) and
one threshold. All (prediction, ground truth) pairs of the same video and class with
tIoU >= θ are listed once for every θ, sorted by (prediction rank, tIoU desc, gt index), and
resolved in rounds: a prediction is decided as soon as its best still-free candidate is
claimed by no higher-ranked undecided prediction (then no earlier prediction can take it, so
the sequential loop would give it the same ground truth). The highest-ranked undecided
prediction of every connected group always qualifies, so each round makes progress; in practice
a handful of rounds resolve everything. Predictions left without free candidates are false
positives. The result equals the sequential loop exactly (tests compare it with one).

CLI::

    python -m eval.detection --ground-truth GT.json --predictions PRED.json \
        [--subset test] [--tiou 0.1 0.2 ...] [--json-out FILE] [--seconds]

When the ground truth carries a ``snippet_grid`` {fps, frames} (what ``python -m eval.annotations``
writes by default), both files are scored on that grid, as test.py scores them: seconds are turned
into snippet positions ``sec * fps / frames``, the ground truth rounded to whole snippets (it lies on
the grid) and predictions within 1e-6 of a whole snippet snapped to it (test.py's detections are whole
snippets written in seconds; other predictions keep their fractional positions). ``--seconds`` scores
in seconds instead.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable, Sequence

import numpy as np
import pandas as pd

from utils.errors import PECRError, cli

GT_COLUMNS = ("video-id", "label", "t-start", "t-end")
PRED_COLUMNS = GT_COLUMNS + ("score",)


@dataclass
class DetectionResult:
    """AP table: ``ap[i, j]`` for threshold ``tiou[i]`` and class ``classes[j]`` (fractions)."""

    tiou: np.ndarray  # (n_tiou,)
    classes: list  # (n_cls,) class labels (as in the tables' ``label`` column)
    ap: np.ndarray  # (n_tiou, n_cls), NaN for classes without ground truth
    num_positives: np.ndarray  # (n_cls,) ground-truth segments per class

    @property
    def mAP(self) -> np.ndarray:
        """(n_tiou,) mean AP over the classes with ground truth."""
        has_gt = self.num_positives > 0
        if not has_gt.any():
            raise PECRError("detection mAP: the ground truth has no segment of the evaluated classes")
        return self.ap[:, has_gt].mean(axis=1)


def segment_iou(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Element-wise tIoU of intervals ``pred`` (N, 2) and ``gt`` (N, 2) -> (N,); 0 where the union is 0."""
    inter = (np.minimum(pred[:, 1], gt[:, 1]) - np.maximum(pred[:, 0], gt[:, 0])).clip(0)
    union = (gt[:, 1] - gt[:, 0]) + (pred[:, 1] - pred[:, 0]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def interpolated_ap(tp: np.ndarray, num_positives: int) -> np.ndarray:
    """VOC-interpolated AP of ranked hits ``tp`` (n_tiou, n) bool -> (n_tiou,)."""
    n_t, n = tp.shape
    tp_cum = np.cumsum(tp, axis=1, dtype=np.int64)
    fp_cum = np.arange(1, n + 1) - tp_cum
    rec = tp_cum / num_positives
    prec = tp_cum / (tp_cum + fp_cum)
    zero, one = np.zeros((n_t, 1)), np.ones((n_t, 1))
    mprec = np.concatenate([zero, prec, zero], axis=1)
    mrec = np.concatenate([zero, rec, one], axis=1)
    mprec = np.maximum.accumulate(mprec[:, ::-1], axis=1)[:, ::-1]  # monotone from the right
    step = np.diff(mrec, axis=1)
    return np.where(step != 0, step * mprec[:, 1:], 0.0).sum(axis=1)


def _check_table(df: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PECRError(f"{name} table lacks column {missing[0]!r}; expected columns {', '.join(columns)}")
    s, e = df["t-start"].to_numpy(np.float64), df["t-end"].to_numpy(np.float64)
    bad = np.flatnonzero(~(e >= s))  # also catches NaN
    if bad.size:
        i = bad[0]
        raise PECRError(f"{name} segment {i} of video {df['video-id'].iloc[i]!r} has t-end {e[i]} < t-start {s[i]} "
                        "(or NaN); fix the segment bounds")
    if "score" in columns and np.isnan(df["score"].to_numpy(np.float64)).any():
        i = int(np.flatnonzero(np.isnan(df["score"].to_numpy(np.float64)))[0])
        raise PECRError(f"{name} row {i} of video {df['video-id'].iloc[i]!r} has a NaN score; scores must be numbers")


def _segmented_cummax(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Running maximum of ``x`` restarting at every change of the sorted ``group`` (doubling scan)."""
    x = x.copy()
    shift = 1
    while shift < x.size:
        same = group[shift:] == group[:-shift]
        x[shift:] = np.where(same, np.maximum(x[shift:], x[:-shift]), x[shift:])
        shift *= 2
    return x


def _bisect(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, x: np.ndarray, strict: bool) -> np.ndarray:
    """Per query, the first index i in [lo, hi) with values[i] > x (strict) or >= x, else hi;
    ``values`` is non-decreasing on each [lo, hi). Vectorised binary search."""
    lo, hi = lo.copy(), hi.copy()
    while True:
        active = lo < hi
        if not active.any():
            return lo
        mid = (lo + hi) // 2
        v = values[np.minimum(mid, values.size - 1)]
        right = active & ((v <= x) if strict else (v < x))
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)


def _candidate_pairs(pkey: np.ndarray, gkey: np.ndarray, pseg: np.ndarray, gseg: np.ndarray, min_tiou: float):
    """All (prediction, gt) pairs with equal key (video, class) and tIoU >= min_tiou.

    With min_tiou > 0 only overlapping ground truths can qualify: ground truths are sorted by
    (key, start), and a prediction [s, e] looks at the range from the first one whose running
    maximum end exceeds s to the last one starting before e (a superset of its overlaps).
    Returns (pred index, gt index, tIoU), sorted by (pred index, tIoU desc, gt index).
    """
    gorder = np.lexsort((np.arange(gkey.size), gseg[:, 0], gkey))
    gkey, gseg = gkey[gorder], gseg[gorder]
    lo = np.searchsorted(gkey, pkey, "left")
    hi = np.searchsorted(gkey, pkey, "right")
    if min_tiou > 0:
        lo = _bisect(_segmented_cummax(gseg[:, 1], gkey), lo, hi, pseg[:, 0], strict=True)
        hi = _bisect(gseg[:, 0], lo, hi, pseg[:, 1], strict=False)
    cnt = hi - lo
    pair_pred = np.repeat(np.arange(pkey.size), cnt)
    pos = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(int(cnt.sum()))
    iou = segment_iou(pseg[pair_pred], gseg[pos])
    keep = iou >= min_tiou
    pair_pred, pair_gt, iou = pair_pred[keep], gorder[pos[keep]], iou[keep]
    order = np.lexsort((pair_gt, -iou, pair_pred))
    return pair_pred[order], pair_gt[order], iou[order]


def _greedy_match(pair_pred, pair_gt, pair_iou, thresholds, n_pred: int, n_gt: int) -> np.ndarray:
    """True positives (n_tiou, n_pred) of the sequential greedy matching, resolved in parallel rounds.

    Pairs come sorted by (pred rank, tIoU desc, gt index); each threshold gets its own copy of
    the pairs (ids offset by t * n_pred / t * n_gt) so that all thresholds resolve together.
    """
    n_t = len(thresholds)
    keep = [pair_iou >= thr for thr in thresholds]
    pid = np.concatenate([pair_pred[k] + t * n_pred for t, k in enumerate(keep)])
    gid = np.concatenate([pair_gt[k] + t * n_gt for t, k in enumerate(keep)])
    tp = np.zeros(n_t * n_pred, dtype=bool)
    taken = np.zeros(n_t * n_gt, dtype=bool)
    claim = np.empty(n_t * n_gt, dtype=np.int64)
    while pid.size:
        best = np.ones(pid.size, dtype=bool)  # first pair of a prediction = its best free candidate
        np.not_equal(pid[1:], pid[:-1], out=best[1:])
        claim[gid] = np.iinfo(np.int64).max
        np.minimum.at(claim, gid, pid)  # highest-ranked undecided prediction wanting each gt
        win = best & (claim[gid] == pid)
        tp[pid[win]] = True
        taken[gid[win]] = True
        alive = ~(tp[pid] | taken[gid])
        pid, gid = pid[alive], gid[alive]
    return tp.reshape(n_t, n_pred)


def evaluate_detection(gt: pd.DataFrame, pred: pd.DataFrame, tiou_thresholds: Sequence[float],
                       classes: int | Sequence[Hashable] | None = None) -> DetectionResult:
    """AP of ``pred`` against ``gt`` at every threshold at once.

    gt: columns video-id, label, t-start, t-end; pred: the same plus score (any units, the same
    in both). classes: labels to evaluate (an int n means 0..n-1; default: the labels present
    in ``gt``, sorted). Rows of other labels are ignored.
    """
    _check_table(gt, GT_COLUMNS, "ground-truth")
    _check_table(pred, PRED_COLUMNS, "prediction")
    thresholds = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
    if thresholds.size == 0:
        raise PECRError("detection mAP needs at least one tIoU threshold")
    if classes is None:
        classes = sorted(pd.unique(gt["label"]).tolist())
    elif isinstance(classes, (int, np.integer)):
        classes = list(range(int(classes)))
    classes = list(classes)
    n_cls = len(classes)
    class_index = pd.Index(classes)
    if not class_index.is_unique:
        raise PECRError("detection mAP: the class list has duplicates")
    gc = class_index.get_indexer(gt["label"])
    pc = class_index.get_indexer(pred["label"])
    gt, gc = gt[gc >= 0], gc[gc >= 0]
    pred, pc = pred[pc >= 0], pc[pc >= 0]

    codes, _ = pd.factorize(pd.concat([gt["video-id"], pred["video-id"]], ignore_index=True).astype(str))
    gv, pv = codes[: len(gt)].astype(np.int64), codes[len(gt):].astype(np.int64)
    gseg = gt[["t-start", "t-end"]].to_numpy(np.float64)
    num_positives = np.bincount(gc, minlength=n_cls)

    # Rank predictions once: by score desc, ties in input order; a class's ranking is this one restricted.
    order = np.argsort(-pred["score"].to_numpy(np.float64), kind="stable")
    pv, pc = pv[order], pc[order]
    pseg = pred[["t-start", "t-end"]].to_numpy(np.float64)[order]
    n_pred = len(order)

    pairs = _candidate_pairs(pv * n_cls + pc, gv * n_cls + gc, pseg, gseg, thresholds.min())
    tp = _greedy_match(*pairs, thresholds, n_pred, len(gc))

    by_class = np.argsort(pc, kind="stable")  # rank order within each class
    bounds = np.concatenate([[0], np.cumsum(np.bincount(pc, minlength=n_cls))])
    tp = tp[:, by_class]
    ap = np.full((thresholds.size, n_cls), np.nan)
    for c in np.flatnonzero(num_positives):
        ap[:, c] = interpolated_ap(tp[:, bounds[c]:bounds[c + 1]], int(num_positives[c]))
    return DetectionResult(tiou=thresholds, classes=classes, ap=ap, num_positives=num_positives)


def detection_ap(gt: pd.DataFrame, pred: pd.DataFrame, tiou_thresholds: Sequence[float],
                 classes: int | Sequence[Hashable] | None = None) -> np.ndarray:
    """(n_tiou, n_cls) AP fractions; NaN for classes without ground truth. See :func:`evaluate_detection`."""
    return evaluate_detection(gt, pred, tiou_thresholds, classes).ap


def mean_ap(gt: pd.DataFrame, pred: pd.DataFrame, tiou_thresholds: Sequence[float],
            classes: int | Sequence[Hashable] | None = None) -> np.ndarray:
    """(n_tiou,) mAP fractions: mean AP over the classes with ground truth."""
    return evaluate_detection(gt, pred, tiou_thresholds, classes).mAP


# ----------------------------------------------------------------------------- ActivityNet JSON

def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file; PECRError naming the file when missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise PECRError(f"{what} file {path} not found; pass an existing JSON file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PECRError(f"{what} file {path} is not valid JSON ({err})") from None


def _field(obj: Any, key: str, where: str, path: Path, hint: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise PECRError(f"{path}: {where} has no {key!r} field; {hint}")
    return obj[key]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and not math.isnan(x)


def _flatten(groups: dict, keys: Sequence[str], where: str, path: Path, hint: str):
    """{video: [record, ...]} -> (video per record, {key: values}, locate(i) naming record i).

    ``where`` formats a record's location from ``vid`` and ``j``; a missing key -> PECRError."""
    for vid, records in groups.items():
        if not isinstance(records, list):
            raise PECRError(f"{path}: {where.format(vid=vid, j='')[:-2]} must be a list; {hint}")
    try:
        columns = {k: [r[k] for records in groups.values() for r in records] for k in keys}
    except (KeyError, TypeError):
        for vid, records in groups.items():
            for j, r in enumerate(records):
                for k in keys:
                    _field(r, k, where.format(vid=vid, j=j), path, hint)
        raise
    videos = [str(v) for v, records in groups.items() for _ in records]
    ends = np.cumsum([len(r) for r in groups.values()])
    names = list(groups)

    def locate(i: int) -> str:
        g = int(np.searchsorted(ends, i, "right"))
        return where.format(vid=names[g], j=i - (ends[g - 1] if g else 0))

    return videos, columns, locate


def _segments(items: list, locate, path: Path) -> np.ndarray:
    """(N, 2) float segments; PECRError for a malformed one or end < start."""
    try:
        seg = np.array(items, dtype=np.float64).reshape(len(items), 2)
        ok = not np.isnan(seg).any()
    except (TypeError, ValueError):
        ok = False
    if not ok:
        for i, x in enumerate(items):
            if not (isinstance(x, (list, tuple)) and len(x) == 2 and all(_is_number(v) for v in x)):
                raise PECRError(f"{path}: {locate(i)} has segment {x!r}; a segment is [start, end] (two numbers)")
        seg = np.array(items, dtype=np.float64).reshape(len(items), 2)
    bad = np.flatnonzero(seg[:, 1] < seg[:, 0])
    if bad.size:
        i = bad[0]
        raise PECRError(f"{path}: {locate(i)} has segment end {seg[i, 1]} < start {seg[i, 0]}; fix the segment")
    return seg


def snippet_grid(path: str | Path) -> dict | None:
    """The ``snippet_grid`` {fps, frames} of a ground-truth JSON, None when it has none."""
    grid = read_json(path, "ground-truth").get("snippet_grid") if Path(path).is_file() else None
    if grid is None:
        return None
    if not (isinstance(grid, dict) and _is_number(grid.get("fps")) and _is_number(grid.get("frames"))
            and grid["fps"] > 0 and grid["frames"] > 0):
        raise PECRError(f"{path}: 'snippet_grid' must be {{'fps': number > 0, 'frames': number > 0}}, got {grid!r}")
    return {"fps": float(grid["fps"]), "frames": float(grid["frames"])}


def to_grid(table: pd.DataFrame, grid: dict, snap: str) -> pd.DataFrame:
    """Seconds -> snippet positions ``sec * fps / frames``. ``snap="round"``: rounded to whole snippets
    (ground truth on the grid); ``"near"``: snapped only within 1e-6 of a whole snippet."""
    out = table.copy()
    for col in ("t-start", "t-end"):
        x = out[col].to_numpy(np.float64) * grid["fps"] / grid["frames"]
        whole = np.round(x)
        out[col] = whole if snap == "round" else np.where(np.abs(x - whole) <= 1e-6, whole, x)
    return out


def load_activitynet_ground_truth(path: str | Path, subset: str | None = None) -> pd.DataFrame:
    """ActivityNet-style ground truth JSON -> table (video-id, label (name), t-start, t-end).

    ``database`` maps video -> {subset, annotations: [{segment: [s, e], label}]}; with ``subset``
    only its videos are kept (PECRError when no video has it).
    """
    path = Path(path)
    data = read_json(path, "ground-truth")
    hint = "ground truth needs {'database': {video: {'subset', 'annotations': [{'segment', 'label'}]}}}"
    database = _field(data, "database", "the file", path, hint)
    if not isinstance(database, dict):
        raise PECRError(f"{path}: 'database' must map video ids to entries; {hint}")
    if subset is not None:
        subsets = {str(_field(v, "subset", f"database[{k!r}]", path, hint)) for k, v in database.items()}
        if subset not in subsets:
            raise PECRError(f"{path}: unknown subset {subset!r}; the file has subsets {sorted(subsets)}")
    groups = {vid: _field(entry, "annotations", f"database[{vid!r}]", path, hint) for vid, entry in database.items()
              if subset is None or str(entry["subset"]) == subset}
    videos, cols, locate = _flatten(groups, ("segment", "label"), "database[{vid!r}]['annotations'][{j}]", path, hint)
    seg = _segments(cols["segment"], locate, path)
    return pd.DataFrame({"video-id": videos, "label": [str(x) for x in cols["label"]],
                         "t-start": seg[:, 0], "t-end": seg[:, 1]})


def load_activitynet_predictions(path: str | Path) -> pd.DataFrame:
    """ActivityNet results JSON (``results``: video -> [{label, score, segment}]) ->
    table (video-id, label (name), t-start, t-end, score)."""
    path = Path(path)
    data = read_json(path, "predictions")
    hint = "predictions need {'results': {video: [{'label', 'score', 'segment': [start, end]}]}}"
    results = _field(data, "results", "the file", path, hint)
    if not isinstance(results, dict):
        raise PECRError(f"{path}: 'results' must map video ids to lists of predictions; {hint}")
    videos, cols, locate = _flatten(results, ("segment", "label", "score"), "results[{vid!r}][{j}]", path, hint)
    scores = cols["score"]
    bad = [i for i, s in enumerate(scores) if type(s) not in (int, float) or s != s]
    if bad:
        raise PECRError(f"{path}: {locate(bad[0])} has score {scores[bad[0]]!r}; a score is a number")
    seg = _segments(cols["segment"], locate, path)
    return pd.DataFrame({"video-id": videos, "label": [str(x) for x in cols["label"]], "t-start": seg[:, 0],
                         "t-end": seg[:, 1], "score": np.array(scores, dtype=np.float64).reshape(-1)})


def _format_result(result: DetectionResult) -> str:
    lines = [f"{'tIoU':>6} | {'mAP (%)':>8}", "-" * 17]
    lines += [f"{t:>6.2f} | {100 * m:>8.2f}" for t, m in zip(result.tiou, result.mAP)]
    lines += ["-" * 17, f"{'avg':>6} | {100 * result.mAP.mean():>8.2f}"]
    n = int((result.num_positives > 0).sum())
    lines.append(f"({n} classes with ground truth, {int(result.num_positives.sum())} segments)")
    return "\n".join(lines)


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.detection", description=(
        "Detection mAP (ActivityNet protocol) of ActivityNet-format predictions against ground truth"))
    p.add_argument("--ground-truth", required=True, help="ActivityNet-style JSON (database / taxonomy / version)")
    p.add_argument("--predictions", required=True, help="ActivityNet results JSON (results / version / external_data)")
    p.add_argument("--subset", default=None, help="evaluate only the ground-truth videos of this subset (default: all)")
    p.add_argument("--tiou", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
                   help="tIoU thresholds, each in (0, 1]")
    p.add_argument("--seconds", action="store_true",
                   help="score in seconds even when the ground truth carries a snippet grid")
    p.add_argument("--json-out", default=None, help="also write {tiou, mAP, average_mAP, ap, classes} here (fractions)")
    args = p.parse_args(argv)
    bad = [t for t in args.tiou if not 0 < t <= 1]
    if bad:
        raise PECRError(f"--tiou {' '.join(f'{t:g}' for t in bad)}: every tIoU threshold must lie in (0, 1]")
    if args.json_out:
        from utils.io import check_writable

        check_writable(Path(args.json_out).resolve().parent, "--json-out")
    gt = load_activitynet_ground_truth(args.ground_truth, args.subset)
    pred = load_activitynet_predictions(args.predictions)
    grid = None if args.seconds else snippet_grid(args.ground_truth)
    if grid is not None:
        gt, pred = to_grid(gt, grid, "round"), to_grid(pred, grid, "near")
        print(f"scored on the ground truth's snippet grid ({grid['frames']:g} frames at {grid['fps']:g} fps; "
              "--seconds to score in seconds)", file=sys.stderr)
    _warn_unknown_videos(gt, pred, args.predictions)
    result = evaluate_detection(gt, pred, args.tiou)
    print(_format_result(result))
    unknown = int((~pred["label"].isin(result.classes)).sum())
    if unknown:
        print(f"note: {unknown} predictions of classes without ground truth were ignored", file=sys.stderr)
    if args.json_out:
        from utils.io import atomic_write_text

        mAP = result.mAP
        record = {"tiou": result.tiou.tolist(), "mAP": mAP.tolist(), "average_mAP": float(mAP.mean()),
                  "ap": result.ap.tolist(), "classes": list(result.classes)}
        atomic_write_text(args.json_out, json.dumps(record, indent=1) + "\n")
    return 0


def _warn_unknown_videos(gt: pd.DataFrame, pred: pd.DataFrame, path) -> None:
    """A warning on stderr when predicted videos are missing from the ground truth (ids that differ,
    e.g. by a file extension, score 0 without it)."""
    predicted = pd.unique(pred["video-id"])
    known = set(gt["video-id"])
    missing = [v for v in predicted if v not in known]
    if not missing:
        return
    example = f"e.g. {missing[0]!r}" + (f" (the ground truth has e.g. {next(iter(known))!r})" if known else "")
    if len(missing) == len(predicted):
        print(f"warning: none of the {len(predicted)} videos of {path} is in the ground truth ({example}): every "
              "prediction is a false positive; check the video ids (a file extension?) and --subset", file=sys.stderr)
    else:
        print(f"note: {len(missing)} of the {len(predicted)} predicted videos have no ground truth ({example}); "
              "their predictions count as false positives", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
