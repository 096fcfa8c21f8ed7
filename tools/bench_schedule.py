"""Benchmark the paper's THUMOS14 schedule on a device (not a unit test).

    python tools/bench.py schedule --device cuda [--steps 20] [--variants fp32,tf32,bf16,compiled]

On the THUMOS14-sized synthetic benchmark (configs/synthetic_thumos.yaml: the real THUMOS14 ground
truth, 2048-d I3D-like and 1024-d CLIP-like features, an RN50-sized random CLIP; generated on first
use), times the real training step of ``main.Run`` (batch from the dataset, forward, loss, backward,
Adam) in each precision variant, and one full test pass (212 videos: inference, proposals, mAP).
Variants: ``fp32`` (true float32), ``tf32`` (--tf32 true), ``bf16`` (--amp bf16), ``compiled``
(--compile true, float32; its compilation time is reported apart). The estimated wall time of the
schedule is ``max_iter`` steps plus one test pass per evaluation of ``main.should_evaluate``
(120 for THUMOS14: every 50 iterations past 3000, the last one included). Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "tf32", "bf16", "compiled")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(run, steps: int, warmup: int) -> float:
    """Median seconds of ``steps`` training steps of ``run`` after ``warmup`` untimed ones."""
    from train import train_step

    times = []
    for i in range(warmup + steps):
        _sync(run.device)
        t0 = time.perf_counter()
        batch = run.dataset.train_batch(run.rng, run.device)
        train_step(run.step_model, run.step_criterion, run.optimizer, batch, i)  # reads the loss back: synced
        _sync(run.device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="tools/bench.py schedule", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "synthetic_thumos.yaml"))
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (the compiled variant compiles there)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {','.join(VARIANTS)}")
    ap.add_argument("--test-videos", type=int, default=None, help="time the test pass on the first N videos only "
                    "(the schedule estimate scales it to all)")
    args, rest = ap.parse_known_args(argv)

    import main as train_main
    import options
    from test import evaluate
    from utils.device import set_float32_precision

    opts = options.parse_args(["--config", args.config, "--device", args.device, "--output-dir", "/tmp/pecr-bench-schedule",
                               *rest])
    t0 = time.perf_counter()
    run = train_main.Run(opts)
    setup = time.perf_counter() - t0
    device = run.device
    figures = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "torch": torch.__version__, "setup_s": round(setup, 2),
               "features_resident": run.dataset._resident is not None, "steps": args.steps}

    for variant in [v for v in args.variants.split(",") if v]:
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        set_float32_precision(variant == "tf32")
        run.model.amp = "bf16" if variant == "bf16" else "off"
        run.step_model, run.step_criterion = run.model, run.criterion
        if variant == "compiled":
            run.step_model, run.step_criterion = train_main.compiled(run.model, run.criterion)
            t0 = time.perf_counter()
            time_steps(run, 1, 0)
            figures["compile_s"] = round(time.perf_counter() - t0, 1)
        figures[f"step_s_{variant}"] = round(time_steps(run, args.steps, args.warmup), 4)
    set_float32_precision(False)
    run.model.amp = "off"

    test_indices = run.dataset.test_indices
    if args.test_videos:
        run.dataset.test_indices = test_indices[:args.test_videos]
    _sync(device)
    t0 = time.perf_counter()
    evaluation = evaluate(run.model, run.dataset, opts, progress=False, reference=run.reference)
    _sync(device)
    test_s = (time.perf_counter() - t0) * len(test_indices) / len(run.dataset.test_indices)
    run.dataset.test_indices = test_indices
    figures["test_pass_s"] = round(test_s, 2)
    figures["test_pass_split_s"] = {k: round(v, 2) for k, v in evaluation.timings.items()}

    evaluations = sum(train_main.should_evaluate(i, opts) for i in range(opts.max_iter))
    figures["schedule"] = {"max_iter": opts.max_iter, "evaluations": evaluations}
    for variant in VARIANTS:
        if f"step_s_{variant}" in figures:
            minutes = (opts.max_iter * figures[f"step_s_{variant}"] + evaluations * test_s + figures.get(
                "compile_s", 0) * (variant == "compiled")) / 60
            figures["schedule"][f"minutes_{variant}"] = round(minutes, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
