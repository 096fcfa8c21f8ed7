"""Evaluate a checkpoint on the test split (SPEC §5-§6).

    python test.py --ckpt outputs/PECR/best.pt [--out-dir DIR] [any option of options.py]
    python test.py --ckpt PECR_release.pkl --dataset thumos        # the authors' released weights

Our checkpoints carry their resolved options, which become the defaults here (command-line
options still win). Writes ``detections.json`` (ActivityNet format, seconds) and ``metrics.json``
(one record in the metrics.jsonl form) to ``--out-dir`` (default: the checkpoint's folder).
:func:`evaluate` is the test pass the training loop uses too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

import options
from dataset import WTALDataset
from eval.annotations import load_wtalc_ground_truth
from eval.classification import classification_map, classification_scores
from eval.detection import evaluate_detection
from eval.proposals import ProposalConfig, filter_ambiguous, load_ambiguous, to_seconds, video_proposals
from eval.report import format_table, metrics_record
from model import PECR, build_model
from utils.checkpoint import (check_checkpoint, is_pecr_checkpoint, load_model_state, load_release_checkpoint,
                              read_checkpoint)
from utils.device import resolve_device
from utils.errors import PECRError, cli
from utils.io import atomic_write_text


# options of the training machine / session that test.py does not inherit: --amp too, a speed option
# of the machine (a bf16-trained checkpoint is evaluated in float32 unless --amp bf16 is given here)
RUN_LOCAL = ("device", "resume", "amp")


@dataclass
class Evaluation:
    """One test pass: the metrics record (fractions), detections (snippet units) and timings (s)."""

    record: dict
    detections: pd.DataFrame
    timings: dict = field(default_factory=dict)


@dataclass
class Reference:
    """What test passes are scored against, read once per run."""

    ground_truth: pd.DataFrame               # video-id, label, t-start, t-end (snippet units)
    ambiguous: dict[str, np.ndarray] | None  # THUMOS14 regions excluded from evaluation (seconds)


def ambiguous_file(opts) -> Path | None:
    """``--ambiguous-file``: ``auto`` = ``<annotation-dir>/Ambiguous_test.txt`` when it exists, ``none`` = no filter."""
    if opts.ambiguous_file == "auto":
        path = Path(opts.annotation_dir) / "Ambiguous_test.txt"
        return path if path.is_file() else None
    return Path(opts.ambiguous_file) if opts.ambiguous_file else None


def load_reference(opts) -> Reference:
    """Ground truth of every test-subset video with a segment (SPEC §6, as the release: segments of
    videos dropped for being too short, ActivityNet1.2's <= 10 snippets, count as misses)."""
    gt = load_wtalc_ground_truth(opts.annotation_dir, opts.test_subset, True, opts.feature_fps, opts.snippet_frames)
    path = ambiguous_file(opts)
    return Reference(gt, load_ambiguous(path) if path else None)


def check_classes(ckpt: dict, classlist: Sequence[str], path) -> None:
    """PECRError when a checkpoint was trained on another class list than the dataset's."""
    saved = ckpt.get("classlist")
    if saved is not None and list(saved) != list(classlist):
        raise PECRError(f"checkpoint {path} was trained on {len(saved)} classes {list(saved)[:3]}..., the dataset has "
                        f"{len(classlist)} classes {list(classlist)[:3]}...: trained on another dataset?")


@torch.inference_mode()
def evaluate(model: PECR, dataset: WTALDataset, opts, iteration: int = 0, progress: bool = True,
             reference: Reference | None = None) -> Evaluation:
    """Run inference over the test split and score it by the protocol of ``opts.protocol``.

    The prompt text features are computed once per pass; test-time sampling draws from a
    generator seeded with ``opts.seed``, so a pass is reproducible and leaves the global RNG alone.
    The model runs at its own precision (``model.amp``: under ``--amp bf16`` the head and text
    transformer in bfloat16, the CAS in float32); proposals and mAP are computed as always.
    ``reference`` (from :func:`load_reference`) is read here when not given.
    """
    reference = reference or load_reference(opts)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(opts.seed)
    cfg = ProposalConfig.from_options(opts)
    timings = {"model": 0.0, "proposals": 0.0}

    text = model.encode_text()
    tables, scores, names = [], [], []
    videos = dataset.test_videos(device)
    for video in tqdm(videos, total=dataset.num_test_videos, desc="test", unit="video", disable=not progress, leave=False):
        t0 = time.perf_counter()
        out = model(video.features, text_features=text, generator=generator)
        cas, attention = out.cas[0].cpu().numpy(), out.attention[0].cpu().numpy()
        t1 = time.perf_counter()
        tables.append(video_proposals(cas, attention, cfg, video.name))
        scores.append(classification_scores(cas, opts.cls_topk))
        names.append(video.index)
        timings["model"] += t1 - t0
        timings["proposals"] += time.perf_counter() - t1
    model.train(was_training)

    t0 = time.perf_counter()
    detections = pd.concat(tables, ignore_index=True)
    if reference.ambiguous is not None:
        detections = filter_ambiguous(detections, reference.ambiguous, opts.feature_fps, opts.snippet_frames)
    result = evaluate_detection(reference.ground_truth, detections, opts.tiou_thresholds, dataset.num_classes)
    cmap = classification_map(np.stack(scores)[:, :-1], dataset.labels[names])
    timings["map"] = time.perf_counter() - t0
    record = metrics_record(iteration, opts.tiou_thresholds, result.mAP, opts.protocol, cmap)
    return Evaluation(record, detections, timings)


def detections_json(detections: pd.DataFrame, classlist: Sequence[str], opts) -> dict:
    """ActivityNet-format results (segments in seconds)."""
    seconds = to_seconds(detections, opts.feature_fps, opts.snippet_frames)
    results: dict[str, list] = {}
    for vid, label, start, end, score in seconds[["video-id", "label", "t-start", "t-end", "score"]].itertuples(index=False):
        results.setdefault(vid, []).append({"label": classlist[label], "score": float(score),
                                            "segment": [float(start), float(end)]})
    return {"version": "PECR", "results": results, "external_data": {"used": True, "details": "CLIP (OpenAI)"}}


def load_weights(model: PECR, ckpt: dict, ckpt_path: str, classlist: Sequence[str]) -> None:
    """Our checkpoint payload, or ({"release": content}) the authors' weights through the name mapping."""
    if "release" in ckpt:
        print(load_release_checkpoint(model, ckpt_path, data=ckpt["release"]).summary())
    else:
        check_classes(ckpt, classlist, ckpt_path)
        load_model_state(model, ckpt["model"])


def _parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, str, dict, Path | None]:
    """Options (the checkpoint's own as defaults), checkpoint path, payload ({"release": ...} for the
    authors' file), out dir."""
    front = argparse.ArgumentParser(add_help=False)
    front.add_argument("--ckpt", required=True, help="checkpoint: ours (best.pt / last.pt) or the authors' release")
    front.add_argument("--out-dir", dest="out_dir", default=None, help="where to write detections.json and metrics.json")
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        front.print_help()
        print("\nAll options of main.py are accepted too (python main.py --help).")
        sys.exit(0)
    known, rest = front.parse_known_args(argv)
    data = read_checkpoint(known.ckpt)  # read once: ours, or the authors' release (a bare state dict)
    ckpt = check_checkpoint(data, known.ckpt) if is_pecr_checkpoint(data) else {"release": data}
    saved = {k: v for k, v in ckpt.get("options", {}).items() if k not in RUN_LOCAL}
    opts = options.parse_args(rest, base=saved)
    return opts, known.ckpt, ckpt, Path(known.out_dir) if known.out_dir else None


@cli
def main(argv: Sequence[str] | None = None) -> int:
    opts, ckpt_path, ckpt, out_dir = _parse(argv)
    device = resolve_device(opts.device)
    dataset = WTALDataset(opts)
    model = build_model(opts, dataset.class_phrases, device)
    load_weights(model, ckpt, ckpt_path, dataset.classlist)
    evaluation = evaluate(model, dataset, opts, iteration=ckpt.get("iteration", 0))
    out_dir = out_dir or Path(ckpt_path).parent
    record = evaluation.record
    print(format_table(record, opts.protocol))
    atomic_write_text(out_dir / "detections.json", json.dumps(detections_json(evaluation.detections, dataset.classlist, opts)))
    atomic_write_text(out_dir / "metrics.json", json.dumps(record) + "\n")
    print(f"wrote {out_dir / 'detections.json'} and {out_dir / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
