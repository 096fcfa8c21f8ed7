"""Feature-loading benchmark: ``python tools/bench.py data [--videos 8000] [--steps 4] [--root DIR] [--keep]``.

Generates, outside the repository (``--root``, default /tmp/pecr-bench-data), two datasets of
per-video feature files (2048-d I3D and 1024-d CLIP float32 ``<video>.npy``, random values):

* large: ``--videos`` videos (default 8000) with ActivityNet-like lengths (the snippet counts of
  the ActivityNet1.2 durations in ../shared, else a similar distribution; about 15 GB);
* thumos: 412 videos (``--thumos-videos``) with THUMOS14's lengths (about 1.6 GB).

Then, each in a fresh process, builds the dataset and PECR (random RN50-sized CLIP, THUMOS14
training options) and runs training steps, and reports peak RSS (VmHWM) and seconds per step for
(1) the large set, lazy loading and (2) the thumos set in memory; finally one process holds
thumos-in-memory, thumos-lazy and large-lazy with one model and alternates their steps (so the load
of a shared machine hits all alike) to compare seconds per step (median). Targets: peak RSS < 2 GB
with lazy loading whatever the size; a lazy step at most 10 % slower than in memory once the page
cache is warm (``--warm`` reads every file once first). As the model step dominates, the step
ratio is noisy on a shared machine; ``lazy_data_overhead`` (lazy batch - memory batch, over the
in-memory step) isolates what loading adds.
The data are deleted at the end unless ``--keep`` (a re-run reuses kept data). Other options are
PECR options for the workers (e.g. ``--max-seqlen 60``). Prints one JSON line; a quick smoke run:
``--videos 60 --thumos-videos 30 --steps 1``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
MARKER = "bench-data.json"
I3D_DIM, CLIP_DIM, CLASSES = 2048, 1024, 20


# ----------------------------------------------------------------------------- data
def snippet_counts(which: str, videos: int, rng: np.random.Generator) -> np.ndarray:
    """Per-video snippet counts: the real durations' floor(d * 25 / 16) when ../shared has them."""
    folder = SHARED / ("ActivityNet1.2-Annotations" if which == "large" else "Thumos14reduced-Annotations")
    if folder.is_dir():
        real = np.floor(np.load(folder / "duration.npy").reshape(-1) * 25 / 16).astype(np.int64)
    else:  # ActivityNet1.2: mean 180, 2..373 snippets; THUMOS14: mean 332
        real = np.clip(rng.lognormal(5.0, 0.5, 10000), 2, 400).astype(np.int64) if which == "large" else \
            np.clip(rng.lognormal(5.6, 0.6, 412), 10, 5000).astype(np.int64)
    return np.maximum(rng.choice(real, videos) if which == "large" else real[:videos], 2)


def generate(folder: Path, which: str, videos: int, seed: int = 0) -> dict:
    """Per-video I3D and CLIP files + a W-TALC annotation folder (20 classes, half training)."""
    from utils.progress import progress

    from tools.convert_activitynet import Video, write_wtalc

    marker = folder / MARKER
    request = {"which": which, "videos": videos, "seed": seed}
    done = json.loads(marker.read_text()) if marker.is_file() else {}
    if done.get("request") == request:
        return done
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    lengths = snippet_counts(which, videos, rng)
    pool = rng.standard_normal((509, I3D_DIM + CLIP_DIM), dtype=np.float32)  # rows reused: fast to make, distinct per video
    for sub in ("I3D", "CLIP/train", "CLIP/test", "Annotations"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    items = []
    for v, T in enumerate(progress(lengths, desc=f"writing {which}", unit="video")):
        name, training = f"video_{v:05d}", v % 2 == 0
        rows = pool[(np.arange(T) * 7 + v) % len(pool)]
        np.save(folder / "I3D" / f"{name}.npy", rows[:, :I3D_DIM])
        np.save(folder / "CLIP" / ("train" if training else "test") / f"{name}.npy", rows[:, I3D_DIM:])
        duration = (T + 0.5) * 16 / 25
        label = f"Action{v % CLASSES:02d}"
        items.append(Video(name, "training" if training else "validation", duration, [[0.1 * duration, 0.6 * duration]], [label]))
    write_wtalc(folder / "Annotations", items, [f"Action{c:02d}" for c in range(CLASSES)])
    size = sum(p.stat().st_size for p in folder.rglob("*.npy"))
    info = {"request": request, "snippets": int(lengths.sum()), "mean_T": round(float(lengths.mean()), 1), "gb_on_disk": round(size / 1e9, 2)}
    marker.write_text(json.dumps(info))
    return info


def warm(folder: Path) -> float:
    """Read every file once (page cache); seconds."""
    t0 = time.perf_counter()
    for path in folder.rglob("*.npy"):
        with open(path, "rb") as f:
            while f.read(1 << 24):
                pass
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- one process
def options_for(folder: Path, loading: str, extra: list[str]):
    from options import parse_args

    return parse_args(["--feature-file", str(folder / "I3D"), "--annotation-dir", str(folder / "Annotations"),
                       "--clip-feature-dir", str(folder / "CLIP"), "--train-subset", "training", "--test-subset", "validation",
                       "--class-phrases", "none", "--feature-loading", loading, "--clip-backbone", "random-RN50",
                       "--device", "cpu", *extra])


def worker(args, extra: list[str]) -> dict:
    """Build datasets (``args.worker``: 'name:loading,...') and one model; alternate training steps."""
    import torch

    from dataset import WTALDataset
    from losses import PECRLoss
    from model import build_model
    from tools.bench_train import fixed_mmap_threshold, rss_mb
    from train import make_optimizer, train_step

    mmap_fixed = fixed_mmap_threshold()
    if args.threads:
        torch.set_num_threads(args.threads)
    vocab = ROOT.parent / "shared" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
    if vocab.is_file():
        os.environ.setdefault("PECR_CLIP_VOCAB", str(vocab))
    out = {"rss_start_mb": round(rss_mb("VmRSS"), 1), "fixed_mmap_threshold": mmap_fixed}
    runs = {}
    for spec in args.worker.split(","):
        name, loading = spec.split(":")
        opts = options_for(Path(args.root) / name.split("-")[0], loading, extra)
        before, t0 = rss_mb("VmRSS"), time.perf_counter()
        data = WTALDataset(opts, clip_dim=CLIP_DIM, progress=False)
        runs[name] = {"data": data, "opts": opts, "startup_s": round(time.perf_counter() - t0, 2),
                      "dataset_rss_mb": round(rss_mb("VmRSS") - before, 1), "loading": data.feature_loading,
                      "videos": len(data.video_names), "rng": np.random.default_rng(opts.seed),
                      "step": [], "batch": [], "cpu_step": [], "cpu_batch": []}
    opts = next(iter(runs.values()))["opts"]
    torch.manual_seed(opts.seed)
    model = build_model(opts, next(iter(runs.values()))["data"].class_phrases, "cpu")
    criterion, optimizer = PECRLoss(opts), make_optimizer(model, opts)
    out["rss_after_setup_mb"] = round(rss_mb("VmRSS"), 1)
    for step in range(args.steps + 1):  # step 0 warms up allocators and the page cache of its files
        for run in runs.values():
            t0, c0 = time.perf_counter(), time.process_time()
            batch = run["data"].train_batch(run["rng"], "cpu")
            t1, c1 = time.perf_counter(), time.process_time()
            train_step(model, criterion, optimizer, batch, step)
            if step:
                run["batch"].append(t1 - t0)
                run["step"].append(time.perf_counter() - t0)
                run["cpu_batch"].append(c1 - c0)
                run["cpu_step"].append(time.process_time() - c0)
    med = lambda xs: round(statistics.median(xs), 4)
    for name, run in runs.items():
        out[name] = {k: run[k] for k in ("loading", "videos", "startup_s", "dataset_rss_mb")} | {
            "step_s": med(run["step"]), "batch_s": med(run["batch"]), "cpu_step_s": med(run["cpu_step"]),
            "cpu_batch_s": med(run["cpu_batch"]), "steps": len(run["step"])}
    out["peak_rss_mb"] = round(rss_mb("VmHWM"), 1)
    return out


def run_worker(args, spec: str, extra: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__)), "--worker", spec, "--root", str(args.root), "--steps", str(args.steps),
           "--threads", str(args.threads), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        sys.exit(f"benchmark worker {spec} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="tools/bench.py data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/pecr-bench-data", help="where the generated data go (outside the repository)")
    p.add_argument("--videos", type=int, default=8000, help="videos of the large set")
    p.add_argument("--thumos-videos", dest="thumos_videos", type=int, default=412, help="videos of the THUMOS14-sized set")
    p.add_argument("--steps", type=int, default=4, help="timed training steps per configuration (after one warm-up step)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--warm", action="store_true", help="read every file once before timing (a warm page cache)")
    p.add_argument("--keep", action="store_true", help="keep the generated data (a re-run reuses it)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args, extra = p.parse_known_args(argv)
    if args.worker:
        print(json.dumps(worker(args, extra)))
        return
    root = Path(args.root).resolve()
    if root == ROOT or ROOT in root.parents:
        sys.exit(f"--root {root} is inside the repository; generate the benchmark data elsewhere")
    result = {"bench": "data", "load_avg_1min": round(os.getloadavg()[0], 2)}
    try:
        t0 = time.perf_counter()
        result["large"] = generate(root / "large", "large", args.videos)
        result["thumos"] = generate(root / "thumos", "thumos", args.thumos_videos)
        result["generate_s"] = round(time.perf_counter() - t0, 1)
        if args.warm:
            result["warm_read_s"] = round(warm(root), 1)
        result["large_lazy_process"] = run_worker(args, "large:lazy", extra)
        result["thumos_memory_process"] = run_worker(args, "thumos:memory", extra)
        both = run_worker(args, "thumos:memory,thumos-lazy:lazy,large-lazy:lazy", extra)
        result["interleaved"] = both
        memory = both["thumos"]
        # step time of lazy / in memory - 1 (noisy on a shared machine), and the part that differs:
        # (lazy batch - memory batch) / memory step, in wall and process-CPU seconds
        result["lazy_step_vs_memory"] = {k: round(both[k]["step_s"] / memory["step_s"] - 1, 3) for k in ("thumos-lazy", "large-lazy")}
        result["lazy_data_overhead"] = {k: round((both[k]["batch_s"] - memory["batch_s"]) / memory["step_s"], 4)
                                        for k in ("thumos-lazy", "large-lazy")}
        result["lazy_data_overhead_cpu"] = {k: round((both[k]["cpu_batch_s"] - memory["cpu_batch_s"]) / memory["cpu_step_s"], 4)
                                            for k in ("thumos-lazy", "large-lazy")}
        result["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
