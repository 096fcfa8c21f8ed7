"""Planted-signal datasets in the exact W-TALC / CO2-Net on-disk layout (docs/method.md §1.1).

    python tools/make_synthetic.py --out-root features/synthetic                       # random ground truth
    python tools/make_synthetic.py --out-root features/synthetic_thumos \\
        --annotations ../shared/data/Thumos14reduced-Annotations                        # THUMOS14-sized

    from tools.make_synthetic import generate, ensure_synthetic
    ensure_synthetic(opts, clip_dim)    # generate at opts.feature_file / annotation_dir / clip_feature_dir once

What is written: ``<out-root>/<Name>/<Name>-I3D-JOINTFeatures.npy`` (object array, one (T_i, F) float32
array per video), ``<out-root>/<Name>-Annotations/`` (classlist, videoname, subset, duration, segments,
labels, labels_all, original_fps, extracted_fps .npy; with ``--annotations`` every file of the source
folder, Ambiguous_test.txt included) and ``<out-root>/<Name>-CLIP/<split>/<video>.npy`` (T_i, D).
``synthetic.json`` in the annotation folder is written last and marks a complete dataset.

The planted signal (all vectors non-negative on the I3D side; norms fixed, so the difficulty does
not depend on the feature width). With noise std sigma of the half-normal background noise:
  I3D(t) = |N(0,1)| noise + scene_v * drift(t) + context_v + sum_c env_c(t) * P_c (jittered per video)
           + max_c env_c(t) * A
  * P_c: class prototype, separate sparse RGB (columns [0, F/2)) and flow ([F/2, F)) parts with
    ||P_c|| = snr * sigma, snr = 16 * 16^-difficulty (16 at 0, 4 at 0.5, 1 at 1);
  * A: generic "actionness" prototype (0.75 ||P||); scene_v: per-video background (mostly RGB)
    whose amplitude drifts by +-25 % over time; context_v = 0.5 * difficulty * RGB part of the
    video's class prototypes in every snippet (scene context makes localisation harder);
  * env_c(t): soft segment envelope, a linear ramp of 1 + 4 * difficulty snippets centred on each
    boundary, times a per-segment strength in [0.6, 1].
  CLIP(t) = 0.8 g_v + sum_c env_c(t) U_c + 0.5 * difficulty * sum_c U_c + 0.25 * 16^difficulty N(0,1)
  with U_c a Gaussian class direction and g_v a per-video scene direction.
Everything is drawn from ``seed`` (one independent stream per video): same seed, same bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.annotations import object_array  # noqa: E402
from utils.errors import PECRError  # noqa: E402
from utils.io import atomic_save, atomic_write_bytes, atomic_write_text  # noqa: E402
from utils.progress import progress as progress_bar  # noqa: E402

FORMAT_VERSION = 1
MARKER = "synthetic.json"  # written last: its presence means the dataset is complete
HALF_NORMAL_STD = float(np.sqrt(1 - 2 / np.pi))
CLASS_NAMES = ("JumpingJacks", "RopeClimbing", "PushUps", "JugglingBalls", "Rowing", "SkyDiving", "Fencing",
               "Surfing", "TaiChi", "Archery", "Bowling", "Boxing", "Drumming", "Skiing", "Kayaking", "HulaHoop",
               "WallPushups", "Lunges", "BlowingCandles", "Typing")


# ----------------------------------------------------------------------------- ground truth
def random_ground_truth(rng: np.random.Generator, num_videos: int, num_classes: int, train_subset: str, test_subset: str,
                        fps: float = 25.0, frames: int = 16) -> dict:
    """Random videos: lengths 60..200 snippets, 1..4 non-overlapping segments of 5..40 snippets, one or
    two classes per video. Videos alternate train/test; primary classes cycle so both splits see every class."""
    if num_videos < 2 or num_classes < 1:
        raise PECRError(f"synthetic data needs at least 2 videos and 1 class (got {num_videos} videos, {num_classes} classes); raise --synthetic-videos / --synthetic-classes")
    sec = frames / fps
    classlist = [CLASS_NAMES[c] if c < len(CLASS_NAMES) else f"SyntheticAction{c}" for c in range(num_classes)]
    names, subsets, durations, segments, labels, labels_all = [], [], [], [], [], []
    counters = {train_subset: 0, test_subset: 0}
    primary = rng.permutation(num_classes)[(np.arange(num_videos) // 2) % num_classes]
    for i in range(num_videos):
        subset = train_subset if i % 2 == 0 else test_subset
        counters[subset] += 1
        names.append(f"video_{subset}_{counters[subset]:07d}")
        subsets.append(subset)
        T = int(rng.integers(60, 201))
        classes = [int(primary[i])]
        if num_classes > 1 and rng.random() < 0.2:
            classes.append(int(rng.choice([c for c in range(num_classes) if c != classes[0]])))
        k = max(len(classes), int(rng.integers(1, 5)))
        slot = T / k
        seg_cls = classes + [classes[j] for j in rng.integers(len(classes), size=k - len(classes))]
        segs = []
        for j in range(k):
            length = int(min(rng.integers(5, 41), slot - 2))
            start = j * slot + 1 + rng.random() * (slot - 2 - length)
            segs.append([round(start * sec, 2), round((start + length) * sec, 2)])
        order = np.argsort(rng.random(k))  # classes in random segment order
        seg_cls = [seg_cls[j] for j in order]
        durations.append((T + 0.5) * sec)  # floor(duration * fps / frames) == T
        segments.append(segs)
        labels.append([classlist[c] for c in seg_cls])
        labels_all.append(list(dict.fromkeys(classlist[c] for c in seg_cls)))
    return {
        "classlist": classlist, "video_names": names, "subsets": subsets, "segments": segments, "labels": labels,
        "labels_all": labels_all, "durations": np.array(durations, dtype=np.float64),
        "files": {
            "classlist.npy": np.array([c.encode() for c in classlist]),
            "videoname.npy": np.array([n.encode() for n in names]),
            "subset.npy": np.array([s.encode() for s in subsets]),
            "duration.npy": np.array(durations, dtype=np.float64)[:, None],
            "segments.npy": object_array(segments),
            "labels.npy": object_array(labels),
            "labels_all.npy": object_array(labels_all),
            "original_fps.npy": np.full(num_videos, fps, dtype=np.float64),
            "extracted_fps.npy": np.full(num_videos, int(round(fps)), dtype=np.int64),
        },
    }


def real_ground_truth(annotation_dir: str | Path) -> dict:
    """Ground truth of a real annotation folder; every file of the folder is copied byte for byte."""
    from dataset import load_annotations

    folder = Path(annotation_dir)
    if not folder.is_dir():
        raise PECRError(f"annotation folder {folder} not found; point --annotations / --synthetic-annotations at a W-TALC annotation folder (e.g. ../shared/data/Thumos14reduced-Annotations)")
    ann = load_annotations(folder)
    return {
        "classlist": ann["classlist"], "video_names": ann["video_names"], "subsets": ann["subsets"],
        "segments": ann["segments"], "labels": ann["segment_labels"], "labels_all": ann["labels_all"],
        "durations": ann["durations"],
        "files": {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".") and p.name != MARKER},
    }


# ----------------------------------------------------------------------------- features
def _sparse(rng: np.random.Generator, n: int, dim: int, density: float) -> np.ndarray:
    """(n, dim) non-negative sparse vectors with at least one non-zero entry each."""
    mask = rng.random((n, dim)) < density
    mask[np.arange(n), rng.integers(dim, size=n)] = True
    return rng.standard_exponential((n, dim)) * mask


def _with_norm(x: np.ndarray, norm: float) -> np.ndarray:
    return x * (norm / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12))


def prototypes(rng: np.random.Generator, num_classes: int, feature_size: int, clip_dim: int, difficulty: float) -> dict:
    """Class prototypes P (C,F), actionness A (F,), scenes S (8,F), CLIP class directions U (C,D)."""
    h = feature_size // 2
    snr = 16.0 * 16.0 ** -difficulty
    norm = snr * HALF_NORMAL_STD
    P = np.concatenate([_with_norm(_sparse(rng, num_classes, h, 0.25), norm / np.sqrt(2)),
                        _with_norm(_sparse(rng, num_classes, feature_size - h, 0.25), norm / np.sqrt(2))], axis=1)
    A = _with_norm(_sparse(rng, 1, feature_size, 0.25)[0], 0.75 * norm)
    S = rng.standard_exponential((8, feature_size))
    S[:, h:] *= 0.3  # scenes live mostly in the RGB stream
    return {"P": P, "A": A, "S": S, "U": rng.standard_normal((num_classes, clip_dim)), "h": h}


def envelopes(length: int, segments: np.ndarray, strength: np.ndarray, ramp: float) -> np.ndarray:
    """(T, k) soft segment envelopes: snippet t (centre t + 0.5) against segment [a, b) in snippet units,
    clip(min(c - a, b - c) / ramp + 0.5, 0, 1) * strength (ramp 0 = hard boxes)."""
    c = np.arange(length, dtype=np.float64)[:, None] + 0.5
    inside = np.minimum(c - segments[:, 0], segments[:, 1] - c)
    soft = inside / ramp + 0.5 if ramp > 0 else (inside > 0).astype(np.float64)
    return np.clip(soft, 0.0, 1.0) * strength


def video_features(rng: np.random.Generator, length: int, segments: np.ndarray, classes: np.ndarray, protos: dict,
                   difficulty: float) -> tuple[np.ndarray, np.ndarray]:
    """One video: segments (k,2) in snippet units, classes (k,) -> I3D (T,F) and CLIP (T,D) float32."""
    P, A, S, U, h = protos["P"], protos["A"], protos["S"], protos["U"], protos["h"]
    F, D = P.shape[1], U.shape[1]
    k = len(classes)
    env = envelopes(length, segments, rng.uniform(0.6, 1.0, k), 1.0 + 4.0 * difficulty)  # (T,k)
    own = np.unique(classes)
    onehot = (classes[:, None] == own[None, :]).astype(np.float64)  # (k, Cv)
    env_c = (env[:, :, None] * onehot[None]).max(axis=1) if k else np.zeros((length, 0))  # (T, Cv)
    Pv = P[own] * rng.uniform(0.7, 1.3, (len(own), F))

    scene = _with_norm(rng.dirichlet(np.full(len(S), 0.5)) @ S, 4.0 * HALF_NORMAL_STD)
    period, phase = rng.uniform(30, 150), rng.uniform(0, 2 * np.pi)
    drift = 1.0 + 0.25 * np.sin(2 * np.pi * np.arange(length) / period + phase)
    context = 0.5 * difficulty * P[own, :h].sum(axis=0)
    x = np.abs(rng.standard_normal((length, F), dtype=np.float32))
    x += (drift[:, None] * scene[None]).astype(np.float32)
    x[:, :h] += context.astype(np.float32)
    x += (env_c @ Pv + env_c.max(axis=1, initial=0.0)[:, None] * A[None]).astype(np.float32)

    g = rng.standard_normal(D)
    z = rng.standard_normal((length, D), dtype=np.float32) * np.float32(0.25 * 16.0 ** difficulty)
    z += (0.8 * g + 0.5 * difficulty * U[own].sum(axis=0) + env_c @ U[own]).astype(np.float32)
    return x, z


# ----------------------------------------------------------------------------- writing
def _infer_subsets(subsets: list[str]) -> tuple[str, str]:
    present = set(subsets)
    for train, test in (("validation", "test"), ("training", "validation")):
        if {train, test} <= present:
            return train, test
    raise PECRError(f"cannot tell the train/test subsets from subset.npy values {sorted(present)}; pass train_subset / test_subset")


def generate(feature_file: str | Path, annotation_dir: str | Path, clip_feature_dir: str | Path, *,
             annotations: str | Path | None = None, num_videos: int = 120, num_classes: int = 5,
             feature_size: int = 256, clip_dim: int = 64, difficulty: float = 0.5, seed: int = 0,
             train_subset: str | None = None, test_subset: str | None = None,
             train_split: str = "train", test_split: str = "test", fps: float = 25.0, snippet_frames: int = 16,
             progress: bool | None = None) -> dict:
    """Write a complete synthetic dataset; returns the parameters recorded in the completion marker.

    ``annotations``: a real W-TALC annotation folder whose videos, durations, segments, subsets and
    classes are kept (T_i = floor(duration * fps / snippet_frames)); None: random ground truth of
    ``num_videos`` videos and ``num_classes`` classes (subsets ``train_subset`` / ``test_subset``,
    default 'validation' / 'test'). CLIP files of the train (test) subset go to
    ``<clip_feature_dir>/<train_split>`` (``<test_split>``); videos of other subsets get none.

    Safe to interrupt and never destructive: everything is checked first, written next to the
    targets (``*.partial``) and moved into place only when complete; a previous dataset at the
    targets is replaced only when it is synthetic data whose marker names exactly these three paths.
    """
    if feature_size < 2 or clip_dim < 1:
        raise PECRError(f"synthetic features need --feature-size >= 2 (RGB + flow halves) and a CLIP width >= 1 (got {feature_size}, {clip_dim})")
    if not 0.0 <= difficulty <= 1.0:
        raise PECRError(f"--synthetic-difficulty must lie in [0, 1], got {difficulty}")
    request = _request(feature_file, annotation_dir, clip_feature_dir, annotations, num_videos, num_classes, feature_size,
                       clip_dim, difficulty, seed, train_subset, test_subset, train_split, test_split, fps, snippet_frames)
    gt_seed, proto_seed, video_seed = np.random.SeedSequence(seed).spawn(3)
    if annotations is None:
        train_subset, test_subset = train_subset or "validation", test_subset or "test"
        gt = random_ground_truth(np.random.default_rng(gt_seed), num_videos, num_classes, train_subset, test_subset, fps, snippet_frames)
    else:
        gt = real_ground_truth(annotations)
        if train_subset is None or test_subset is None:
            train_subset, test_subset = _infer_subsets(gt["subsets"])
    record = {"request": request, "num_videos": len(gt["video_names"]), "num_classes": len(gt["classlist"]),
              "train_subset": train_subset, "test_subset": test_subset}
    targets = {"feature_file": Path(feature_file), "annotation_dir": Path(annotation_dir),
               "clip_feature_dir": Path(clip_feature_dir)}
    check_replaceable(targets)
    staged = {key: _sibling(path, STAGED) for key, path in targets.items()}
    for path in staged.values():  # leftovers of an interrupted run (ours by name)
        _remove(path)

    ann_dir, clip_dir = staged["annotation_dir"], staged["clip_feature_dir"]
    ann_dir.mkdir(parents=True)
    for name, content in gt["files"].items():
        if isinstance(content, bytes):
            atomic_write_bytes(ann_dir / name, content)
        else:
            atomic_save(ann_dir / name, lambda f, a=content: np.save(f, a, allow_pickle=True))

    protos = prototypes(np.random.default_rng(proto_seed), len(gt["classlist"]), feature_size, clip_dim, difficulty)
    class_index = {c: i for i, c in enumerate(gt["classlist"])}
    split = {train_subset: clip_dir / train_split, test_subset: clip_dir / test_split}
    for folder in split.values():
        folder.mkdir(parents=True, exist_ok=True)
    snippets_per_sec = fps / snippet_frames
    n = len(gt["video_names"])
    features = np.empty(n, dtype=object)
    streams = video_seed.spawn(n)
    show = progress if progress is not None else n > 200
    for v in progress_bar(range(n), desc="synthetic videos", disable=not show, leave=False):
        length = max(1, int(np.floor(gt["durations"][v] * snippets_per_sec)))
        segs = np.asarray(gt["segments"][v], dtype=np.float64).reshape(-1, 2) * snippets_per_sec
        classes = np.array([class_index[c] for c in gt["labels"][v]], dtype=np.int64)
        x, z = video_features(np.random.default_rng(streams[v]), length, segs, classes, protos, difficulty)
        features[v] = x
        if gt["subsets"][v] in split:
            atomic_save(split[gt["subsets"][v]] / f"{gt['video_names'][v]}.npy", lambda f, a=z: np.save(f, a))
    atomic_save(staged["feature_file"], lambda f: np.save(f, features, allow_pickle=True))
    atomic_write_text(ann_dir / MARKER, json.dumps(record, indent=1, sort_keys=True) + "\n")
    _move_into_place(staged, targets)
    return record


FLAGS = {"feature_file": "--feature-file", "annotation_dir": "--annotation-dir", "clip_feature_dir": "--clip-feature-dir"}
STAGED, RETIRED = ".partial", ".replaced"  # suffixes: a dataset being written; the one it replaces


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def check_replaceable(targets: dict[str, Path]) -> None:
    """PECRError unless everything that exists at ``targets`` (feature_file, annotation_dir,
    clip_feature_dir) is one synthetic dataset whose marker records exactly these three paths."""
    ann = targets["annotation_dir"]
    record = _read_record(ann / MARKER) if (ann / MARKER).is_file() else None
    recorded = (record or {}).get("request", {})
    wanted = {key: str(path.resolve()) for key, path in targets.items()}
    if record is not None and any(recorded.get(key) != wanted[key] for key in targets):
        made = ", ".join(f"{FLAGS[k]} {recorded.get(k)}" for k in FLAGS)
        named = ", ".join(f"{FLAGS[k]} {wanted[k]}" for k in FLAGS if recorded.get(k) != wanted[k])
        raise PECRError(f"{ann} holds the synthetic dataset made with {made}; the current options name {named}, so it "
                        f"is left alone: point {FLAGS['annotation_dir']} elsewhere too, or remove {ann}")
    for key, path in targets.items():
        taken = path.is_file() or (path.is_dir() and any(path.iterdir()))
        if taken and record is None:
            raise PECRError(f"{path} exists but is not synthetic data written there by tools/make_synthetic.py (no {MARKER} "
                            f"in {ann} recording it); remove it or point {FLAGS[key]} elsewhere")


def _move_into_place(staged: dict[str, Path], targets: dict[str, Path]) -> None:
    """Swap each complete staged path in; the annotation folder (holding the marker) goes last."""
    retired = []
    for key in ("clip_feature_dir", "feature_file", "annotation_dir"):
        target = targets[key]
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            old = _sibling(target, RETIRED)
            _remove(old)
            os.replace(target, old)
            retired.append(old)
        os.replace(staged[key], target)
    for old in retired:
        _remove(old)


def _request(feature_file, annotation_dir, clip_feature_dir, annotations, num_videos, num_classes, feature_size, clip_dim,
             difficulty, seed, train_subset, test_subset, train_split, test_split, fps, snippet_frames) -> dict:
    """The generation parameters as recorded in the marker (absolute paths; sizes only for random data)."""
    def absolute(p):
        return None if p is None else str(Path(p).resolve())
    real = annotations is not None
    if real and absolute(annotations) == absolute(annotation_dir):
        raise PECRError(f"the synthetic dataset's annotation folder {annotation_dir} is its ground-truth source; "
                        "point --annotation-dir elsewhere than --synthetic-annotations / --annotations")
    return {
        "version": FORMAT_VERSION, "feature_file": absolute(feature_file), "annotation_dir": absolute(annotation_dir),
        "clip_feature_dir": absolute(clip_feature_dir), "annotations": absolute(annotations),
        "num_videos": None if real else int(num_videos), "num_classes": None if real else int(num_classes),
        "feature_size": int(feature_size), "clip_dim": int(clip_dim), "difficulty": float(difficulty), "seed": int(seed),
        "train_subset": train_subset, "test_subset": test_subset, "train_split": train_split, "test_split": test_split,
        "fps": float(fps), "snippet_frames": int(snippet_frames),
    }


def _read_record(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _options_request(opts, clip_dim: int) -> dict:
    return dict(
        feature_file=opts.feature_file, annotation_dir=opts.annotation_dir, clip_feature_dir=opts.clip_feature_dir,
        annotations=opts.synthetic_annotations, num_videos=opts.synthetic_videos, num_classes=opts.synthetic_classes,
        feature_size=opts.feature_size, clip_dim=int(clip_dim), difficulty=opts.synthetic_difficulty, seed=opts.synthetic_seed,
        train_subset=opts.train_subset, test_subset=opts.test_subset, train_split=opts.clip_train_split,
        test_split=opts.clip_test_split, fps=opts.feature_fps, snippet_frames=opts.snippet_frames,
    )


def ensure_synthetic(opts, clip_dim: int, progress: bool | None = None) -> bool:
    """Generate the synthetic dataset at ``opts.feature_file`` / ``annotation_dir`` / ``clip_feature_dir``
    (sizes from ``opts.synthetic_*``, ``opts.feature_size`` and ``clip_dim``) unless a complete one made
    with the same parameters is there. Returns True when it generated.

    Only a synthetic dataset whose marker names exactly these three paths is ever replaced (see
    :func:`generate`); anything else there is a PECRError, and nothing is touched before the new
    dataset is complete.
    """
    kwargs = _options_request(opts, clip_dim)
    ann_dir = Path(opts.annotation_dir)
    done = _read_record(ann_dir / MARKER) if (ann_dir / MARKER).is_file() else None
    if (done is not None and done.get("request") == _request(**kwargs) and Path(opts.feature_file).is_file()
            and Path(opts.clip_feature_dir).is_dir()):
        return False
    generate(progress=progress, **kwargs)
    return True


# ----------------------------------------------------------------------------- CLI
def dataset_paths(out_root: str | Path, name: str) -> dict:
    """The docs/method.md §1.1 paths of dataset ``name`` under ``out_root``."""
    root = Path(out_root)
    return {"feature_file": root / name / f"{name}-I3D-JOINTFeatures.npy", "annotation_dir": root / f"{name}-Annotations",
            "clip_feature_dir": root / f"{name}-CLIP"}


def main(argv: list[str] | None = None) -> dict:
    from options import build_parser

    defaults = build_parser()
    p = argparse.ArgumentParser(description="Write a synthetic W-TALC dataset (I3D-like + CLIP-like features, annotations).")
    p.add_argument("--out-root", required=True, help="folder receiving <Name>/, <Name>-Annotations/, <Name>-CLIP/")
    p.add_argument("--annotations", default=None, help="real annotation folder whose ground truth to keep (default: random)")
    p.add_argument("--name", default=None, help="dataset name (default: the annotation folder's name without -Annotations, or Synthetic)")
    p.add_argument("--videos", type=int, default=defaults.get_default("synthetic_videos"), help="random videos")
    p.add_argument("--classes", type=int, default=defaults.get_default("synthetic_classes"), help="random classes")
    p.add_argument("--feature-size", type=int, default=None, help="I3D width (default 2048 with --annotations, else 256)")
    p.add_argument("--clip-dim", type=int, default=None, help="CLIP width (default 1024 with --annotations, else 64)")
    p.add_argument("--difficulty", type=float, default=defaults.get_default("synthetic_difficulty"), help="0 easy .. 1 hard")
    p.add_argument("--seed", type=int, default=defaults.get_default("synthetic_seed"), help="seed of the generated data")
    p.add_argument("--train-split", default="train", help="CLIP sub-folder of the training videos")
    p.add_argument("--test-split", default="test", help="CLIP sub-folder of the test videos")
    args = p.parse_args(argv)
    real = args.annotations is not None
    name = args.name or (Path(args.annotations).name.removesuffix("-Annotations") if real else "Synthetic")
    paths = dataset_paths(args.out_root, name)
    try:
        params = generate(**paths, annotations=args.annotations, num_videos=args.videos, num_classes=args.classes,
                          feature_size=args.feature_size or (2048 if real else 256), clip_dim=args.clip_dim or (1024 if real else 64),
                          difficulty=args.difficulty, seed=args.seed, train_split=args.train_split, test_split=args.test_split)
    except PECRError as err:
        sys.exit(f"error: {err}")
    print(f"wrote {params['num_videos']} videos, {params['num_classes']} classes; use: --feature-file {paths['feature_file']} "
          f"--annotation-dir {paths['annotation_dir']} --clip-feature-dir {paths['clip_feature_dir']} --feature-size {params['request']['feature_size']} "
          f"--train-subset {params['train_subset']} --test-subset {params['test_subset']}")
    return params


if __name__ == "__main__":
    main()
