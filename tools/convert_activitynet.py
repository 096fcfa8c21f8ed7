"""ActivityNet-style JSON annotations + per-video feature files -> the W-TALC layout PECR reads.

    python tools/convert_activitynet.py --json data/MyData.json --features data/MyData-I3D \
        --out data/MyData-Annotations [--classlist classes.txt] [--class-phrases phrases.yaml]
    python main.py --dataset data/MyData-Annotations/dataset.yaml

Input: the ActivityNet ``database`` layout, ``{"database": {video: {"subset": str, "duration":
seconds, "annotations": [{"segment": [start, end], "label": class}, ...]}}}`` (other keys are
ignored; a ``taxonomy`` list gives the class list when ``--classlist`` does not), and a folder of
``<video>.npy`` I3D features (T x F float arrays, one row per snippet of ``--snippet-frames``
frames at ``--feature-fps``).

Output, in ``--out`` (written in a temporary folder beside it and renamed into place when
complete, so it is never half-written):

* the W-TALC annotation files: ``classlist.npy``, ``videoname.npy``, ``subset.npy`` (byte strings,
  as the released files), ``duration.npy`` (float64 seconds), ``segments.npy`` (per video a list of
  [start, end] in seconds), ``labels.npy`` (per video the class of each segment) and
  ``labels_all.npy`` (per video its classes, in order of first appearance);
* ``dataset.yaml`` (with ``--features``): a dataset description for ``--dataset``; the feature
  folder itself is the I3D feature layout (``feature_file``, read in memory or lazily), the
  protocol and training presets come from ``--template``;
* ``conversion_report.txt``: videos kept, skipped (no features, no annotation, no snippets) and
  why, and warnings, each naming the file and the video or class.

Without ``--features`` only the annotations are converted (every video of the JSON).

Bad input stops the conversion before anything is written, every problem listed: a class missing
from the class list, a phrase file naming classes outside it, a malformed entry or segment (not
two finite numbers, end before start), feature files that cannot be read, are not 2-D, hold
NaN/inf or differ in width from the others. Segments reaching outside [0, duration] and
zero-length segments are kept and reported (the released ActivityNet1.2 annotations have both);
``--bad-segments clip`` clips them to the video and drops the empty ones, ``error`` refuses them.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.annotations import object_array  # noqa: E402
from utils.errors import PECRError, cli  # noqa: E402
from utils.progress import progress as progress_bar  # noqa: E402

REPORT = "conversion_report.txt"
DESCRIPTION = "dataset.yaml"


@dataclass
class Video:
    """One converted video: segments (k, 2) seconds and their labels."""

    name: str
    subset: str
    duration: float
    segments: list[list[float]]
    labels: list[str]


@dataclass
class Report:
    """What a conversion did: kept videos, skipped ones (name, reason), warnings and errors (one line each)."""

    source: str
    kept: list[Video] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    classlist: list[str] = field(default_factory=list)
    feature_size: int | None = None

    def text(self, limit: int | None = None) -> str:
        """The report; ``limit`` lines per section at most (the file holds them all)."""
        subsets = Counter(v.subset for v in self.kept)
        lines = [f"{self.source}: {len(self.kept)} videos kept ("
                 + ", ".join(f"{s} {n}" for s, n in subsets.items()) + f"), {len(self.classlist)} classes, "
                 f"{sum(len(v.segments) for v in self.kept)} segments; {len(self.skipped)} skipped, "
                 f"{len(self.warnings)} warnings, {len(self.errors)} errors"]
        for title, items in (("errors", self.errors), ("skipped", [f"{v}: {why}" for v, why in self.skipped]),
                             ("warnings", self.warnings)):
            if items:
                lines.append(f"{title}:")
                shown = items if limit is None else items[:limit]
                lines += [f"  {item}" for item in shown]
                if len(shown) < len(items):
                    lines.append(f"  ... and {len(items) - len(shown)} more (all in {REPORT})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- reading
def read_json(path: str | Path) -> dict[str, Any]:
    """The JSON file, checked to hold a ``database`` mapping."""
    from eval.detection import read_json as read_any_json

    path = Path(path)
    data = read_any_json(path, "annotation")
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise PECRError(f"annotation file {path} has no 'database' mapping of videos; expected the ActivityNet layout "
                        '{"database": {video: {"subset", "duration", "annotations": [{"segment", "label"}]}}}')
    return data


def taxonomy_classes(data: dict) -> list[str] | None:
    """Leaf node names of the JSON's ``taxonomy`` in its order (None without one)."""
    nodes = data.get("taxonomy")
    if not isinstance(nodes, list) or not nodes:
        return None
    parents = {n.get("parentId") for n in nodes if isinstance(n, dict)}
    return [str(n["nodeName"]) for n in nodes if isinstance(n, dict) and "nodeName" in n and n.get("nodeId") not in parents]


def read_classlist(path: str | Path) -> list[str]:
    """A class list: a W-TALC classlist.npy, or a text file with one class name per line."""
    path = Path(path)
    if not path.is_file():
        raise PECRError(f"class list {path} not found; pass a classlist.npy or a text file with one class per line (--classlist)")
    if path.suffix == ".npy":
        return [c.decode() if isinstance(c, bytes) else str(c) for c in np.load(path, allow_pickle=False).reshape(-1)]
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    duplicate = [c for c, n in Counter(names).items() if n > 1]
    if duplicate or not names:
        raise PECRError(f"class list {path} " + (f"lists class {duplicate[0]!r} twice" if duplicate else "is empty"))
    return names


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def read_videos(data: dict, source: str, report: Report, bad_segments: str) -> list[Video]:
    """Every entry of the database, checked; problems go to ``report`` (errors or warnings)."""
    videos = []
    for name, entry in data["database"].items():
        where = f"{source} video {name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("subset"), str):
            report.errors.append(f"{where}: no 'subset' text")
            continue
        duration = entry.get("duration")
        if not _number(duration) or duration <= 0:
            report.errors.append(f"{where}: duration {duration!r} is not a positive number of seconds")
            continue
        annotations = entry.get("annotations", [])
        if not isinstance(annotations, list):
            report.errors.append(f"{where}: 'annotations' is not a list")
            continue
        segments, labels = [], []
        for k, ann in enumerate(annotations):
            segment = ann.get("segment") if isinstance(ann, dict) else None
            label = ann.get("label") if isinstance(ann, dict) else None
            if not isinstance(segment, list) or len(segment) != 2 or not all(_number(x) for x in segment) or not isinstance(label, str):
                report.errors.append(f"{where}: annotation {k} is not {{'segment': [start, end] (finite seconds), 'label': text}}: {ann!r}")
                continue
            start, end = float(segment[0]), float(segment[1])
            if end < start:
                report.errors.append(f"{where}: segment {k} [{start:g}, {end:g}] ends before it starts")
                continue
            problem = ("is zero-length" if end == start else
                       f"reaches outside the video [0, {duration:g}]" if start < 0 or end > duration else None)
            if problem:
                text = f"{where}: segment {k} [{start:g}, {end:g}] ({label}) {problem}"
                if bad_segments == "error":
                    report.errors.append(text + " (--bad-segments error)")
                    continue
                if bad_segments == "clip":
                    start, end = max(start, 0.0), min(end, float(duration))
                    if end <= start:
                        report.warnings.append(text + ": dropped (--bad-segments clip)")
                        continue
                    report.warnings.append(text + f": clipped to [{start:g}, {end:g}]")
                else:
                    report.warnings.append(text + ": kept as given (--bad-segments keep)")
            segments.append([start, end])
            labels.append(label)
        if not annotations:
            report.warnings.append(f"{where}: no annotated segment (kept; no video-level class)")
        videos.append(Video(str(name), entry["subset"], float(duration), segments, labels))
    return videos


def check_classes(videos: list[Video], classlist: list[str], class_source: str, source: str, report: Report) -> None:
    """Every label in the class list; classes without any segment are a warning."""
    known = set(classlist)
    for video in videos:
        for label in dict.fromkeys(video.labels):
            if label not in known:
                report.errors.append(f"{source} video {video.name}: class {label!r} is not in the class list ({class_source}); "
                                     "add it there or fix the label")
    used = {label for v in videos for label in v.labels}
    unused = [c for c in classlist if c not in used]
    if unused:
        report.warnings.append(f"{len(unused)} classes of the class list ({class_source}) have no segment: {', '.join(unused[:10])}"
                               + (" ..." if len(unused) > 10 else ""))


def check_phrases(classlist: list[str], phrase_file: str | Path, report: Report) -> None:
    """The phrase file names classes of the class list only; classes without a phrase are reported."""
    from dataset import class_phrase, read_phrase_file

    phrases = read_phrase_file(phrase_file)
    for name in phrases:
        if name not in classlist:
            report.errors.append(f"class phrase file {phrase_file}: class {name!r} is not in the class list; fix the name")
    missing = [c for c in classlist if c not in phrases]
    if missing:
        report.warnings.append(f"class phrase file {phrase_file} has no phrase for {len(missing)} classes, which use the default rule: "
                               + ", ".join(f"{c} -> {class_phrase(c)!r}" for c in missing[:10]) + (" ..." if len(missing) > 10 else ""))


def match_features(videos: list[Video], folder: Path, report: Report, fps: float, frames: int,
                   progress: bool | None = None) -> list[Video]:
    """The videos that have ``<folder>/<video>.npy``, checked (2-D, numeric, one width, finite);
    the others and the feature files without annotation are skipped and reported."""
    from dataset import NpyFile, check_finite

    if not folder.is_dir():
        raise PECRError(f"feature folder {folder} not found; pass the folder of <video>.npy I3D features with --features")
    files = {p.stem: p for p in sorted(folder.glob("*.npy"))}
    annotated = {v.name for v in videos}
    for name in files:
        if name not in annotated:
            report.skipped.append((name, f"features without annotation ({files[name]} is not in the JSON)"))
    kept, headers = [], {}
    for video in videos:
        if video.name not in files:
            report.skipped.append((video.name, f"annotation without features (no {folder / (video.name + '.npy')})"))
            continue
        try:
            header = NpyFile.read(files[video.name], "I3D", video.name, "re-extract them")
        except PECRError as err:
            report.errors.append(str(err))
            continue
        if len(header.shape) != 2:
            report.errors.append(f"I3D features {header.path} of video {video.name} have shape {header.shape}; expected 2-D (snippets x features)")
            continue
        if header.shape[0] == 0:
            report.skipped.append((video.name, f"no snippets in {header.path} (shape {header.shape})"))
            continue
        headers[video.name] = header
        kept.append(video)
    widths = Counter(h.shape[1] for h in headers.values())
    if widths:
        report.feature_size = widths.most_common(1)[0][0]
    for video in progress_bar(kept, desc="checking features", unit="video", disable=progress is False):
        header = headers[video.name]
        if header.shape[1] != report.feature_size:
            report.errors.append(f"I3D features {header.path} of video {video.name} are {header.shape[1]} wide, "
                                 f"the other videos' {report.feature_size}; all videos need features of one width")
            continue
        try:  # every value, one video at a time (memory-mapped)
            check_finite(header.open(), "I3D", video.name, header.path)
        except PECRError as err:
            report.errors.append(str(err))
        expected = video.duration * fps / frames
        if abs(header.shape[0] - expected) > 2:
            report.warnings.append(f"{header.path}: {header.shape[0]} snippets but the duration {video.duration:g} s gives "
                                   f"{expected:.1f} at {fps:g} fps / {frames} frames; check --feature-fps / --snippet-frames")
    return kept


# ----------------------------------------------------------------------------- writing
def write_wtalc(folder: Path, videos: list[Video], classlist: list[str]) -> None:
    """The W-TALC annotation files of ``videos`` in ``folder`` (strings as bytes, as the released files)."""
    np.save(folder / "classlist.npy", np.array([c.encode() for c in classlist]))
    np.save(folder / "videoname.npy", np.array([v.name.encode() for v in videos]))
    np.save(folder / "subset.npy", np.array([v.subset.encode() for v in videos]))
    np.save(folder / "duration.npy", np.array([v.duration for v in videos], dtype=np.float64))
    np.save(folder / "segments.npy", object_array([[list(s) for s in v.segments] for v in videos]), allow_pickle=True)
    np.save(folder / "labels.npy", object_array([list(v.labels) for v in videos]), allow_pickle=True)
    np.save(folder / "labels_all.npy", object_array([list(dict.fromkeys(v.labels)) for v in videos]), allow_pickle=True)


def description_text(args, report: Report, template: dict) -> str:
    """A dataset description (YAML) for the converted data; protocol and presets from ``template``."""
    import yaml

    from options import DATASET_KEYS, PRESET_KEYS

    data = {"feature_file": str(args.features), "annotation_dir": str(args.out),
            "clip_feature_dir": str(args.clip_feature_dir or f"{str(args.features).rstrip('/')}-CLIP"),
            "clip_train_split": "train", "clip_test_split": "test", "ambiguous_file": None,
            "class_phrases": str(args.class_phrases) if args.class_phrases else None,
            "train_subset": args.train_subset or template["train_subset"], "test_subset": args.test_subset or template["test_subset"],
            "min_snippets": 0, "feature_size": report.feature_size, "feature_fps": args.feature_fps,
            "snippet_frames": args.snippet_frames}
    protocol = {k: template[k] for k in ("protocol", "tiou_thresholds")}
    presets = {k: template[k] for k in PRESET_KEYS}
    assert set(DATASET_KEYS) <= set(data) | set(protocol)
    line = lambda k, v: f"{k}: {json.dumps(v)}\n" if isinstance(v, (list, dict)) else yaml.safe_dump({k: v}, default_flow_style=False)
    dump = lambda d: "".join(line(k, v) for k, v in d.items())  # one key a line, lists and mappings inline
    return (f"# Dataset description written by tools/convert_activitynet.py from {args.json}.\n"
            f"# Train: python main.py --dataset {Path(args.out) / DESCRIPTION}\n"
            f"# CLIP features go to clip_feature_dir/<clip_train_split|clip_test_split>/<video>.npy (tools/extract_clip_features.py).\n\n"
            f"# --- data (docs/method.md §1)\n{dump(data)}\n"
            f"# --- evaluation protocol (§6), from the {args.template} description\n{dump(protocol)}\n"
            f"# --- training presets to start from (§3, §4), from the {args.template} description\n{dump(presets)}")


def write_atomically(out: Path, fill, overwrite: bool) -> None:
    """Build the folder ``out`` through ``fill(tmp_folder)`` in a temporary folder beside it, then rename it into place."""
    if out.exists() and not overwrite:
        raise PECRError(f"output folder {out} exists; pass --overwrite to replace it, or another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        fill(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            out.rename(old / out.name)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- the command
def convert(args: argparse.Namespace, progress: bool | None = None) -> Report:
    """Check everything, then write ``args.out`` (PECRError, nothing written, on bad input)."""
    data = read_json(args.json)
    source = str(args.json)
    report = Report(source)
    videos = read_videos(data, source, report, args.bad_segments)
    if args.classlist:
        classlist, class_source = read_classlist(args.classlist), str(args.classlist)
    elif taxonomy := taxonomy_classes(data):
        classlist, class_source = taxonomy, f"the taxonomy of {source}"
    else:
        classlist, class_source = sorted({label for v in videos for label in v.labels}), f"the labels of {source}"
    report.classlist = classlist
    check_classes(videos, classlist, class_source, source, report)
    if args.class_phrases:
        check_phrases(classlist, args.class_phrases, report)
    template = None
    if args.features:
        videos = match_features(videos, Path(args.features), report, args.feature_fps, args.snippet_frames, progress)
        from options import build_parser, load_description

        template = load_description(args.template, {a.dest for a in build_parser()._actions})
        present = {v.subset for v in videos}
        for flag, value in (("--train-subset", args.train_subset or template["train_subset"]),
                            ("--test-subset", args.test_subset or template["test_subset"])):
            if videos and value not in present:
                report.errors.append(f"{flag} {value!r}: no converted video is in that subset (they are in {', '.join(sorted(present))}); "
                                     f"pass {flag}")
    if not videos:
        report.errors.append(f"{source}: no video left to convert")
    report.kept = videos
    if report.errors:
        print(report.text(limit=20), file=sys.stderr)
        raise PECRError(f"{len(report.errors)} problems in the input, nothing written; first: {report.errors[0]}")

    def fill(folder: Path) -> None:
        write_wtalc(folder, videos, classlist)
        if template is not None:
            (folder / DESCRIPTION).write_text(description_text(args, report, template))
        (folder / REPORT).write_text(report.text() + "\n")

    write_atomically(Path(args.out), fill, args.overwrite)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python tools/convert_activitynet.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", required=True, help="ActivityNet-style annotation JSON (database layout)")
    p.add_argument("--features", default=None, help="folder of <video>.npy I3D features (T x F); without it, annotations only")
    p.add_argument("--out", required=True, help="W-TALC annotation folder to write (with dataset.yaml and conversion_report.txt)")
    p.add_argument("--classlist", default=None, help="class list: classlist.npy or a text file, one class a line (default: the JSON's taxonomy leaves, else its labels sorted)")
    p.add_argument("--class-phrases", dest="class_phrases", default=None, help="YAML/JSON class -> prompt phrase file to check against the classes and name in dataset.yaml")
    p.add_argument("--bad-segments", dest="bad_segments", choices=("keep", "clip", "error"), default="keep",
                   help="segments outside [0, duration] or of zero length: keep as given (reported), clip to the video (drop empty ones), or refuse")
    p.add_argument("--feature-fps", dest="feature_fps", type=float, default=25.0, help="frame rate of the feature extraction")
    p.add_argument("--snippet-frames", dest="snippet_frames", type=int, default=16, help="frames per feature row (snippet)")
    p.add_argument("--template", default="activitynet", help="dataset description whose protocol and training presets dataset.yaml starts from (name or path)")
    p.add_argument("--clip-feature-dir", dest="clip_feature_dir", default=None, help="clip_feature_dir of dataset.yaml (default: <features>-CLIP)")
    p.add_argument("--train-subset", dest="train_subset", default=None, help="training subset of dataset.yaml (default: the template's)")
    p.add_argument("--test-subset", dest="test_subset", default=None, help="test subset of dataset.yaml (default: the template's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return p


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.feature_fps <= 0 or args.snippet_frames < 1:
        raise PECRError("--feature-fps must be > 0 and --snippet-frames >= 1")
    report = convert(args)
    print(report.text(limit=20))
    print(f"wrote {args.out}" + (f"; train with: python main.py --dataset {Path(args.out) / DESCRIPTION}" if args.features else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
