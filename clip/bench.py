"""CLIP benchmark (not a test): ``python -m clip.bench [--backbone random-RN50] [--classes 20] [--device cpu] [--threads N]``.

Times the tokenizer, the prompt learner's forward+backward (the per-step text cost of training;
truncated context vs the full 77-token run) and image encoding; prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import clip


def _time(fn, repeat: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", default="random-RN50")
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    start = time.perf_counter()
    model = clip.load(args.backbone, device=device)
    load_s = time.perf_counter() - start
    texts = [f"class number {i} of some sport" for i in range(1000)]
    tokenizer = clip.get_tokenizer()
    tokenizer._cache.clear()
    start = time.perf_counter()
    clip.tokenize(texts)
    tokenize_s = time.perf_counter() - start

    phrases = [f"sport number {i}" for i in range(args.classes)]
    learner = clip.PromptLearner(model, phrases).to(device).train()

    def step():
        learner.prompt_table.grad = None
        learner().square().sum().backward()

    def full_step():                                  # the same prompts run over all 77 positions
        learner.prompt_table.grad = None
        x = torch.cat([learner.prompts(), learner.prompt_table[learner.length:].expand(len(phrases) + 1, -1, -1)], 1)
        ids = torch.nn.functional.pad(learner.token_ids, (0, 77 - learner.length))
        model.encode_text_from_embeddings(x, ids).square().sum().backward()

    images = torch.randn(args.images, 3, model.visual.input_resolution, model.visual.input_resolution, device=device)
    with torch.inference_mode():
        image_s = _time(lambda: model.encode_image(images), args.repeat, device)
    result = {
        "backbone": args.backbone, "device": str(device), "threads": torch.get_num_threads(), "load_s": round(load_s, 3),
        "tokenize_1000_texts_s": round(tokenize_s, 4),
        "prompt_step_ms": round(1e3 * _time(step, args.repeat, device), 2),
        "prompt_step_full77_ms": round(1e3 * _time(full_step, args.repeat, device), 2),
        "prompt_positions": learner.length, "classes": args.classes,
        "encode_image_per_image_ms": round(1e3 * image_s / args.images, 2),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
