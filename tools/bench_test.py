"""Benchmark a full test pass over the THUMOS14-sized synthetic benchmark (not a unit test).

    python tools/bench.py test [--config configs/synthetic_thumos.yaml] [--threads N] [--videos N]

Generates the data on first use (real THUMOS14 ground truth, 2048-d I3D-like and 1024-d
CLIP-like features; ``features/synthetic_thumos/``), builds PECR with an RN50-sized random CLIP,
and times one evaluation pass: model inference per video, proposals, mAP, and peak memory
beyond the loaded features. Prints one JSON line.
Targets on 2 CPU cores: < 0.3 s of model time per average video, < 75 s for the whole pass,
< 1.5 GB peak beyond the loaded features.
"""
from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _rss_gb() -> float:
    """Current resident memory of this process (GB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


class PeakMemory:
    """Samples the resident memory every few milliseconds in a thread; ``peak`` is the maximum (GB)."""

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.peak, self._stop = every_s, _rss_gb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, _rss_gb())

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_gb())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tools/bench.py test", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "synthetic_thumos.yaml"))
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--videos", type=int, default=None, help="evaluate only the first N test videos")
    ap.add_argument("--device", default="cpu")
    args, rest = ap.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import options
    from dataset import WTALDataset
    from model import build_model, load_clip
    from test import evaluate
    from tools.make_synthetic import ensure_synthetic

    opts = options.parse_args(["--config", args.config, "--device", args.device, *rest])
    shared = ROOT.parent / "shared" / "data" / "Thumos14reduced-Annotations"
    if opts.synthetic_annotations and not Path(opts.synthetic_annotations).exists() and shared.exists():
        opts.synthetic_annotations = str(shared)
    device = torch.device(args.device)

    t0 = time.perf_counter()
    clip_model = load_clip(opts, device)
    ensure_synthetic(opts, clip_model.embed_dim)
    dataset = WTALDataset(opts, clip_dim=clip_model.embed_dim)
    if args.videos:
        dataset.test_indices = dataset.test_indices[: args.videos]
    model = build_model(opts, dataset.class_phrases, device, clip_model=clip_model)
    setup_s = time.perf_counter() - t0
    base_gb = _rss_gb()

    t0 = time.perf_counter()
    with PeakMemory() as memory:
        result = evaluate(model, dataset, opts, progress=True)
    total_s = time.perf_counter() - t0
    n = dataset.num_test_videos
    lengths = dataset.lengths[dataset.test_indices]
    print(json.dumps({
        "videos": int(n),
        "mean_T": round(float(lengths.mean()), 1),
        "threads": torch.get_num_threads(),
        "model_s_per_video": round(result.timings["model"] / n, 4),
        "model_s": round(result.timings["model"], 2),
        "proposals_s": round(result.timings["proposals"], 2),
        "map_s": round(result.timings["map"], 3),
        "pass_s": round(total_s, 2),
        "setup_s": round(setup_s, 1),
        "loaded_gb": round(base_gb, 3),
        "peak_beyond_loaded_gb": round(memory.peak - base_gb, 3),
        "mAP@0.1:0.7": round(100 * result.record["average_mAP"]["0.1:0.7"], 2),
    }))


if __name__ == "__main__":
    main()
