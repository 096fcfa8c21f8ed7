"""Ground truth from the W-TALC annotation folder (docs/method.md §1.1, §6) and its ActivityNet JSON form.

Snippet units: ``round(sec * fps / frames)`` for both start and end, evaluated as
``(sec * fps) / frames`` in float64 and rounded half to even (``np.round``, the same as
Python's ``round`` on floats), as the release does with ``round(sec * 25 / 16)``.

Converter::

    python -m eval.annotations --annotations DIR --subset test --out gt.json [--seconds | --snippet-units]

By default the converter writes the protocol's ground truth: segments in seconds but on the snippet
grid (``round(sec * fps / frames) * frames / fps``), with a top-level ``"snippet_grid": {"fps",
"frames"}`` entry that tells ``python -m eval.detection`` to score on that grid. A detections.json
written by test.py then scores exactly as test.py does (docs/method.md §6). ``--seconds`` writes the
annotated seconds as they are (no grid); ``--snippet-units`` writes snippet indices.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from utils.errors import PECRError, cli

REQUIRED = ("classlist", "videoname", "subset", "segments", "labels")


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def load_wtalc(annotation_dir: str | Path, flag: str = "--annotation-dir") -> dict[str, np.ndarray]:
    """The annotation arrays of a W-TALC folder (``duration`` flattened to (N,) when present);
    ``flag`` is the command-line option named in the error messages."""
    folder = Path(annotation_dir)
    if not folder.is_dir():
        raise PECRError(f"annotation folder {folder} not found; pass the W-TALC annotation folder ({flag})")
    out = {}
    for name in REQUIRED + ("duration",):
        path = folder / f"{name}.npy"
        if not path.is_file():
            if name == "duration":
                continue
            raise PECRError(f"annotation folder {folder} lacks {name}.npy; it needs {', '.join(REQUIRED)} (.npy)")
        try:
            out[name] = np.load(path, allow_pickle=True)
        except (OSError, ValueError) as err:
            raise PECRError(f"cannot read {path} ({err}); the annotation file is corrupt") from None
    n = len(out["videoname"])
    for name in ("subset", "segments", "labels") + (("duration",) if "duration" in out else ()):
        if len(out[name]) != n:
            raise PECRError(f"{folder}/{name}.npy has {len(out[name])} entries but videoname.npy has {n}")
    if "duration" in out:
        out["duration"] = np.asarray(out["duration"], dtype=np.float64).reshape(n)
    return out


def object_array(items: list) -> np.ndarray:
    """A 1-D object array holding ``items`` as they are (the W-TALC files' per-video lists; np.array
    would stack lists of equal length into a 2-D array)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def to_snippets(seconds, fps: float = 25.0, frames: int = 16) -> np.ndarray:
    """``round(sec * fps / frames)`` (half to even) as int64."""
    return np.round(np.asarray(seconds, dtype=np.float64) * fps / frames).astype(np.int64)


def load_wtalc_ground_truth(annotation_dir: str | Path, subset: str, snippet_units: bool = True,
                            fps: float = 25.0, frames: int = 16,
                            videos: Iterable[str] | None = None, flag: str = "--annotation-dir") -> pd.DataFrame:
    """Segments of the ``subset`` videos -> table (video-id, label (class index), t-start, t-end).

    Only videos with at least one segment contribute rows. ``label`` indexes classlist.npy.
    ``snippet_units``: ints ``round(sec * fps / frames)``; otherwise float seconds. ``videos``
    restricts to those ids (e.g. the test videos kept after a minimum-length filter).
    """
    ann = load_wtalc(annotation_dir, flag)
    classes = [_text(c) for c in ann["classlist"]]
    names = [_text(v) for v in ann["videoname"]]
    subsets = [_text(s) for s in ann["subset"]]
    if subset not in subsets:
        raise PECRError(f"{annotation_dir}: unknown subset {subset!r}; subset.npy has {sorted(set(subsets))}")
    keep = set(videos) if videos is not None else None
    class_index = {c: i for i, c in enumerate(classes)}
    vid, lab, seg = [], [], []
    for name, sub, segments, labels in zip(names, subsets, ann["segments"], ann["labels"]):
        if sub != subset or (keep is not None and name not in keep):
            continue
        if len(segments) != len(labels):
            raise PECRError(f"{annotation_dir}: video {name} has {len(segments)} segments but {len(labels)} labels")
        for s, label in zip(segments, labels):
            label = _text(label)
            if label not in class_index:
                raise PECRError(f"{annotation_dir}: video {name} has label {label!r} missing from classlist.npy")
            vid.append(name)
            lab.append(class_index[label])
            seg.append((float(s[0]), float(s[1])))
    seg = np.array(seg, dtype=np.float64).reshape(-1, 2)
    if snippet_units:
        seg = to_snippets(seg, fps, frames)
    return pd.DataFrame({"video-id": vid, "label": np.array(lab, dtype=np.int64),
                         "t-start": seg[:, 0], "t-end": seg[:, 1]})


def wtalc_classes(annotation_dir: str | Path) -> list[str]:
    """Class names of classlist.npy (index = label)."""
    return [_text(c) for c in load_wtalc(annotation_dir)["classlist"]]


def snippet_grid_seconds(snippets, fps: float = 25.0, frames: int = 16) -> np.ndarray:
    """Snippet indices -> seconds on the grid (``index * frames / fps``), as test.py writes detections."""
    return np.asarray(snippets, dtype=np.float64) * (frames / fps)


def to_activitynet_json(gt: pd.DataFrame, classes: Sequence[str], subset: str,
                        durations: dict[str, float] | None = None, version: str = "",
                        snippet_grid: dict | None = None) -> dict:
    """Table (integer labels) -> ActivityNet ground truth ``{database, taxonomy, version}`` (plus
    ``snippet_grid`` {fps, frames} when given: the segments lie on that grid and are scored on it)."""
    database: dict[str, dict] = {}
    for v, label, s, e in zip(gt["video-id"], gt["label"], gt["t-start"], gt["t-end"]):
        entry = database.setdefault(v, {"subset": subset, "duration": None, "annotations": []})
        entry["annotations"].append({"segment": [s.item() if hasattr(s, "item") else s,
                                                 e.item() if hasattr(e, "item") else e],
                                     "label": classes[int(label)]})
    for v, entry in database.items():
        entry["duration"] = None if durations is None else durations.get(v)
    taxonomy = [{"nodeId": i, "nodeName": c, "parentId": None, "parentName": None} for i, c in enumerate(classes)]
    data = {"version": version, "taxonomy": taxonomy, "database": database}
    if snippet_grid is not None:
        data["snippet_grid"] = {"fps": float(snippet_grid["fps"]), "frames": int(snippet_grid["frames"])}
    return data


@cli
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.annotations",
                                description="W-TALC annotation folder -> ActivityNet-style ground-truth JSON")
    p.add_argument("--annotations", required=True, help="W-TALC annotation folder (classlist.npy, segments.npy, ...)")
    p.add_argument("--subset", required=True, help="subset.npy value to export (THUMOS14 test: test)")
    units = p.add_mutually_exclusive_group()
    units.add_argument("--seconds", action="store_true",
                       help="the annotated seconds as they are, instead of the protocol's snippet grid (default)")
    units.add_argument("--snippet-units", action="store_true",
                       help="segments (and durations) in snippets, round(sec * fps / frames), instead of seconds")
    p.add_argument("--fps", type=float, default=25.0, help="feature frame rate of the snippet grid")
    p.add_argument("--frames", type=int, default=16, help="frames per snippet of the snippet grid")
    p.add_argument("--out", required=True, help="output JSON file")
    args = p.parse_args(argv)
    if args.fps <= 0 or args.frames < 1:
        raise PECRError(f"--fps {args.fps:g} and --frames {args.frames} must be positive")
    from utils.io import atomic_write_text, check_writable

    check_writable(Path(args.out).resolve().parent, "--out")
    ann = load_wtalc(args.annotations, "--annotations")
    classes = [_text(c) for c in ann["classlist"]]
    gt = load_wtalc_ground_truth(args.annotations, args.subset, not args.seconds, args.fps, args.frames,
                                 flag="--annotations")
    grid = None
    if not (args.seconds or args.snippet_units):  # the protocol's ground truth, in seconds on the snippet grid
        gt = gt.assign(**{c: snippet_grid_seconds(gt[c], args.fps, args.frames) for c in ("t-start", "t-end")})
        grid = {"fps": args.fps, "frames": args.frames}
    durations = None
    if "duration" in ann:
        scale = args.fps / args.frames if args.snippet_units else 1.0
        durations = {_text(v): float(d) * scale for v, d in zip(ann["videoname"], ann["duration"])}
    unit = (f"snippets of {args.frames} frames at {args.fps:g} fps" if args.snippet_units else "seconds" if args.seconds
            else f"seconds on the grid of {args.frames}-frame snippets at {args.fps:g} fps")
    data = to_activitynet_json(gt, classes, args.subset, durations,
                               version=f"{Path(args.annotations).name} {args.subset} ({unit})", snippet_grid=grid)
    atomic_write_text(args.out, json.dumps(data) + "\n")
    print(f"wrote {args.out}: {len(data['database'])} videos, {len(gt)} segments, {len(classes)} classes ({unit})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
