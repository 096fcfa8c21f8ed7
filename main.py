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
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import options
from dataset import WTALDataset
from eval.report import format_table, selection_score
from losses import PECRLoss
from model import build_model, load_clip
from test import check_classes, evaluate, load_reference, write_results
from train import NonFiniteLoss, make_optimizer, train_step
from utils.checkpoint import load_checkpoint, load_model_state, model_state, save_checkpoint
from utils.device import resolve_device, set_float32_precision
from utils.errors import PECRError, cli
from utils.io import append_line, atomic_write_text, check_writable
from utils.progress import interactive
from utils.seed import rng_state, seed_everything, set_rng_state

class Interrupted(PECRError):
    """Ctrl-C during training; the message says which checkpoint is intact."""

    exit_code = 130


def saved_run(run_dir: Path) -> dict | None:
    """``{"iteration", "options"}`` of the run's last.pt (read lazily, tensors not loaded), None when absent."""
    path = run_dir / "last.pt"
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path, mmap=True)
    return {"iteration": int(ckpt["iteration"]), "options": ckpt.get("options", {})}


def check_resume(opts, run_dir: Path) -> dict:
    """What ``--resume`` continues: PECRError when there is nothing to resume or an option that changes
    the run differs from the run's own (``options.SESSION_OPTIONS`` may differ). Reads only last.pt."""
    saved = saved_run(run_dir)
    if saved is None:
        raise PECRError(f"nothing to resume in {run_dir} (no last.pt): drop --resume to start the run")
    changed = options.changed_run_options(opts, saved["options"])
    if changed:
        now = options.options_to_dict(opts)
        k = changed[0]
        more = f" (and {', '.join(changed[1:4])}{'...' if len(changed) > 4 else ''})" if len(changed) > 1 else ""
        raise PECRError(f"--resume: --{k.replace('_', '-')} is {now.get(k)!r} but the run in {run_dir} was started with "
                        f"{saved['options'].get(k)!r}{more}; a resumed run keeps its options: drop the changed options "
                        "or start a new run with another --model-name")
    return saved


def finished(run_dir: Path, last_iteration: int, opts) -> bool:
    """True (and says so) when the run's last checkpoint is its final iteration: nothing to resume."""
    if last_iteration < opts.max_iter - 1:
        return False
    print(f"run {run_dir} already finished (iteration {last_iteration} of --max-iter {opts.max_iter}); nothing to do")
    return True


def compiled(model, criterion):
    """``torch.compile`` forms of the model and of the loss for the training step (evaluation runs the
    model as it is: test videos of every length would recompile it). Random draws inside compiled code
    take eager PyTorch's generator (inductor's ``fallback_random``), so a compiled run draws the same
    dropout masks and noise as an eager one and stays comparable to it."""
    import torch._inductor.config as inductor

    inductor.fallback_random = True
    return torch.compile(model), torch.compile(criterion.__call__)


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
        set_float32_precision(opts.tf32)
        clip_model = load_clip(opts, self.device)
        if opts.synthetic_generate:
            from tools.make_synthetic import ensure_synthetic
            ensure_synthetic(opts, clip_model.embed_dim)
        self.dataset = WTALDataset(opts, clip_dim=clip_model.embed_dim)
        self.dataset.keep_on_device(self.device)  # THUMOS14's 1.7 GB live on the GPU when they fit
        self.model = build_model(opts, self.dataset.class_phrases, self.device, clip_model=clip_model)
        self.reference = load_reference(opts)  # ground truth and ambiguous regions, read once (fails fast)
        self.criterion = PECRLoss(opts)
        # what the training step calls: the model and loss themselves, or their compiled forms (--compile)
        self.step_model, self.step_criterion = (compiled(self.model, self.criterion) if opts.compile
                                                else (self.model, self.criterion))
        self.optimizer = make_optimizer(self.model, opts)
        self.rng = np.random.default_rng(opts.seed)  # training-batch sampler
        self.start, self.best = 0, -float("inf")
        self.iteration = 0  # the iteration being run (named when training stops)
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

    def checkpoint_note(self) -> str:
        """Which checkpoint a stopped run can continue from."""
        saved = saved_run(self.dir) if self.dir.is_dir() else None
        if saved is None:
            return "no checkpoint was written yet"
        return f"last.pt (iteration {saved['iteration']}) is intact: continue with --resume"

    def resume(self) -> None:
        ckpt = load_checkpoint(self.dir / "last.pt", map_location="cpu")  # RNG states must stay CPU tensors
        check_classes(ckpt, self.dataset.classlist, self.dir / "last.pt")
        load_model_state(self.model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.rng.bit_generator.state = ckpt["sampler"]
        set_rng_state(ckpt["rng"])
        self.start, self.best = ckpt["iteration"] + 1, ckpt["best"]
        self._drop_records_from(self.start)

    def _drop_records_from(self, iteration: int) -> None:
        """Forget evaluations made after last.pt (they are made again): metrics.jsonl keeps the records
        of iterations before ``iteration`` (the baseline included), results.txt is rewritten to match."""
        path = self.dir / "metrics.jsonl"
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["iteration"] < iteration]
        if len(kept) == len(lines):
            return
        atomic_write_text(path, "".join(line + "\n" for line in kept))
        tables = [format_table(json.loads(line), self.opts.protocol) for line in kept]
        atomic_write_text(self.dir / "results.txt", "".join(table + "\n" for table in tables))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, iteration: int, writer: SummaryWriter) -> dict:
        final = self.opts.save_raw and iteration == self.opts.max_iter - 1  # --save-raw: keep the final pass's outputs
        evaluation = evaluate(self.model, self.dataset, self.opts, iteration, reference=self.reference,
                              keep_raw=final, progress=interactive())
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
        if opts.resume:
            check_resume(opts, self.dir)
            self.resume()  # options.yaml already describes this run: it is not rewritten
        else:  # a fresh run in an existing run folder replaces that run's results and logs
            check_writable(self.dir, "--output-dir / --model-name")
            for old in ("metrics.jsonl", "results.txt"):
                (self.dir / old).unlink(missing_ok=True)
            shutil.rmtree(self.dir / "tensorboard", ignore_errors=True)
            options.save_options(opts, self.dir / "options.yaml")
        if finished(self.dir, self.start - 1, opts):
            return None
        writer = SummaryWriter(str(self.dir / "tensorboard"), purge_step=self.start)
        record = None
        try:
            if opts.eval_at_start and self.start == 0:
                record = self.evaluate(0, writer)
            record = self._loop(writer) or record
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted at iteration {self.iteration}; {self.checkpoint_note()}") from None
        except NonFiniteLoss as err:
            raise NonFiniteLoss(f"{err}; {self.checkpoint_note()}") from None
        finally:
            writer.close()
        return record

    def _loop(self, writer: SummaryWriter) -> dict | None:
        """Iterations ``start .. max_iter-1``; returns the last evaluation record (None when none ran)."""
        opts, record, running = self.opts, None, None
        log_lines = not interactive()  # a log line per interval where a bar would flood a log
        bar = tqdm(range(self.start, opts.max_iter), initial=self.start, total=opts.max_iter, desc="train", unit="it",
                   disable=log_lines)
        tic = time.perf_counter()
        try:
            for iteration in bar:
                self.iteration = iteration
                batch = self.dataset.train_batch(self.rng, self.device)
                terms = train_step(self.step_model, self.step_criterion, self.optimizer, batch, iteration)
                self.history.append({"iteration": iteration, **terms})
                running = terms["total"] if running is None else 0.95 * running + 0.05 * terms["total"]
                bar.set_postfix(loss=f"{running:.4f}")
                for name, value in terms.items():
                    writer.add_scalar(f"loss/{name}", value, iteration)
                if log_lines and ((iteration + 1) % opts.interval == 0 or iteration == opts.max_iter - 1):
                    done = iteration + 1 - self.start
                    print(f"train: iteration {iteration + 1}/{opts.max_iter}, loss {running:.4f}, "
                          f"{(time.perf_counter() - tic) / done:.3f} s/it", file=sys.stderr, flush=True)
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
        return record


@cli
def main(argv: Sequence[str] | None = None) -> int:
    opts = options.parse_args(argv)
    run_dir = Path(opts.output_dir) / opts.model_name
    if opts.resume:  # checked before any data is loaded: a wrong --resume costs seconds
        if finished(run_dir, check_resume(opts, run_dir)["iteration"], opts):
            return 0
    else:
        check_writable(run_dir, "--output-dir / --model-name")
    run = Run(opts)
    record = run.train()
    if record is not None:
        print(f"\nfinal evaluation ({run.dir}):\n{format_table(record, opts.protocol)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
