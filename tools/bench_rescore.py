"""Benchmark raw predictions at THUMOS14 size (not a unit test).

    python tools/bench.py rescore [--config configs/synthetic_thumos.yaml] [--threads N] [--fresh]

On first use (or with ``--fresh``) runs one test pass of an untrained PECR (RN50-sized random CLIP)
over the THUMOS14-sized synthetic benchmark (generated like ``tools/bench.py test``), keeps its raw
outputs and writes them as ``raw_predictions.npz`` (float32) and ``raw_predictions_float16.npz``
under ``features/synthetic_thumos/raw/`` with the pass's metrics record. Then times reading the
float32 file and re-scoring it with its own options (``python -m eval.rescore``'s work), checks
that the re-scored record equals the test pass's exactly, and reports the float16 file's mAP
difference. Prints one JSON line. Target: re-scoring in seconds (proposals are the cost).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make_raw(opts, folder: Path, device: str) -> None:
    """One test pass with --save-raw: both raw files and the pass's record (metrics.json)."""
    import options
    from dataset import WTALDataset
    from eval.raw import save_raw
    from model import build_model, load_clip
    from test import evaluate, load_reference
    from tools.make_synthetic import ensure_synthetic
    from utils.io import atomic_write_text

    shared = ROOT.parent / "shared" / "data" / "Thumos14reduced-Annotations"
    if opts.synthetic_annotations and not Path(opts.synthetic_annotations).exists() and shared.exists():
        opts.synthetic_annotations = str(shared)
    clip_model = load_clip(opts, device)
    ensure_synthetic(opts, clip_model.embed_dim)
    dataset = WTALDataset(opts, clip_dim=clip_model.embed_dim)
    model = build_model(opts, dataset.class_phrases, device, clip_model=clip_model)
    reference = load_reference(opts)
    evaluation = evaluate(model, dataset, opts, reference=reference, keep_raw=True)
    saved = options.options_to_dict(opts)
    for name, dtype in (("raw_predictions.npz", "float32"), ("raw_predictions_float16.npz", "float16")):
        save_raw(folder / name, evaluation.raw, reference, dataset.classlist, saved, 0, dtype)
    atomic_write_text(folder / "metrics.json", json.dumps(evaluation.record) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tools/bench.py rescore", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "synthetic_thumos.yaml"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads for the test pass (default: torch's)")
    ap.add_argument("--fresh", action="store_true", help="run the test pass again even when the raw files exist")
    ap.add_argument("--device", default="cpu")
    args, rest = ap.parse_known_args(argv)

    import numpy as np

    import options
    from eval.raw import load_raw
    from eval.rescore import rescore

    opts = options.parse_args(["--config", args.config, "--device", args.device, "--save-raw", "true", *rest])
    folder = Path(opts.feature_file).parents[1] / "raw"
    if args.fresh or not (folder / "raw_predictions.npz").is_file():
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        make_raw(opts, folder, args.device)
    expected = json.loads((folder / "metrics.json").read_text())

    t0 = time.perf_counter()
    raw = load_raw(folder / "raw_predictions.npz")
    load_s = time.perf_counter() - t0
    saved = argparse.Namespace(**raw.options)
    t0 = time.perf_counter()
    evaluation = rescore(raw, saved, progress=False)
    rescore_s = time.perf_counter() - t0
    half = rescore(load_raw(folder / "raw_predictions_float16.npz"), saved, progress=False).record
    size = lambda name: round((folder / name).stat().st_size / 2**20, 2)
    print(json.dumps({
        "videos": len(raw.predictions.videos),
        "snippets": int(sum(len(v.attention) for v in raw.predictions.videos)),
        "detections": len(evaluation.detections),
        "raw_mb_float32": size("raw_predictions.npz"),
        "raw_mb_float16": size("raw_predictions_float16.npz"),
        "load_s": round(load_s, 2),
        "rescore_s": round(rescore_s, 2),
        "proposals_s": round(evaluation.timings["proposals"], 2),
        "map_s": round(evaluation.timings["map"], 3),
        "exact": evaluation.record == expected,
        "float16_max_abs_mAP_diff": float(np.max(np.abs(np.subtract(half["mAP"], expected["mAP"])))),
    }))


if __name__ == "__main__":
    main()
