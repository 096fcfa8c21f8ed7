"""Raw predictions file (``raw_predictions.npz``): the network outputs of one test pass and
everything needed to score them again without model, features or annotation folder.

Written by ``python test.py --save-raw true`` (beside detections.json) and by training's final
evaluation (``python main.py --save-raw true``, in the run folder); read by
``python -m eval.rescore`` and ``tools/visualize.py``. One compressed ``.npz`` (no pickles):

=====================  ==============  ===================================================
key                    shape / dtype   content
=====================  ==============  ===================================================
format                 ()  str         ``pecr-raw-predictions/1``
classlist              (C,) str        class names (label index = position)
feature_fps            () float64      frame rate of the features: seconds = snippet * snippet_frames / feature_fps
snippet_frames         () int64        frames per snippet
iteration              () int64        training iteration of the evaluated model
options                () str          the resolved options of the pass (JSON)
videos                 (N,) str        test videos in pass order
lengths                (N,) int64      T_i, snippets per video; arrays below are concatenated in video order
cas                    (ΣT, C+1)       CAS, background last (float32, or float16 with ``--raw-dtype float16``)
attention              (ΣT,)           A = (A_V + A_F) / 2
attention_v            (ΣT,)           A_V (RGB-main consensus module)
attention_f            (ΣT,)           A_F (flow-main consensus module)
labels                 (N, C) float32  video-level multi-hot labels (classification mAP)
gt_video               (G,) str        ground truth of the test subset, snippet units
gt_label, gt_start,    (G,) int64      (class index, [start, end] in snippets)
gt_end
has_ambiguous          () bool         whether the pass filtered THUMOS14 ambiguous regions
ambiguous_video        (M,) str        ambiguous regions (seconds), one row per region
ambiguous_segment      (M, 2) float64
=====================  ==============  ===================================================

float32 (default) keeps the model's outputs bit for bit, so re-scoring reproduces the test pass
exactly; float16 halves the file and re-scores approximately (outputs load back as float32).
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from eval.annotations import _text, load_wtalc, load_wtalc_ground_truth
from eval.proposals import load_ambiguous
from eval.scoring import RawPredictions, Reference, VideoOutput
from utils.errors import PECRError
from utils.io import atomic_save

FORMAT = "pecr-raw-predictions/1"
FILENAME = "raw_predictions.npz"
DTYPES = ("float32", "float16")


@dataclass
class RawFile:
    """The content of a raw predictions file."""

    predictions: RawPredictions
    reference: Reference
    classlist: list[str]
    options: dict            # resolved options of the pass (options.options_to_dict form)
    iteration: int
    path: Path | None = None

    @property
    def seconds_per_snippet(self) -> float:
        return self.options["snippet_frames"] / self.options["feature_fps"]


def _strings(values: Sequence[str]) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=str) if len(values) else np.zeros(0, dtype="<U1")


def save_raw(path: str | Path, predictions: RawPredictions, reference: Reference, classlist: Sequence[str],
             options: dict, iteration: int, dtype: str = "float32") -> Path:
    """Write one compressed ``.npz`` atomically (see the module docstring for the keys)."""
    if dtype not in DTYPES:
        raise PECRError(f"--raw-dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if len(classlist) != predictions.num_classes:
        raise PECRError(f"raw predictions have {predictions.num_classes} classes, the class list {len(classlist)}")
    videos = predictions.videos
    cat = lambda parts, width=None: (np.concatenate(parts).astype(dtype) if parts
                                     else np.zeros((0,) if width is None else (0, width), dtype))
    gt = reference.ground_truth
    ambiguous = reference.ambiguous or {}
    regions = list(ambiguous.values())
    arrays = {
        "format": np.array(FORMAT),
        "classlist": _strings(classlist),
        "feature_fps": np.array(float(options["feature_fps"])),
        "snippet_frames": np.array(int(options["snippet_frames"]), dtype=np.int64),
        "iteration": np.array(int(iteration), dtype=np.int64),
        "options": np.array(json.dumps(options, sort_keys=True)),
        "videos": _strings([v.name for v in videos]),
        "lengths": np.array([len(v.attention) for v in videos], dtype=np.int64),
        "cas": cat([v.cas for v in videos], len(classlist) + 1),
        "attention": cat([v.attention for v in videos]),
        "attention_v": cat([v.attention_v for v in videos]),
        "attention_f": cat([v.attention_f for v in videos]),
        "labels": np.asarray(predictions.labels, dtype=np.float32).reshape(len(videos), len(classlist)),
        "gt_video": _strings(gt["video-id"].tolist()),
        "gt_label": gt["label"].to_numpy(np.int64),
        "gt_start": gt["t-start"].to_numpy(),
        "gt_end": gt["t-end"].to_numpy(),
        "has_ambiguous": np.array(reference.ambiguous is not None),
        "ambiguous_video": _strings([v for v, r in ambiguous.items() for _ in range(len(r))]),
        "ambiguous_segment": (np.concatenate(regions).astype(np.float64).reshape(-1, 2) if regions
                              else np.zeros((0, 2))),
    }
    path = Path(path)
    atomic_save(path, lambda f: np.savez_compressed(f, **arrays))
    return path


KEYS = ("format", "classlist", "feature_fps", "snippet_frames", "iteration", "options", "videos", "lengths", "cas",
        "attention", "attention_v", "attention_f", "labels", "gt_video", "gt_label", "gt_start", "gt_end",
        "has_ambiguous", "ambiguous_video", "ambiguous_segment")


def load_raw(path: str | Path) -> RawFile:
    """Read a file written by :func:`save_raw` (outputs as float32); PECRError naming the file when it is
    missing, not a raw predictions file, or inconsistent."""
    path = Path(path)
    if not path.is_file():
        raise PECRError(f"raw predictions file {path} not found; write one with `python test.py --ckpt ... "
                        "--save-raw true` (or train with --save-raw true)")
    if not zipfile.is_zipfile(path):
        raise PECRError(f"{path} is not a PECR raw predictions file (not an .npz archive); write one with --save-raw true")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in KEYS if k not in data.files]
            if missing:
                raise PECRError(f"{path} is not a PECR raw predictions file (no {missing[0]!r} array); "
                                "write one with --save-raw true")
            d = {k: data[k] for k in KEYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise PECRError(f"cannot read raw predictions file {path} ({err}); the file is corrupt or not an .npz") from None
    if str(d["format"]) != FORMAT:
        raise PECRError(f"{path} has format {str(d['format'])!r}; this version reads {FORMAT!r}")
    classlist = d["classlist"].tolist()
    videos = d["videos"].tolist()
    lengths = d["lengths"]
    C = len(classlist)
    total = int(lengths.sum())
    if (d["cas"].shape != (total, C + 1) or any(d[k].shape != (total,) for k in ("attention", "attention_v", "attention_f"))
            or d["labels"].shape != (len(videos), C) or len(lengths) != len(videos)):
        raise PECRError(f"{path} is inconsistent: {len(videos)} videos of {total} snippets, {C} classes, but CAS "
                        f"{d['cas'].shape} and labels {d['labels'].shape}; write it again")
    split = lambda a: np.split(a.astype(np.float32, copy=False), np.cumsum(lengths)[:-1]) if len(lengths) else []
    outputs = [VideoOutput(*video) for video in zip(videos, split(d["cas"]), split(d["attention"]),
                                                    split(d["attention_v"]), split(d["attention_f"]))]
    predictions = RawPredictions(outputs, d["labels"].astype(np.float32, copy=False))
    gt = pd.DataFrame({"video-id": d["gt_video"].tolist(), "label": d["gt_label"].astype(np.int64),
                       "t-start": d["gt_start"], "t-end": d["gt_end"]})
    ambiguous = None
    if bool(d["has_ambiguous"]):
        ambiguous = {}
        for video, segment in zip(d["ambiguous_video"].tolist(), d["ambiguous_segment"]):
            ambiguous.setdefault(video, []).append(segment)
        ambiguous = {v: np.array(r, dtype=np.float64).reshape(-1, 2) for v, r in ambiguous.items()}
    options = json.loads(str(d["options"]))
    options["feature_fps"], options["snippet_frames"] = float(d["feature_fps"]), int(d["snippet_frames"])
    return RawFile(predictions, Reference(gt, ambiguous), classlist, options, int(d["iteration"]), path)


def check_classlist(raw: RawFile, classlist: Sequence[str], where: str) -> None:
    """PECRError when ``classlist`` (of ``where``, e.g. an annotation folder) differs from the raw file's."""
    if list(classlist) != raw.classlist:
        raise PECRError(f"raw predictions file {raw.path} has {len(raw.classlist)} classes {raw.classlist[:3]}..., "
                        f"{where} has {len(classlist)} classes {list(classlist)[:3]}...: written for another dataset?")


def annotation_reference(raw: RawFile, annotation_dir: str | Path) -> Reference:
    """The ground truth of a W-TALC annotation folder for the raw file's test subset (snippet units on the
    raw file's grid) and its ``Ambiguous_test.txt`` when present: to score the same predictions against
    corrected annotations. PECRError when the folder's class list differs or lacks a predicted video."""
    ann = load_wtalc(annotation_dir)
    check_classlist(raw, [_text(c) for c in ann["classlist"]], f"annotation folder {annotation_dir}")
    known = {_text(v) for v in ann["videoname"]}
    unknown = [v for v in raw.predictions.names if v not in known]
    if unknown:
        raise PECRError(f"video {unknown[0]!r} of raw predictions file {raw.path} is not in annotation folder "
                        f"{annotation_dir} ({len(unknown)} such videos): written for another dataset?")
    gt = load_wtalc_ground_truth(annotation_dir, raw.options["test_subset"], True, raw.options["feature_fps"],
                                 raw.options["snippet_frames"])
    ambiguous = Path(annotation_dir) / "Ambiguous_test.txt"
    return Reference(gt, load_ambiguous(ambiguous) if ambiguous.is_file() else None)
