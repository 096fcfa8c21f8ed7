"""Evaluate a checkpoint on the test split (docs/method.md §5-§6).

    python test.py --ckpt outputs/PECR/best.pt [--out-dir DIR] [any option of options.py]
    python test.py --ckpt PECR_release.pkl --dataset thumos        # the authors' released weights

Our checkpoints carry their resolved options, which become the defaults here (command-line
options still win). Writes ``detections.json`` (ActivityNet format, seconds) and ``metrics.json``
(one record in the metrics.jsonl form) to ``--out-dir`` (default: the checkpoint's folder), and with
``--save-raw true`` ``raw_predictions.npz`` (the network outputs; re-score them with
``python -m eval.rescore``, plot them with ``tools/visualize.py``).
:func:`evaluate` is the test pass the training loop uses too: :func:`infer` then :func:`eval.scoring.score`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch

import options
from dataset import WTALDataset
from eval.annotations import load_wtalc_ground_truth
from eval.proposals import load_ambiguous
from eval.raw import FILENAME as RAW_FILENAME, save_raw
from eval.report import format_table
from eval.scoring import Evaluation, Reference, VideoOutput, score, write_evaluation
from model import PECR, build_model
from utils.checkpoint import (check_checkpoint, is_pecr_checkpoint, load_model_state, load_release_checkpoint,
                              read_checkpoint, release_state_dict)
from utils.device import resolve_device, set_float32_precision
from utils.errors import PECRError, cli
from utils.io import check_writable


# options of the training machine / session that test.py does not inherit: --amp too, a speed option
# of the machine (a bf16-trained checkpoint is evaluated in float32 unless --amp bf16 is given here)
RUN_LOCAL = ("device", "resume", "amp")


def ambiguous_file(opts) -> Path | None:
    """``--ambiguous-file``: ``auto`` = ``<annotation-dir>/Ambiguous_test.txt`` when it exists, ``none`` = no filter."""
    if opts.ambiguous_file == "auto":
        path = Path(opts.annotation_dir) / "Ambiguous_test.txt"
        return path if path.is_file() else None
    return Path(opts.ambiguous_file) if opts.ambiguous_file else None


def load_reference(opts) -> Reference:
    """Ground truth of every test-subset video with a segment (docs/method.md §6, as the release: segments of
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


def infer(model: PECR, dataset: WTALDataset, opts, timings: dict | None = None) -> Iterator[VideoOutput]:
    """The inference half of a test pass: every test video through the model, lazily -> its outputs.

    The prompt text features are computed once per pass; test-time sampling draws from a
    generator seeded with ``opts.seed``, so a pass is reproducible and leaves the global RNG alone.
    Adds the seconds spent in the model to ``timings["model"]``.
    The model runs at its own precision (``model.amp``: under ``--amp bf16`` the head and text
    transformer in bfloat16, the CAS in float32); proposals and mAP are computed as always.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(opts.seed)
    try:
        with torch.inference_mode():
            text = model.encode_text()
        for video in dataset.test_videos(device):
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = model(video.features, text_features=text, generator=generator)
                arrays = [x[0].cpu().numpy() for x in (out.cas, out.attention, out.attention_v, out.attention_f)]
            if timings is not None:
                timings["model"] = timings.get("model", 0.0) + time.perf_counter() - t0
            yield VideoOutput(video.name, *arrays)
    finally:
        model.train(was_training)


def evaluate(model: PECR, dataset: WTALDataset, opts, iteration: int = 0, progress: bool = True,
             reference: Reference | None = None, keep_raw: bool = False) -> Evaluation:
    """Run inference over the test split (:func:`infer`) and score it by the protocol of ``opts.protocol``
    (:func:`eval.scoring.score`). ``reference`` (from :func:`load_reference`) is read here when not given;
    ``keep_raw``: keep the network outputs in ``Evaluation.raw`` (for ``--save-raw``)."""
    reference = reference or load_reference(opts)
    timings = {"model": 0.0}
    labels = dataset.labels[dataset.test_indices]  # the order of dataset.test_videos
    evaluation = score(infer(model, dataset, opts, timings), labels, reference, opts, dataset.classlist, iteration,
                       progress, keep_raw)
    evaluation.timings.update(timings)
    return evaluation


def write_results(out_dir: Path, evaluation: Evaluation, reference: Reference, classlist: Sequence[str], opts,
                  metrics: bool = True) -> list[Path]:
    """``detections.json``, ``metrics.json`` (unless ``metrics`` is False) and, with ``--save-raw``,
    ``raw_predictions.npz`` (eval/raw.py) in ``out_dir``, each written atomically -> their paths."""
    if opts.save_raw and evaluation.raw is None:
        raise ValueError("--save-raw needs the outputs: evaluate(..., keep_raw=True)")
    out_dir = Path(out_dir)
    written = write_evaluation(out_dir, evaluation, classlist, opts, metrics)
    if opts.save_raw:
        written.append(save_raw(out_dir / RAW_FILENAME, evaluation.raw, reference, classlist,
                                options.options_to_dict(opts), evaluation.record["iteration"], opts.raw_dtype))
    return written


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
    ckpt = check_checkpoint(data, known.ckpt) if is_pecr_checkpoint(data) else {"release": release_state_dict(data, known.ckpt)}
    saved = {k: v for k, v in ckpt.get("options", {}).items() if k not in RUN_LOCAL}
    opts = options.parse_args(rest, base=saved)
    return opts, known.ckpt, ckpt, Path(known.out_dir) if known.out_dir else None


@cli
def main(argv: Sequence[str] | None = None) -> int:
    opts, ckpt_path, ckpt, out_dir = _parse(argv)
    out_dir = out_dir or Path(ckpt_path).parent
    check_writable(out_dir, "--out-dir")  # before the test pass, not after it
    device = resolve_device(opts.device)
    set_float32_precision(opts.tf32)
    dataset = WTALDataset(opts)
    model = build_model(opts, dataset.class_phrases, device)
    load_weights(model, ckpt, ckpt_path, dataset.classlist)
    reference = load_reference(opts)
    evaluation = evaluate(model, dataset, opts, iteration=ckpt.get("iteration", 0), reference=reference,
                          keep_raw=opts.save_raw)
    print(format_table(evaluation.record, opts.protocol))
    written = write_results(out_dir, evaluation, reference, dataset.classlist, opts)
    print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
