"""Train PECR: ``python main.py --dataset thumos`` (see options.py, configs/ and README.md).

Run folder ``<output-dir>/<model-name>/``: ``options.yaml`` (resolved options; ``--config`` it
to reproduce the run), ``last.pt`` (resume point), ``best.pt`` (best by the dataset's
criterion), ``metrics.jsonl`` (one record per evaluation, fractions), ``results.txt`` (tables in
percent) and ``tensorboard/``; with ``--save-raw true`` also ``raw_predictions.npz`` and
``detections.json`` of the final evaluation.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import options
from dataset import WTALDataset
from eval.report import format_table, selection_score
from losses import PECRLoss
from model import build_model, load_clip
from test import check_classes, evaluate, load_reference, write_results
from train import make_optimizer, train_step
from utils.checkpoint import load_checkpoint, load_model_state, model_state, save_checkpoint
from utils.device import resolve_device
from utils.errors import cli
from utils.io import append_line
from utils.seed import rng_state, seed_everything, set_rng_state


def should_evaluate(iteration: int, opts) -> bool:
    """After training step ``iteration``: every ``interval`` once past ``warmup_iter``, and always at the
    last step (so a run shorter than the warm-up still ends with an evaluation and a best.pt)."""
    last = iteration == opts.max_iter - 1
    return last or (iteration > opts.warmup_iter and iteration % opts.interval == 0)


class Run:
    """Everything one training run holds: data, model, objective, optimizer, sampler RNG, logs."""

    def __init__(self, opts):
        self.opts = opts
        self.dir = Path(opts.output_dir) / opts.model_name
        seed_everything(opts.seed, opts.deterministic)
        self.device = resolve_device(opts.device)
        clip_model = load_clip(opts, self.device)
        if opts.synthetic_generate:
            from tools.make_synthetic import ensure_synthetic
            ensure_synthetic(opts, clip_model.embed_dim)
        self.dataset = WTALDataset(opts, clip_dim=clip_model.embed_dim)
        self.model = build_model(opts, self.dataset.class_phrases, self.device, clip_model=clip_model)
        self.reference = load_reference(opts)  # ground truth and ambiguous regions, read once (fails fast)
        self.criterion = PECRLoss(opts)
        self.optimizer = make_optimizer(self.model, opts)
        self.rng = np.random.default_rng(opts.seed)  # training-batch sampler
        self.start, self.best = 0, -float("inf")
        self.history: list[dict] = []  # {"iteration": i, term: value, ..., "total": value} per step of this session

    # ------------------------------------------------------------------ checkpoints
    def save(self, name: str, iteration: int, resumable: bool) -> None:
        """``best.pt``: the model and what test.py needs; ``last.pt`` (resumable) adds the optimizer,
        the sampler and RNG states."""
        payload = {"model": model_state(self.model), "iteration": iteration, "best": self.best,
                   "options": options.options_to_dict(self.opts), "classlist": self.dataset.classlist}
        if resumable:
            payload |= {"optimizer": self.optimizer.state_dict(), "sampler": self.rng.bit_generator.state,
                        "rng": rng_state()}
        save_checkpoint(self.dir / name, payload)

    def resume(self) -> None:
        ckpt = load_checkpoint(self.dir / "last.pt", map_location="cpu")  # RNG states must stay CPU tensors
        check_classes(ckpt, self.dataset.classlist, self.dir / "last.pt")
        load_model_state(self.model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.rng.bit_generator.state = ckpt["sampler"]
        set_rng_state(ckpt["rng"])
        self.start, self.best = ckpt["iteration"] + 1, ckpt["best"]

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, iteration: int, writer: SummaryWriter) -> dict:
        final = self.opts.save_raw and iteration == self.opts.max_iter - 1  # --save-raw: keep the final pass's outputs
        evaluation = evaluate(self.model, self.dataset, self.opts, iteration, reference=self.reference, keep_raw=final)
        record = evaluation.record
        if final:  # raw_predictions.npz and that evaluation's detections.json in the run folder
            write_results(self.dir, evaluation, self.reference, self.dataset.classlist, self.opts, metrics=False)
        for t, m in zip(record["tiou"], record["mAP"]):
            writer.add_scalar(f"mAP/tIoU={t:g}", 100 * m, iteration)
        for name, value in record["average_mAP"].items():
            writer.add_scalar(f"mAP/avg {name}", 100 * value, iteration)
        writer.add_scalar("mAP/classification", 100 * record["cmAP"], iteration)
        append_line(self.dir / "metrics.jsonl", json.dumps(record))
        table = format_table(record, self.opts.protocol)
        append_line(self.dir / "results.txt", table + "\n")
        tqdm.write(table)
        return record

    # ------------------------------------------------------------------ loop
    def train(self) -> dict | None:
        opts = self.opts
        self.dir.mkdir(parents=True, exist_ok=True)
        options.save_options(opts, self.dir / "options.yaml")
        if opts.resume:
            self.resume()
        else:  # a fresh run in an existing run folder replaces that run's results and logs
            for old in ("metrics.jsonl", "results.txt"):
                (self.dir / old).unlink(missing_ok=True)
            shutil.rmtree(self.dir / "tensorboard", ignore_errors=True)
        writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=self.start)
        record = None
        if opts.eval_at_start and self.start == 0:
            record = self.evaluate(0, writer)
        bar = tqdm(range(self.start, opts.max_iter), initial=self.start, total=opts.max_iter, desc="train", unit="it")
        running = None
        try:
            for iteration in bar:
                batch = self.dataset.train_batch(self.rng, self.device)
                terms = train_step(self.model, self.criterion, self.optimizer, batch, iteration)
                self.history.append({"iteration": iteration, **terms})
                running = terms["total"] if running is None else 0.95 * running + 0.05 * terms["total"]
                bar.set_postfix(loss=f"{running:.4f}")
                for name, value in terms.items():
                    writer.add_scalar(f"loss/{name}", value, iteration)
                if should_evaluate(iteration, opts):
                    record = self.evaluate(iteration, writer)
                    score = selection_score(record, opts.protocol)
                    if score > self.best:
                        self.best = score
                        self.save("best.pt", iteration, resumable=False)
                if (iteration + 1) % opts.checkpoint_every == 0 or iteration == opts.max_iter - 1:
                    self.save("last.pt", iteration, resumable=True)
        finally:
            bar.close()
            writer.close()
        return record


@cli
def main(argv: Sequence[str] | None = None) -> int:
    opts = options.parse_args(argv)
    run = Run(opts)
    record = run.train()
    if record is not None:
        print(f"\nfinal evaluation ({run.dir}):\n{format_table(record, opts.protocol)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
