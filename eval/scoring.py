"""Scoring half of a test pass (docs/method.md §5-§6): raw network outputs -> proposals,
detections and the metrics record.

A test pass is inference (``test.infer``: model -> a stream of :class:`VideoOutput`) followed by
:func:`score`; re-scoring a saved raw file (``python -m eval.rescore``) is :func:`score` alone,
so both give the same detections and metrics for the same options. Nothing here needs torch.

    evaluation = score(raw.videos, raw.labels, reference, opts, classlist, iteration)
    evaluation.record        # metrics.jsonl record (fractions), per-class AP included
    evaluation.detections    # video-id, label, t-start, t-end (snippets), score
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, fields
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from eval.classification import classification_map, classification_scores
from eval.detection import evaluate_detection
from eval.proposals import ProposalConfig, filter_ambiguous, to_seconds, video_proposals
from eval.report import metrics_record
from utils.errors import PECRError
from utils.progress import progress as progress_bar

# The options :func:`score` reads (besides feature_fps / snippet_frames for the ambiguous regions):
# the proposal constants and the evaluation settings. ``python -m eval.rescore`` accepts exactly these.
SCORING_OPTIONS = tuple(f.name for f in fields(ProposalConfig)) + (
    "cls_topk", "protocol", "tiou_thresholds")


@dataclass
class VideoOutput:
    """Network outputs for one test video (T snippets, C classes), float32 as the model returns them."""

    name: str
    cas: np.ndarray          # (T, C+1) class activation sequence, background last
    attention: np.ndarray    # (T,) A = (A_V + A_F) / 2
    attention_v: np.ndarray  # (T,) A_V, RGB-main consensus module
    attention_f: np.ndarray  # (T,) A_F, flow-main consensus module


@dataclass
class RawPredictions:
    """The outputs of one whole test pass, in test-video order (N videos), and the videos' labels."""

    videos: list[VideoOutput]  # (N,)
    labels: np.ndarray         # (N, C) video-level multi-hot labels (classification mAP)

    def __post_init__(self):
        if len(self.videos) != len(self.labels):
            raise PECRError(f"raw predictions: {len(self.videos)} videos but {len(self.labels)} label rows")

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.videos]

    @property
    def num_classes(self) -> int:
        return int(self.labels.shape[1])

    def video(self, name: str) -> VideoOutput:
        """The outputs of video ``name`` (PECRError naming a few known videos when absent)."""
        for v in self.videos:
            if v.name == name:
                return v
        some = ", ".join(self.names[:3])
        raise PECRError(f"video {name!r} is not among the {len(self.videos)} videos of these predictions "
                        f"(e.g. {some}); check the name")


@dataclass
class Reference:
    """What test passes are scored against, read once per run."""

    ground_truth: pd.DataFrame               # video-id, label, t-start, t-end (snippet units)
    ambiguous: dict[str, np.ndarray] | None  # THUMOS14 regions excluded from evaluation (seconds)


@dataclass
class Evaluation:
    """One test pass: the metrics record (fractions), detections (snippet units) and timings (s);
    ``raw`` holds the network outputs scored (what ``--save-raw`` writes)."""

    record: dict
    detections: pd.DataFrame
    timings: dict = field(default_factory=dict)
    raw: RawPredictions | None = None


def score(outputs: Iterable[VideoOutput], labels: np.ndarray, reference: Reference, opts, classlist: Sequence[str],
          iteration: int = 0, progress: bool = False, keep_raw: bool = False, desc: str = "test") -> Evaluation:
    """Proposals of every video (``opts``' proposal constants), THUMOS14 ambiguous-region filter,
    detection AP at ``opts.tiou_thresholds`` and classification mAP (``opts.cls_topk``) -> Evaluation.

    ``outputs`` may be a lazy stream (``test.infer``): one video's outputs are held at a time unless
    ``keep_raw`` (then ``Evaluation.raw`` holds them all). ``labels`` (N, C) are the videos' labels in
    stream order. ``opts`` needs the fields of ProposalConfig, ``cls_topk``, ``protocol``,
    ``tiou_thresholds``, ``feature_fps`` and ``snippet_frames``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != len(classlist):
        raise PECRError(f"video labels of shape {labels.shape} do not match the {len(classlist)} classes")
    cfg = ProposalConfig.from_options(opts)
    tables, scores, kept = [], [], []
    seconds = 0.0
    for video in progress_bar(outputs, total=len(labels), desc=desc, unit="video", disable=not progress, leave=False):
        t0 = time.perf_counter()
        tables.append(video_proposals(video.cas, video.attention, cfg, video.name))
        scores.append(classification_scores(video.cas, opts.cls_topk))
        seconds += time.perf_counter() - t0
        if keep_raw:
            kept.append(video)
    if len(scores) != len(labels):
        raise PECRError(f"{len(scores)} videos were scored but {len(labels)} video labels were given")
    t1 = time.perf_counter()
    detections = pd.concat(tables, ignore_index=True)
    if reference.ambiguous is not None:
        detections = filter_ambiguous(detections, reference.ambiguous, opts.feature_fps, opts.snippet_frames)
    result = evaluate_detection(reference.ground_truth, detections, opts.tiou_thresholds, len(classlist))
    cmap = classification_map(np.stack(scores)[:, :-1], labels)
    record = metrics_record(iteration, opts.tiou_thresholds, result.mAP, opts.protocol, cmap,
                            ap_per_class=(classlist, result.ap))
    timings = {"proposals": seconds, "map": time.perf_counter() - t1}
    return Evaluation(record, detections, timings, RawPredictions(kept, labels) if keep_raw else None)


def detections_json(detections: pd.DataFrame, classlist: Sequence[str], opts) -> dict:
    """ActivityNet-format results (segments in seconds)."""
    seconds = to_seconds(detections, opts.feature_fps, opts.snippet_frames)
    results: dict[str, list] = {}
    for vid, label, start, end, score in seconds[["video-id", "label", "t-start", "t-end", "score"]].itertuples(index=False):
        results.setdefault(vid, []).append({"label": classlist[label], "score": float(score),
                                            "segment": [float(start), float(end)]})
    return {"version": "PECR", "results": results, "external_data": {"used": True, "details": "CLIP (OpenAI)"}}


def write_evaluation(out_dir, evaluation: Evaluation, classlist: Sequence[str], opts, metrics: bool = True) -> list:
    """``detections.json`` (ActivityNet format, seconds) and, unless ``metrics`` is False, ``metrics.json``
    (the record) in ``out_dir``, each written atomically -> their paths."""
    from pathlib import Path

    from utils.io import atomic_write_text

    out_dir = Path(out_dir)
    written = [out_dir / "detections.json"]
    atomic_write_text(written[0], json.dumps(detections_json(evaluation.detections, classlist, opts)))
    if metrics:
        written.append(out_dir / "metrics.json")
        atomic_write_text(written[-1], json.dumps(evaluation.record) + "\n")
    return written
