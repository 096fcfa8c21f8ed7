"""Figures of a test pass and of a training run (matplotlib, headless Agg backend).

    # per video, from raw predictions (--save-raw true): one PNG per chosen video
    python tools/visualize.py videos --raw outputs/PECR/raw_predictions.npz [--videos NAME ...]
        [--worst N] [--best N] [--tiou 0.5] [--top 3] [--out-dir DIR] [any option of python -m eval.rescore]
    # per run, from its metrics.jsonl (or a metrics.json): mAP against iteration, per-class AP
    python tools/visualize.py run --run outputs/PECR [--tiou 0.5] [--iteration N] [--out-dir DIR]

Video figures (``<out-dir>/<video>.png``, default out-dir ``figures/`` beside the raw file), time in
seconds: the class probabilities of the ground-truth and predicted classes (softmax of the CAS over
the C+1 classes at each snippet; ground-truth classes solid, other predicted classes dashed), the
attention A, A_V, A_F, then per class one lane of ground-truth segments (snippet grid, as evaluated)
and one lane per top detection, shaded by score and labelled "score | tIoU" with the tIoU to the
best-matching ground truth of the class; THUMOS14 ambiguous regions shaded grey. The title gives the
video's AP (:func:`per_video_ap`). Detections come from re-scoring the raw file (eval.rescore), so
proposal options given here are applied. ``--worst N`` / ``--best N`` pick videos by that AP.

Run figures (default out-dir ``figures/`` in the run folder): ``map_vs_iteration.png`` (mAP of every
tIoU and the protocol's averages) and ``ap_per_class_tiou<t>.png`` (per-class AP of one evaluation).

Each figure is a data step (plain dataclasses: what is drawn) and a thin drawing step.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from eval.detection import evaluate_detection, segment_iou  # noqa: E402
from eval.proposals import predicted_classes, video_class_scores  # noqa: E402
from eval.raw import RawFile  # noqa: E402
from eval.rescore import add_scoring_options, parse, rescore  # noqa: E402
from eval.report import PROTOCOLS, resolve_protocol  # noqa: E402
from utils.errors import PECRError, cli  # noqa: E402
from utils.io import atomic_save, check_writable  # noqa: E402

PALETTE = "tab10"
DPI = 100
WIDTH = 12.0  # inches


# ----------------------------------------------------------------------------- data: what is drawn

@dataclass
class Series:
    """One curve: y over x; ``color`` indexes the palette (None: black)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    color: int | None = None
    style: str = "-"
    width: float = 1.5


@dataclass
class Segment:
    """One bar on lane ``lane`` (0 = top) from ``start`` to ``end`` (seconds)."""

    lane: int
    start: float
    end: float
    color: int
    alpha: float = 1.0
    text: str = ""


@dataclass
class VideoFigure:
    """Three panels sharing the time axis (seconds): class probabilities, attention, segments."""

    title: str
    xlim: tuple[float, float]
    cas: list[Series]
    attention: list[Series]
    lanes: list[str]             # lane labels, top to bottom
    segments: list[Segment]      # ground truth (alpha 1) and detections (alpha by score)
    ambiguous: list[tuple[float, float]]
    size: tuple[float, float]    # inches


@dataclass
class LineChart:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    size: tuple[float, float] = (9.0, 5.0)


@dataclass
class BarChart:
    """Horizontal bars, top to bottom; ``reference`` draws a vertical line (e.g. the mAP)."""

    title: str
    xlabel: str
    labels: list[str]
    values: np.ndarray
    reference: tuple[str, float] | None = None
    size: tuple[float, float] = field(default=(8.0, 4.0))


def quarter_inches(x: float) -> float:
    """``x`` rounded up to a quarter inch: whole pixels at any dpi divisible by 4."""
    return math.ceil(x * 4) / 4


def per_video_ap(ground_truth: pd.DataFrame, detections: pd.DataFrame, tiou: float, num_classes: int) -> pd.Series:
    """AP of each video at one tIoU -> Series (index: video, NaN for a video without ground truth).

    A video's AP is eval.detection's class AP computed on that video alone, its own detections
    against its own ground truth, averaged over the classes of its ground truth. Detections of classes
    absent from its ground truth do not lower it (the figure shows them). Computed in one call of
    :func:`eval.detection.evaluate_detection` with (video, class) pairs as the classes.
    """
    videos = pd.Index(pd.unique(pd.concat([ground_truth["video-id"], detections["video-id"]]).astype(str)))
    key = lambda df: videos.get_indexer(df["video-id"].astype(str)) * num_classes + df["label"].to_numpy(np.int64)
    gt = ground_truth.assign(label=key(ground_truth))
    pred = detections.assign(label=key(detections))
    pairs = sorted(pd.unique(gt["label"]).tolist())
    if not pairs:
        return pd.Series(np.nan, index=videos, dtype=np.float64)
    ap = evaluate_detection(gt, pred, [tiou], pairs).ap[0]
    per_pair = pd.Series(ap, index=np.asarray(pairs) // num_classes)
    return per_pair.groupby(level=0).mean().reindex(range(len(videos))).set_axis(videos)


def choose_videos(names: Sequence[str], ap: pd.Series, chosen: Sequence[str] = (), worst: int = 0,
                  best: int = 0) -> list[str]:
    """``chosen`` (each must be in ``names``), then the ``worst`` lowest and ``best`` highest by ``ap``
    (videos with ground truth only; ties in ``names`` order); no repeats, in that order."""
    known = set(names)
    for name in chosen:
        if name not in known:
            some = ", ".join(list(names)[:3])
            raise PECRError(f"video {name!r} is not in the raw predictions file ({len(names)} videos, e.g. {some}); "
                            "check --videos")
    scored = [(float(ap.get(n, np.nan)), i, n) for i, n in enumerate(names)]
    scored = [s for s in scored if not np.isnan(s[0])]
    low = [n for _, _, n in sorted(scored)[:worst]] if worst else []
    high = [n for _, _, n in sorted(scored, key=lambda s: (-s[0], s[1]))[:best]] if best else []
    out: list[str] = []
    for name in [*chosen, *low, *high]:
        if name not in out:
            out.append(name)
    return out


def softmax_rows(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis (float64)."""
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def video_figure(raw: RawFile, name: str, detections: pd.DataFrame, ground_truth: pd.DataFrame,
                 ambiguous: dict[str, np.ndarray] | None, opts, ap: float, tiou: float, top: int = 3) -> VideoFigure:
    """What the figure of video ``name`` shows. ``detections`` / ``ground_truth``: snippet-unit tables
    (rows of other videos are ignored); ``ap``: its per-video AP at ``tiou`` (NaN: no ground truth)."""
    video = raw.predictions.video(name)
    spf = raw.seconds_per_snippet
    T = len(video.attention)
    t = (np.arange(T) + 0.5) * spf  # snippet centres
    gt = ground_truth[ground_truth["video-id"] == name]
    det = detections[detections["video-id"] == name]
    gt_classes = sorted(set(gt["label"].tolist()))
    video_scores = video_class_scores(video.cas, video.attention, opts.test_topk)
    predicted = [int(c) for c in predicted_classes(video_scores, opts.vid_thresh)]
    shown = gt_classes + [c for c in predicted if c not in gt_classes]
    prob = softmax_rows(video.cas.astype(np.float64))
    names = raw.classlist
    role = lambda c: ("GT, predicted" if c in predicted else "GT, not predicted") if c in gt_classes else "predicted"
    cas = [Series(f"{names[c]} ({role(c)})", t, prob[:, c], color=i, style="-" if c in gt_classes else "--")
           for i, c in enumerate(shown)]
    attention = [Series("A", t, video.attention.astype(np.float64), None, "-", 2.0),
                 Series("A_V (RGB)", t, video.attention_v.astype(np.float64), 0, "--", 1.2),
                 Series("A_F (flow)", t, video.attention_f.astype(np.float64), 1, ":", 1.2)]

    lanes: list[str] = []
    segments: list[Segment] = []
    tops = [det[det["label"] == c].sort_values("score", ascending=False, kind="stable").head(top) for c in shown]
    scores = np.concatenate([d["score"].to_numpy(np.float64) for d in tops]) if tops else np.zeros(0)
    lo, hi = (scores.min(), scores.max()) if scores.size else (0.0, 1.0)
    for i, (c, best) in enumerate(zip(shown, tops)):
        lanes.append(f"GT {names[c]}")
        truth = gt[gt["label"] == c][["t-start", "t-end"]].to_numpy(np.float64)
        segments += [Segment(len(lanes) - 1, s * spf, e * spf, i) for s, e in truth]
        for rank, (s, e, sc) in enumerate(best[["t-start", "t-end", "score"]].to_numpy(np.float64), 1):
            lanes.append(f"#{rank} {names[c]}")
            iou = segment_iou(np.tile([s, e], (len(truth), 1)), truth).max() if len(truth) else None
            alpha = 0.25 + 0.75 * ((sc - lo) / (hi - lo) if hi > lo else 1.0)
            text = f"{sc:.2f} | " + ("no GT" if iou is None else f"tIoU {iou:.2f}")
            segments.append(Segment(len(lanes) - 1, s * spf, e * spf, i, float(alpha), text))
    regions = [] if not ambiguous or name not in ambiguous else [(float(a), float(b)) for a, b in ambiguous[name]]
    headline = "no ground truth" if np.isnan(ap) else f"AP@{tiou:g} = {100 * ap:.1f}%"
    title = f"{name}: {headline}, {len(gt)} ground-truth segments, {len(det)} detections"
    height = 1.2 + 2.2 + 1.6 + 0.28 * max(len(lanes), 1)
    return VideoFigure(title, (0.0, T * spf), cas, attention, lanes, segments, regions, (WIDTH, quarter_inches(height)))


def map_chart(records: Sequence[dict], protocol, source: str) -> LineChart:
    """mAP (%) against iteration: one thin line per tIoU of the records, thick lines for the averages
    of ``protocol`` (a name or a declared mapping; None: the averages the records carry)."""
    if not records:
        raise PECRError(f"{source} holds no evaluation record")
    iterations = np.array([r["iteration"] for r in records], dtype=np.float64)
    tiou = records[0]["tiou"]
    series = [Series(f"tIoU {t:g}", iterations, 100 * np.array([r["mAP"][j] for r in records]), j % 10, "-", 1.0)
              for j, t in enumerate(tiou)]
    averages = records[0].get("average_mAP", {}) if protocol is None else resolve_protocol(protocol).averages
    for k, name in enumerate(averages):
        values = [r.get("average_mAP", {}).get(name) for r in records]
        if all(v is not None for v in values):
            series.append(Series(f"mean {name}", iterations, 100 * np.array(values), None, ["-", "--"][k % 2], 3.0))
    return LineChart(f"mAP against iteration ({source})", "iteration", "mAP (%)", series)


def class_ap_chart(record: dict, tiou: float, source: str) -> BarChart:
    """Per-class AP (%) at ``tiou`` of one record, highest first (classes without ground truth left out)."""
    per_class = record.get("ap_per_class")
    if per_class is None:
        raise PECRError(f"{source}: the evaluation of iteration {record.get('iteration')} has no per-class AP "
                        "(written by an older version); evaluate again with test.py or python -m eval.rescore")
    hit = [j for j, t in enumerate(record["tiou"]) if abs(t - tiou) < 1e-9]
    if not hit:
        raise PECRError(f"{source}: no AP at tIoU {tiou:g}; the evaluation has {', '.join(f'{t:g}' for t in record['tiou'])} "
                        "(--tiou)")
    ap = per_class["ap"][hit[0]]
    pairs = sorted(((a, c) for c, a in zip(per_class["classes"], ap) if a is not None), key=lambda p: -p[0])
    labels = [c for _, c in pairs]
    values = 100 * np.array([a for a, _ in pairs], dtype=np.float64)
    mAP = 100 * record["mAP"][hit[0]]
    return BarChart(f"AP per class at tIoU {tiou:g}, iteration {record['iteration']} ({source})", "AP (%)", labels,
                    values, (f"mAP {mAP:.1f}%", mAP), (8.0, quarter_inches(1.4 + 0.26 * max(len(labels), 1))))


def read_records(run: str | Path) -> tuple[list[dict], str]:
    """Evaluation records of a run folder: metrics.jsonl, else metrics.json -> (records, file name)."""
    run = Path(run)
    if not run.is_dir():
        raise PECRError(f"run folder {run} not found; pass a training run folder (outputs/<model-name>) to --run")
    for name in ("metrics.jsonl", "metrics.json"):
        path = run / name
        if path.is_file():
            records = []
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise PECRError(f"{path}:{number} is not a JSON record ({err})") from None
            if not records:
                raise PECRError(f"{path} is empty: the run has not been evaluated yet")
            return records, str(path)
    raise PECRError(f"run folder {run} has no metrics.jsonl or metrics.json: train it (main.py) or evaluate it "
                    "(test.py) first")


# ----------------------------------------------------------------------------- drawing

def _color(index: int | None):
    return "black" if index is None else matplotlib.colormaps[PALETTE](index % 10)


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    return path


def draw_video(data: VideoFigure, path: Path, dpi: int = DPI) -> Path:
    fig = Figure(figsize=data.size, layout="constrained")
    lanes = max(len(data.lanes), 1)
    ax_cas, ax_att, ax_seg = fig.subplots(3, 1, sharex=True, height_ratios=[2.2, 1.6, 0.28 * lanes])
    fig.suptitle(data.title)
    for ax, series, ylabel in ((ax_cas, data.cas, "class probability"), (ax_att, data.attention, "attention")):
        for s in series:
            ax.plot(s.x, s.y, s.style, color=_color(s.color), lw=s.width, label=s.label, drawstyle="steps-mid")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(ylabel)
    for ax in (ax_cas, ax_att, ax_seg):
        for k, (a, b) in enumerate(data.ambiguous):
            ax.axvspan(a, b, color="0.6", alpha=0.3, lw=0, label="ambiguous" if k == 0 and ax is not ax_seg else None)
    for ax in (ax_cas, ax_att):  # outside, right: the curves stay visible
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small", borderaxespad=0)
    for s in data.segments:
        ax_seg.barh(s.lane, s.end - s.start, left=s.start, height=0.7, color=_color(s.color), alpha=s.alpha,
                    edgecolor="black" if not s.text else "none", lw=0.6)
        if s.text:
            ax_seg.text(s.start, s.lane, " " + s.text, va="center", ha="left", fontsize=7, clip_on=True)
    ax_seg.set_yticks(range(len(data.lanes)), data.lanes, fontsize=8)
    ax_seg.set_ylim(lanes - 0.5, -0.5)
    ax_seg.set_xlim(*data.xlim)
    ax_seg.set_xlabel("time (s)")
    return _save(fig, path, dpi)


def draw_lines(data: LineChart, path: Path, dpi: int = DPI) -> Path:
    fig = Figure(figsize=data.size, layout="constrained")
    ax = fig.subplots()
    for s in data.series:
        ax.plot(s.x, s.y, s.style, color=_color(s.color), lw=s.width, label=s.label, marker="o", ms=2.5)
    ax.set(title=data.title, xlabel=data.xlabel, ylabel=data.ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2, loc="best")
    return _save(fig, path, dpi)


def draw_bars(data: BarChart, path: Path, dpi: int = DPI) -> Path:
    fig = Figure(figsize=data.size, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(data.labels))
    ax.barh(y, data.values, color=_color(0))
    for k, v in enumerate(data.values):
        ax.text(v, k, f" {v:.1f}", va="center", ha="left", fontsize=7)
    ax.set_yticks(y, data.labels, fontsize=8)
    ax.set_ylim(len(data.labels) - 0.5, -0.5)
    ax.set_xlim(0, 108)  # AP in percent, room for the value labels
    if data.reference is not None:
        ax.axvline(data.reference[1], color="black", ls="--", lw=1, label=data.reference[0])
        ax.legend(loc="lower right", fontsize="small")
    ax.set(title=data.title, xlabel=data.xlabel)
    ax.title.set_fontsize(10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, dpi)


# ----------------------------------------------------------------------------- commands

def file_name(video: str) -> str:
    return re.sub(r"[^\w.-]", "_", video) + ".png"


def videos_command(argv: Sequence[str]) -> list[Path]:
    p = argparse.ArgumentParser(prog="python tools/visualize.py videos", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="one PNG per chosen video from raw predictions (--save-raw true)")
    p.add_argument("--raw", required=True, help="raw_predictions.npz")
    p.add_argument("--videos", nargs="+", default=[], help="video names to draw")
    p.add_argument("--worst", type=int, default=None, help="also the N videos of lowest AP (default 3 when nothing is chosen)")
    p.add_argument("--best", type=int, default=None, help="also the N videos of highest AP (default 3 when nothing is chosen)")
    p.add_argument("--tiou", type=float, default=0.5, help="tIoU of the per-video AP (title, --worst, --best)")
    p.add_argument("--top", type=int, default=3, help="detections drawn per class (highest scores)")
    p.add_argument("--dpi", type=int, default=DPI, help="pixels per inch (figures are 12 inches wide)")
    p.add_argument("--out-dir", dest="out_dir", default=None, help="default: figures/ beside the raw file")
    add_scoring_options(p)
    args, raw, opts = parse(p, argv)
    for flag, value, low in (("--tiou", args.tiou, None), ("--top", args.top, 1), ("--dpi", args.dpi, 10),
                             ("--worst", args.worst, 0), ("--best", args.best, 0)):
        if value is not None and ((low is None and not 0 < value <= 1) or (low is not None and value < low)):
            raise PECRError(f"{flag} {value} is out of range: it must be " + ("in (0, 1]" if low is None else f">= {low}"))
    nothing = not args.videos and args.worst is None and args.best is None
    worst, best = (3, 3) if nothing else (args.worst or 0, args.best or 0)
    evaluation = rescore(raw, opts, progress=True)
    reference = raw.reference
    ap = per_video_ap(reference.ground_truth, evaluation.detections, args.tiou, len(raw.classlist))
    names = choose_videos(raw.predictions.names, ap, args.videos, worst, best)
    # the output folder is made only once the videos are known to exist: a refused command leaves nothing
    out_dir = check_writable(args.out_dir or Path(args.raw).parent / "figures")
    figures = [video_figure(raw, n, evaluation.detections, reference.ground_truth, reference.ambiguous, opts,
                            float(ap.get(n, np.nan)), args.tiou, args.top) for n in names]
    return [draw_video(f, out_dir / file_name(n), args.dpi) for f, n in zip(figures, names)]


def run_command(argv: Sequence[str]) -> list[Path]:
    p = argparse.ArgumentParser(prog="python tools/visualize.py run", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="mAP against iteration and per-class AP of a run folder")
    p.add_argument("--run", required=True, help="run folder (metrics.jsonl, or a test.py / eval.rescore metrics.json)")
    p.add_argument("--tiou", type=float, default=0.5, help="tIoU of the per-class AP chart")
    p.add_argument("--iteration", type=int, default=None, help="evaluation of the per-class chart (default: the last)")
    p.add_argument("--protocol", choices=tuple(PROTOCOLS), default=None, help="averages drawn (default: those the records carry)")
    p.add_argument("--dpi", type=int, default=DPI, help="pixels per inch")
    p.add_argument("--out-dir", dest="out_dir", default=None, help="default: figures/ in the run folder")
    args = p.parse_args(argv)
    records, source = read_records(args.run)
    chosen = [r for r in records if args.iteration is None or r["iteration"] == args.iteration]
    if not chosen:
        raise PECRError(f"{source} has no evaluation at iteration {args.iteration}; it has "
                        f"{', '.join(str(r['iteration']) for r in records)}")
    lines = map_chart(records, args.protocol, Path(args.run).name)
    bars = class_ap_chart(chosen[-1], args.tiou, Path(args.run).name)
    out_dir = check_writable(args.out_dir or Path(args.run) / "figures")
    return [draw_lines(lines, out_dir / "map_vs_iteration.png", args.dpi),
            draw_bars(bars, out_dir / f"ap_per_class_tiou{args.tiou:g}.png", args.dpi)]


COMMANDS = {"videos": videos_command, "run": run_command}


@cli
def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in COMMANDS:
        top = argparse.ArgumentParser(prog="python tools/visualize.py", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        top.add_argument("command", choices=tuple(COMMANDS), help="videos: per-video figures; run: run-level figures")
        top.parse_args(argv[:1])  # help, or a usage error
    written = COMMANDS[argv[0]](argv[1:])
    print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
