"""Evaluation benchmark: ``python tools/bench.py eval [--repeat N] [--shared DIR]``.

- THUMOS14 scale: the real test ground truth (212 videos, snippet units), 1,000 random
  predictions per video, tIoU 0.1..0.9 (target: < 1 s on one CPU core);
- ActivityNet1.2 scale: the real validation ground truth (2,383 videos), 100 random predictions
  per video, tIoU 0.5:0.05:0.95 (target: < 2 s);
- proposal generation for one THUMOS-length video (T = 340, 20 classes, realistic CAS).
Also one run of the JSON CLI at THUMOS14 scale (parsing included, for information).
Restrict to one core with ``taskset -c 0``. Prints one JSON line (median seconds of N runs).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from eval import detection
from eval.annotations import load_wtalc_ground_truth, to_activitynet_json, wtalc_classes
from eval.detection import evaluate_detection
from eval.proposals import ProposalConfig, video_proposals
from options import ANET_TIOU, THUMOS_TIOU

ROOT = Path(__file__).resolve().parents[1]


def random_predictions(gt: pd.DataFrame, per_video: int, n_cls: int, rng: np.random.Generator,
                       lengths: dict[str, float]) -> pd.DataFrame:
    """``per_video`` predictions per ground-truth video: half of the labels among the video's own
    classes, segments of log-uniform length anywhere in the video, uniform scores."""
    rows = []
    own = gt.groupby("video-id")["label"].unique()
    for vid, labels in own.items():
        T = max(lengths[vid], 2.0)
        label = np.where(rng.random(per_video) < 0.5, rng.choice(labels, per_video), rng.integers(0, n_cls, per_video))
        start = rng.uniform(0, T, per_video)
        length = np.exp(rng.uniform(0, np.log(T / 2), per_video))
        rows.append(pd.DataFrame({"video-id": vid, "label": label, "t-start": np.floor(start),
                                  "t-end": np.floor(np.minimum(start + length, T)) + 1, "score": rng.random(per_video)}))
    return pd.concat(rows, ignore_index=True)


def realistic_video(rng: np.random.Generator, T: int = 340, C: int = 20):
    """CAS (T, C+1) and attention (T,) like a trained model's test output (τ_test = 0.03 cosine CAS)."""
    def smooth(x, width=5):
        kernel = np.ones(width) / width
        return np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), 0, x)

    actions = np.zeros(T)
    for _ in range(8):
        s = rng.integers(0, T - 20)
        actions[s:s + rng.integers(3, 20)] = 1
    cos = smooth(rng.normal(0, 0.05, (T, C + 1)))
    cls = rng.choice(C, 2, replace=False)
    cos[:, cls] += 0.15 * smooth(actions[:, None] + rng.normal(0, 0.3, (T, 1)))
    cos[:, C] += 0.1 * (1 - actions)
    attention = 1 / (1 + np.exp(-smooth((4 * actions - 2 + rng.normal(0, 1.0, T))[:, None])[:, 0]))
    return (cos / 0.03).astype(np.float32), attention.astype(np.float32)


def _time_cli(gt: pd.DataFrame, pred: pd.DataFrame, annotation_dir: Path) -> float:
    """One run of ``python -m eval.detection`` on JSON files (parsing included), in-process."""
    classes = wtalc_classes(annotation_dir)
    results: dict[str, list] = {}
    for v, c, s, e, score in zip(pred["video-id"], pred["label"], pred["t-start"], pred["t-end"], pred["score"]):
        results.setdefault(v, []).append({"label": classes[c], "score": float(score), "segment": [float(s), float(e)]})
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = Path(tmp) / "gt.json", Path(tmp) / "pred.json"
        gt_path.write_text(json.dumps(to_activitynet_json(gt, classes, "test")))
        pred_path.write_text(json.dumps({"version": "bench", "external_data": {}, "results": results}))
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            detection.main(["--ground-truth", str(gt_path), "--predictions", str(pred_path), "--subset", "test"])
        return time.perf_counter() - t0


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python tools/bench.py eval")
    p.add_argument("--repeat", type=int, default=5, help="runs per measurement (median reported)")
    p.add_argument("--shared", default=os.environ.get("PECR_SHARED", str(ROOT.parent / "shared")),
                   help="folder holding data/ with the real annotations (default: $PECR_SHARED or ../shared)")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    data = Path(args.shared) / "data"
    if not data.is_dir():
        raise SystemExit(f"{data} not found: the benchmark needs the real annotations (pass --shared DIR)")
    out = {}

    thumos_dir = data / "Thumos14reduced-Annotations"
    gt = load_wtalc_ground_truth(thumos_dir, "test")
    names = [v.decode() for v in np.load(thumos_dir / "videoname.npy")]
    seconds = np.load(thumos_dir / "duration.npy").reshape(-1)
    lengths = {n: d * 25 / 16 for n, d in zip(names, seconds)}
    pred = random_predictions(gt, 1000, 20, rng, lengths)
    result = evaluate_detection(gt, pred, THUMOS_TIOU, classes=20)
    out["thumos_videos"], out["thumos_predictions"] = int(gt["video-id"].nunique()), len(pred)
    out["thumos_detection_s"] = _median_time(lambda: evaluate_detection(gt, pred, THUMOS_TIOU, classes=20), args.repeat)
    out["thumos_mAP@0.5"] = float(result.mAP[4])
    out["thumos_cli_json_s"] = _time_cli(gt, pred, thumos_dir)

    anet_dir = data / "ActivityNet1.2-Annotations"
    gt = load_wtalc_ground_truth(anet_dir, "validation", snippet_units=False)
    names = [v.decode() for v in np.load(anet_dir / "videoname.npy")]
    lengths = dict(zip(names, np.load(anet_dir / "duration.npy").reshape(-1)))
    pred = random_predictions(gt, 100, 100, rng, lengths)
    out["anet_videos"], out["anet_predictions"] = int(gt["video-id"].nunique()), len(pred)
    out["anet_detection_s"] = _median_time(lambda: evaluate_detection(gt, pred, ANET_TIOU, classes=100), args.repeat)

    cfg = ProposalConfig()
    videos = [realistic_video(rng) for _ in range(args.repeat)]
    counts = [len(video_proposals(cas, att, cfg, "v")) for cas, att in videos]
    t0 = time.perf_counter()
    for cas, att in videos:
        video_proposals(cas, att, cfg, "v")
    out["proposals_per_video_s"] = (time.perf_counter() - t0) / len(videos)
    out["proposals_per_video"] = float(np.mean(counts))
    out["proposals_212_videos_s_estimate"] = 212 * out["proposals_per_video_s"]
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
