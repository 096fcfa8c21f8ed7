"""W-TALC / CO2-Net data: I3D + CLIP snippet features, video labels, training batches (SPEC §1).

    data = WTALDataset(opts)                     # reads and validates everything once
    batch = data.train_batch(rng, device)        # TrainBatch: features (B,L,F), clip_features (B,L,D), labels (B,C)
    for video in data.test_videos(device):       # TestVideo: features (1,T,F), clip_features (1,T,D), labels (C,)
        ...

On-disk layout (SPEC §1.1): ``opts.feature_file`` is an object ``.npy`` array holding one
``(T_i, feature_size)`` array per video, in the order of ``<annotation_dir>/videoname.npy``;
``<clip_feature_dir>/<split>/<video>.npy`` holds the ``(T_i, D_clip)`` CLIP features of one video
(``split`` = ``opts.clip_train_split`` for training videos, ``opts.clip_test_split`` for test videos).

All features of the used videos are validated once and kept in two contiguous float32 arrays
(rows of all videos stacked); batches are gathered from them with one fancy index, so nothing is
re-read from disk during training.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from utils.errors import PECRError
from utils.progress import progress

README = "features/README.md"
REQUIRED_ANNOTATIONS = ("classlist", "videoname", "subset", "duration", "segments", "labels", "labels_all")
OPTIONAL_ANNOTATIONS = ("original_fps", "extracted_fps")
_PHRASE_EXCEPTIONS = {"Shotput": "shot put"}  # THUMOS14 writes one word for the two-word sport


def class_phrase(name: str) -> str:
    """Class name -> lower-case words for the text prompt (SPEC §1.2).

    ActivityNet names already contain spaces and are lower-cased ("Bathing dog" -> "bathing dog");
    CamelCase THUMOS14 names are split at case changes ("CleanAndJerk" -> "clean and jerk"),
    with the single exception Shotput -> "shot put".
    """
    name = name.strip()
    if name in _PHRASE_EXCEPTIONS:
        return _PHRASE_EXCEPTIONS[name]
    if " " not in name:
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)  # baseballPitch | BaseballPitch -> Baseball Pitch
        name = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", name)  # HTMLParser -> HTML Parser
    return " ".join(name.lower().split())


def random_perturb(rng: np.random.Generator, lengths: np.ndarray, seqlen: int) -> np.ndarray:
    """Random perturbation (SPEC §1.3): ``seqlen`` snippet indices per video, (B,) -> (B, seqlen) int64.

    [0, T) is split into L = ``seqlen`` bins with edges i*T/L. As in the release, bin i draws one
    integer uniformly from the snippets it touches, [floor(i*T/L), floor((i+1)*T/L)] (both ends
    included; the last bin ends at T-1), or takes floor(i*T/L) when both floors coincide. The
    indices are non-decreasing, repeat when T < L, and are the identity when T == L.
    """
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1, 1)
    if (lengths < 1).any():
        raise ValueError("random_perturb needs videos with at least one snippet")
    i = np.arange(seqlen, dtype=np.int64)
    low = i * lengths // seqlen
    high = np.minimum((i + 1) * lengths // seqlen, lengths - 1)  # inclusive; caps the last bin at T-1
    idx = rng.integers(low, np.maximum(high, low) + 1)
    return np.where(lengths == seqlen, i, idx)


@dataclass
class TrainBatch:
    """One training batch: features (B,L,F), clip_features (B,L,D), labels (B,C) float32; indices (B,) video ids."""

    features: torch.Tensor
    clip_features: torch.Tensor
    labels: torch.Tensor
    indices: np.ndarray


@dataclass
class TestVideo:
    """One whole test video: features (1,T,F) on the requested device; clip_features (1,T,D) and
    labels (C,) on the CPU (inference needs only the features). All float32."""

    index: int
    name: str
    features: torch.Tensor
    clip_features: torch.Tensor
    labels: torch.Tensor


def _decode(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _names(value) -> list[str]:
    """A per-video list of class names (list / tuple / array of str or bytes, or one name)."""
    if isinstance(value, (str, bytes)):
        return [_decode(value)]
    return [_decode(v) for v in np.asarray(value, dtype=object).reshape(-1)]


def _tensor(array: np.ndarray, device) -> torch.Tensor:
    """A fresh array (not a view of the dataset's storage) -> tensor on ``device``."""
    tensor = torch.from_numpy(array)
    return tensor if device is None else tensor.to(device)


def load_annotations(annotation_dir: str | Path) -> dict:
    """Read and check a W-TALC annotation folder.

    Returns a dict: ``classlist`` list[str] (C), ``video_names`` / ``subsets`` list[str] (N),
    ``durations`` (N,) float64 seconds, ``segments`` list of (k_i, 2) float64 seconds,
    ``segment_labels`` list[list[str]] (one per segment), ``labels_all`` list[list[str]],
    and ``original_fps`` / ``extracted_fps`` (N,) arrays or None when the files are absent.
    """
    folder = Path(annotation_dir)
    if not folder.is_dir():
        raise PECRError(f"annotation folder {folder} not found; place the W-TALC annotations there (see {README}) or pass --annotation-dir")
    raw = {}
    for key in REQUIRED_ANNOTATIONS + OPTIONAL_ANNOTATIONS:
        path = folder / f"{key}.npy"
        if not path.is_file():
            if key in OPTIONAL_ANNOTATIONS:
                continue
            raise PECRError(f"annotation file {path} not found; the annotation folder needs {', '.join(k + '.npy' for k in REQUIRED_ANNOTATIONS)} (see {README})")
        try:
            raw[key] = np.load(path, allow_pickle=True)
        except Exception as err:  # corrupt / truncated file
            raise PECRError(f"cannot read annotation file {path} ({type(err).__name__}: {err}); replace it with the release's file".replace("\n", " ")) from None
    n = len(raw["videoname"])
    for key, value in raw.items():
        if key != "classlist" and len(value) != n:
            raise PECRError(f"annotation file {folder / (key + '.npy')} has {len(value)} entries but videoname.npy lists {n} videos; both must come from the same release")
    classlist = [_decode(c) for c in raw["classlist"].reshape(-1)]
    video_names = [_decode(v) for v in raw["videoname"].reshape(-1)]
    if len(set(video_names)) != n:
        dup = next(v for v in video_names if video_names.count(v) > 1)
        raise PECRError(f"annotation file {folder / 'videoname.npy'} lists video {dup} twice; video names must be unique")
    segments = []
    for name, seg in zip(video_names, raw["segments"]):
        try:
            segments.append(np.asarray(seg, dtype=np.float64).reshape(-1, 2))
        except ValueError:
            raise PECRError(f"annotation file {folder / 'segments.npy'}: segments of video {name} are not [start, end] pairs in seconds") from None
    segment_labels = [_names(x) for x in raw["labels"]]
    for name, seg, lab in zip(video_names, segments, segment_labels):
        if len(seg) != len(lab):
            raise PECRError(f"annotation folder {folder}: video {name} has {len(seg)} segments in segments.npy but {len(lab)} labels in labels.npy; they must match one to one")
    return {
        "classlist": classlist,
        "video_names": video_names,
        "subsets": [_decode(s) for s in raw["subset"].reshape(-1)],
        "durations": np.asarray(raw["duration"], dtype=np.float64).reshape(-1),
        "segments": segments,
        "segment_labels": segment_labels,
        "labels_all": [_names(x) for x in raw["labels_all"]],
        "original_fps": raw.get("original_fps"),
        "extracted_fps": raw.get("extracted_fps"),
    }


def multi_hot(labels_all: list[list[str]], classlist: list[str], where: str, video_names: list[str]) -> np.ndarray:
    """(N, C) float32 multi-hot video labels; a class missing from ``classlist`` is a PECRError."""
    index = {c: i for i, c in enumerate(classlist)}
    labels = np.zeros((len(labels_all), len(classlist)), dtype=np.float32)
    for v, names in enumerate(labels_all):
        for name in names:
            if name not in index:
                raise PECRError(f"{where}: class {name!r} of video {video_names[v]} is not in classlist.npy; add it to classlist.npy or fix the labels")
            labels[v, index[name]] = 1.0
    return labels


class WTALDataset:
    """Everything PECR reads, loaded and validated once (SPEC §1).

    Attributes: ``classlist`` / ``class_phrases`` (C), ``num_classes``, ``feature_size`` (F),
    ``clip_dim`` (D), ``video_names`` (N, annotation order), ``subsets``, ``durations`` (N,),
    ``segments`` / ``segment_labels`` (per video, seconds), ``labels`` (N, C) float32,
    ``train_indices`` / ``test_indices`` (int64 video ids), ``lengths`` (N,) usable snippets
    (0 for videos that are not loaded).
    """

    def __init__(self, opts, clip_dim: int | None = None, progress: bool | None = None):
        self.opts = opts
        self.annotation_dir = Path(opts.annotation_dir)
        ann = load_annotations(self.annotation_dir)
        self.classlist: list[str] = ann["classlist"]
        self.class_phrases = [class_phrase(c) for c in self.classlist]
        self.num_classes = len(self.classlist)
        self.video_names: list[str] = ann["video_names"]
        self.subsets: list[str] = ann["subsets"]
        self.durations: np.ndarray = ann["durations"]
        self.segments = ann["segments"]
        self.segment_labels = ann["segment_labels"]
        self.original_fps, self.extracted_fps = ann["original_fps"], ann["extracted_fps"]
        where = f"annotation folder {self.annotation_dir}"
        self.labels = multi_hot(ann["labels_all"], self.classlist, f"{where} (labels_all.npy)", self.video_names)
        multi_hot(self.segment_labels, self.classlist, f"{where} (labels.npy)", self.video_names)  # validation only
        self.feature_size = int(opts.feature_size)
        self.clip_dim = clip_dim
        self.progress = progress

        subsets = np.array(self.subsets)
        for role, name, flag in (("training", opts.train_subset, "--train-subset"), ("test", opts.test_subset, "--test-subset")):
            if not (subsets == name).any():
                raise PECRError(f"{where}: no video of subset {name!r} in subset.npy (it has {', '.join(sorted(set(self.subsets)))}); set {flag} to the {role} subset")
        train = np.flatnonzero(subsets == opts.train_subset)
        test = np.flatnonzero(subsets == opts.test_subset)
        self._load_features(train, test)

        self._class_videos = [self.train_indices[self.labels[self.train_indices, c] > 0] for c in range(self.num_classes)]
        self._pair_classes = np.array([c for c, v in enumerate(self._class_videos) if len(v) >= 2], dtype=np.int64)

    # ------------------------------------------------------------------ loading
    def _load_features(self, train: np.ndarray, test: np.ndarray) -> None:
        """Validate the I3D and CLIP features of the train/test videos and stack them (rows of all videos)."""
        opts, n = self.opts, len(self.video_names)
        videos = self._read_feature_file(Path(opts.feature_file), n)
        used = np.union1d(train, test)
        i3d_len = np.zeros(n, dtype=np.int64)
        for v in used:
            videos[v] = self._check_i3d(videos[v], v, opts.feature_file)
            i3d_len[v] = len(videos[v])
        min_len = max(1, int(opts.min_snippets))
        keep = self._keep(used[i3d_len[used] >= min_len], train, test)

        split = {int(v): opts.clip_train_split for v in train} | {int(v): opts.clip_test_split for v in test}
        clip_path = dict(zip(keep.tolist(), self._clip_paths(keep, split)))
        clip_len = i3d_len.copy()  # videos already too short keep their I3D length
        for v in keep:
            clip_len[v] = self._clip_header(clip_path[v], self.video_names[v])
        mismatched = keep[i3d_len[keep] != clip_len[keep]]
        if mismatched.size:
            worst = int(np.abs(i3d_len[mismatched] - clip_len[mismatched]).max())
            warnings.warn(f"{mismatched.size} of {len(keep)} videos have I3D ({opts.feature_file}) and CLIP ({opts.clip_feature_dir}) features "
                          f"of different lengths (by up to {worst} snippets): {self._some(mismatched)}; each is truncated to the "
                          "shorter of the two", stacklevel=3)
        lengths = np.minimum(i3d_len, clip_len)
        keep = self._keep(keep[lengths[keep] >= min_len], train, test)
        empty = used[lengths[used] == 0]
        if empty.size:
            warnings.warn(f"{empty.size} videos have no snippet in {opts.feature_file} or their CLIP features and are left out: "
                          f"{self._some(empty)}; re-extract their features", stacklevel=3)
        short = np.setdiff1d(used[lengths[used] > 0], keep)
        if short.size:
            warnings.warn(f"{short.size} of {len(used)} videos have fewer than --min-snippets {min_len} snippets and are left "
                          f"out: {self._some(short)}", stacklevel=3)
        self.lengths = np.zeros(n, dtype=np.int64)
        self.lengths[keep] = lengths[keep]
        self.train_indices = np.intersect1d(train, keep)
        self.test_indices = np.intersect1d(test, keep)

        self._offsets = np.full(n, -1, dtype=np.int64)
        self._offsets[keep] = np.cumsum(self.lengths[keep]) - self.lengths[keep]
        total = int(self.lengths.sum())
        self._features = np.empty((total, self.feature_size), dtype=np.float32)
        for v in keep:
            o, t = self._offsets[v], self.lengths[v]
            self._features[o:o + t] = videos[v][:t]
            videos[v] = None  # release the loaded copy as we go
        self._clip = np.empty((total, self.clip_dim), dtype=np.float32)
        for v in self._bar(keep, "reading CLIP features"):
            o, t = self._offsets[v], self.lengths[v]
            self._read_clip(clip_path[int(v)], self._clip[o:o + t], self.video_names[v])

    def _some(self, videos: np.ndarray, shown: int = 5) -> str:
        """The names of the first ``shown`` of ``videos`` (ids), and how many more."""
        names = ", ".join(self.video_names[v] for v in videos[:shown])
        return names + (f" and {len(videos) - shown} more" if len(videos) > shown else "")

    def _keep(self, keep: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        for role, ids in (("training", train), ("test", test)):
            if not np.isin(ids, keep).any():
                raise PECRError(f"no {role} video has at least {max(1, self.opts.min_snippets)} snippets in {self.opts.feature_file} "
                                f"(and its CLIP features); lower --min-snippets or check the features")
        return keep

    def _bar(self, items, desc: str):
        """tqdm bar when asked (progress=True) or, by default, for many files on a terminal."""
        if self.progress is False or (self.progress is None and len(items) <= 500):
            return items
        return progress(items, desc=desc, leave=False)

    def _read_feature_file(self, path: Path, n: int) -> list:
        if not path.is_file():
            raise PECRError(f"I3D feature file {path} not found; download it as described in {README} or pass --feature-file")
        try:
            array = np.load(path, allow_pickle=True)
        except Exception as err:
            raise PECRError(f"cannot read I3D feature file {path} ({type(err).__name__}: {err}); re-download it (see {README})".replace("\n", " ")) from None
        if array.dtype == object and array.ndim == 1:
            videos = list(array)
        elif array.dtype != object and array.ndim == 3:  # np.save of equal-length videos stacks them
            videos = list(array)
        else:
            raise PECRError(f"I3D feature file {path} holds a {array.dtype} array of shape {array.shape}; expected an object array of per-video (snippets x {self.feature_size}) arrays")
        del array
        if len(videos) != n:
            raise PECRError(f"I3D feature file {path} holds {len(videos)} videos but {self.annotation_dir / 'videoname.npy'} lists {n}; "
                            "use the feature file and annotation folder of the same release")
        return videos

    def _check_i3d(self, x, v: int, path) -> np.ndarray:
        name = self.video_names[v]
        try:
            x = np.asarray(x)
        except ValueError:
            x = np.asarray(x, dtype=object)
        if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
            raise PECRError(f"I3D features of video {name} in {path} have shape {x.shape} ({x.dtype}); expected a 2-D numeric (snippets x {self.feature_size}) array")
        if x.shape[1] != self.feature_size:
            raise PECRError(f"I3D features of video {name} in {path} are {x.shape[1]} wide but --feature-size is {self.feature_size}; set --feature-size {x.shape[1]} or use matching features")
        x = np.asarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            t = int(np.argwhere(~np.isfinite(x))[0, 0])
            raise PECRError(f"I3D features of video {name} in {path} contain NaN or inf (first at snippet {t}); re-extract that video's features")
        return x

    def _clip_paths(self, videos: np.ndarray, split: dict[int, str]) -> list[Path]:
        root = Path(self.opts.clip_feature_dir)
        if not root.is_dir():
            raise PECRError(f"CLIP feature folder {root} not found; extract CLIP features (see {README}) or pass --clip-feature-dir")
        for name, flag in ((self.opts.clip_train_split, "--clip-train-split"), (self.opts.clip_test_split, "--clip-test-split")):
            if not (root / name).is_dir():
                present = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) or "none"
                raise PECRError(f"CLIP split folder {root / name} not found (sub-folders of {root}: {present}); set {flag} or --clip-feature-dir")
        paths = [root / split[int(v)] / f"{self.video_names[v]}.npy" for v in videos]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise PECRError(f"CLIP features {missing[0]} not found{more}; each video needs <clip-feature-dir>/<split>/<video>.npy: "
                            f"check --clip-feature-dir, --clip-train-split, --clip-test-split (see {README})")
        return paths

    def _clip_header(self, path: Path, name: str) -> int:
        """Shape check from the .npy header only (the data are read later, straight into place)."""
        try:
            shape = np.load(path, mmap_mode="r").shape
        except Exception as err:
            raise PECRError(f"cannot read CLIP features {path} of video {name} ({type(err).__name__}: {err}); re-extract them".replace("\n", " ")) from None
        if len(shape) != 2:
            raise PECRError(f"CLIP features {path} of video {name} have shape {shape}; expected a 2-D (snippets x clip_dim) array")
        if self.clip_dim is None:
            self.clip_dim = int(shape[1])
        elif shape[1] != self.clip_dim:
            raise PECRError(f"CLIP features {path} of video {name} are {shape[1]} wide but the CLIP model's embedding is {self.clip_dim}; "
                            "use features of the chosen --clip-backbone (or the backbone of these features)")
        return int(shape[0])

    def _read_clip(self, path: Path, out: np.ndarray, name: str) -> None:
        data = np.load(path, mmap_mode="r")
        if not np.issubdtype(data.dtype, np.number):
            raise PECRError(f"CLIP features {path} of video {name} are {data.dtype}, not numbers; re-extract them")
        out[:] = data[:len(out)]
        del data
        if not np.isfinite(out).all():
            t = int(np.argwhere(~np.isfinite(out))[0, 0])
            raise PECRError(f"CLIP features {path} of video {name} contain NaN or inf (first at snippet {t}); re-extract that video's features")

    # ------------------------------------------------------------------ access
    @property
    def num_train_videos(self) -> int:
        return len(self.train_indices)

    @property
    def num_test_videos(self) -> int:
        return len(self.test_indices)

    def video_features(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Views (T, F) and (T, D) of one loaded video's features (do not modify them)."""
        o, t = self._offsets[index], self.lengths[index]
        if o < 0:
            raise KeyError(f"video {self.video_names[index]} is not loaded (not in the train/test subsets or too short)")
        return self._features[o:o + t], self._clip[o:o + t]

    def sample_videos(self, rng: np.random.Generator) -> np.ndarray:
        """(batch_size,) training video ids (SPEC §1.3).

        ``num_similar`` classes are drawn uniformly with replacement among the classes with at
        least two training videos; for each, two distinct training videos of that class fill
        positions (2k, 2k+1). The remaining positions are training videos drawn uniformly with
        replacement.
        """
        b, s = int(self.opts.batch_size), int(self.opts.num_similar)
        if b < 2 * s:
            raise PECRError(f"--batch-size {b} cannot hold --num-similar {s} pairs; use --batch-size >= {2 * s}")
        if s and len(self._pair_classes) == 0:
            raise PECRError(f"no class has two training videos in {self.annotation_dir}; set --num-similar 0")
        pairs = [rng.choice(self._class_videos[c], 2, replace=False) for c in rng.choice(self._pair_classes, s)] if s else []
        rest = rng.choice(self.train_indices, b - 2 * s)
        return np.concatenate(pairs + [rest]).astype(np.int64)

    def train_batch(self, rng: np.random.Generator, device=None) -> TrainBatch:
        """Sample a batch and resample every video to ``max_seqlen`` snippets by random perturbation;
        the same snippet indices select I3D and CLIP rows."""
        idx = self.sample_videos(rng)
        rows = self._offsets[idx, None] + random_perturb(rng, self.lengths[idx], int(self.opts.max_seqlen))
        return TrainBatch(
            features=_tensor(self._features[rows], device),
            clip_features=_tensor(self._clip[rows], device),
            labels=_tensor(self.labels[idx], device),
            indices=idx,
        )

    def test_video(self, index: int, device=None) -> TestVideo:
        """One whole video (no resampling) as a batch of one."""
        feats, clip = self.video_features(index)
        return TestVideo(
            index=int(index),
            name=self.video_names[index],
            features=torch.tensor(feats, device=device)[None],
            clip_features=torch.from_numpy(clip.copy())[None],
            labels=torch.from_numpy(self.labels[index].copy()),
        )

    def test_videos(self, device=None) -> Iterator[TestVideo]:
        """Every test video in annotation order."""
        for index in self.test_indices:
            yield self.test_video(int(index), device)
