"""W-TALC / CO2-Net data: I3D + CLIP snippet features, video labels, training batches (docs/method.md §1).

    data = WTALDataset(opts)                     # reads and validates everything once
    batch = data.train_batch(rng, device)        # TrainBatch: features (B,L,F), clip_features (B,L,D), labels (B,C)
    for video in data.test_videos(device):       # TestVideo: features (1,T,F), clip_features (1,T,D), labels (C,)
        ...

On-disk layout (docs/method.md §1.1): ``opts.feature_file`` is an object ``.npy`` array holding one
``(T_i, feature_size)`` array per video, in the order of ``<annotation_dir>/videoname.npy``, or a
folder of per-video ``<video>.npy`` files; ``<clip_feature_dir>/<split>/<video>.npy`` holds the
``(T_i, D_clip)`` CLIP features of one video (``split`` = ``opts.clip_train_split`` for training
videos, ``opts.clip_test_split`` for test videos).

Two ways to hold the features of the used (train + test) videos (``opts.feature_loading``):

* memory: every value is read and checked (finite, widths) at start and kept in two contiguous
  float32 arrays (rows of all videos stacked); batches are gathered with one fancy index and
  nothing is re-read from disk. Fastest; needs RAM for all features. The only way for an object
  array feature file.
* lazy (per-video files only): at start only the ``.npy`` headers are read and checked (2-D,
  numeric, widths, lengths); each batch memory-maps the files of its videos and copies the rows it
  needs, and every value read is checked (NaN / inf stop the run naming the video and snippet).
  RAM holds the per-video index only, whatever the dataset size; the OS page cache keeps hot files.
* auto (default): memory when the float32 features take at most ``opts.feature_memory_gb`` GiB
  (THUMOS14: 1.6 GB), else lazy. Both give identical batches and test passes for the same seed.
"""
from __future__ import annotations

import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from options import origin, shipped_path
from utils.errors import PECRError
from utils.progress import progress

README = "features/README.md"
REQUIRED_ANNOTATIONS = ("classlist", "videoname", "subset", "duration", "segments", "labels", "labels_all")
OPTIONAL_ANNOTATIONS = ("original_fps", "extracted_fps")


def class_phrase(name: str) -> str:
    """Class name -> lower-case words for the text prompt, the default rule (docs/method.md §1.2).

    ActivityNet names already contain spaces and are lower-cased ("Bathing dog" -> "bathing dog");
    CamelCase THUMOS14 names are split at case changes ("CleanAndJerk" -> "clean and jerk").
    Exceptions (THUMOS14's Shotput -> "shot put") come from a phrase file: :func:`class_phrases`.
    """
    name = name.strip()
    if " " not in name:
        name = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)  # baseballPitch | BaseballPitch -> Baseball Pitch
        name = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", name)  # HTMLParser -> HTML Parser
    return " ".join(name.lower().split())


def read_phrase_file(path: str | Path) -> dict[str, str]:
    """A class-phrase file (YAML or JSON): a mapping of class names to the phrase of their prompt."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PECRError(f"class phrase file {path} not found; pass an existing YAML/JSON file to --class-phrases (or none)")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise PECRError(f"class phrase file {path} is not valid YAML/JSON: {err}".replace("\n", " ")) from None
    if not isinstance(data, dict) or not data:
        raise PECRError(f"class phrase file {path} must hold a mapping of class names to phrases (Shotput: shot put)")
    phrases = {}
    for name, phrase in data.items():
        if not isinstance(phrase, str) or not phrase.split():
            raise PECRError(f"class phrase file {path}: the phrase of class {name!r} is {phrase!r}; give it some words")
        phrases[str(name)] = " ".join(phrase.split())
    return phrases


def class_phrases(classlist: list[str], phrase_file: str | Path | None = None) -> list[str]:
    """The prompt phrase of every class: from ``phrase_file`` when it names the class, else
    :func:`class_phrase`'s rule. Classes of the file missing from ``classlist`` (a typo, or the
    file of another dataset) are unused, with a warning naming them."""
    if phrase_file is None:
        return [class_phrase(c) for c in classlist]
    path = shipped_path(phrase_file)
    phrases = read_phrase_file(path)
    unknown = [name for name in phrases if name not in classlist]
    if unknown:
        warnings.warn(f"class phrase file {phrase_file} names {len(unknown)} class(es) not in classlist.npy, unused: "
                      f"{', '.join(map(repr, unknown[:5]))}{' ...' if len(unknown) > 5 else ''}; fix the names or --class-phrases", stacklevel=2)
    return [phrases.get(c, class_phrase(c)) for c in classlist]


def random_perturb(rng: np.random.Generator, lengths: np.ndarray, seqlen: int) -> np.ndarray:
    """Random perturbation (docs/method.md §1.3): ``seqlen`` snippet indices per video, (B,) -> (B, seqlen) int64.

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


@dataclass(frozen=True)
class NpyFile:
    """Where the array of one ``.npy`` file lies: ``shape``, ``dtype``, byte ``offset``, ``fortran`` order."""

    path: Path
    shape: tuple
    dtype: np.dtype
    offset: int
    fortran: bool

    @classmethod
    def read(cls, path: Path, kind: str, name: str, fix: str) -> "NpyFile":
        """The header of ``path`` (the data are not read); PECRError naming the video when unreadable."""
        try:
            array = np.load(path, mmap_mode="r")
            header = cls(Path(path), tuple(array.shape), array.dtype, int(array.offset), bool(array.flags.f_contiguous and array.ndim > 1))
            del array
        except Exception as err:
            raise PECRError(f"cannot read {kind} features {path} of video {name} ({type(err).__name__}: {err}); {fix}".replace("\n", " ")) from None
        if not np.issubdtype(header.dtype, np.number):
            raise PECRError(f"{kind} features {path} of video {name} are {header.dtype}, not numbers; {fix}")
        return header

    def open(self) -> np.ndarray:
        """The array, memory-mapped read-only (unmapped when the last reference goes)."""
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=self.shape,
                         order="F" if self.fortran else "C")


def check_finite(values: np.ndarray, kind: str, name: str, path, snippets: np.ndarray | None = None) -> None:
    """PECRError naming the video and the first snippet (row of its file) holding NaN or inf.
    ``values`` (T, W), or (L, W) rows ``snippets`` of the file."""
    finite = np.isfinite(values).all(axis=-1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        t = row if snippets is None else int(snippets[row])
        raise PECRError(f"{kind} features of video {name} in {path} contain NaN or inf (first at snippet {t}); re-extract that video's features")


def read_checked(header: NpyFile, out: np.ndarray, kind: str, name: str) -> None:
    """Copy the first ``len(out)`` rows of a per-video file into ``out`` (float32), checking every value."""
    data = header.open()
    out[:] = data[:len(out)]
    del data
    check_finite(out, kind, name, header.path)


class MemoryFeatures:
    """Features of all loaded videos stacked in one (rows, W) float32 array; ``offsets`` (N,) the first row of each video."""

    def __init__(self, data: np.ndarray, offsets: np.ndarray):
        self.data, self.offsets = data, offsets

    def gather(self, videos: np.ndarray, snippets: np.ndarray) -> np.ndarray:
        """(B, L, W) rows ``snippets`` (B, L) of ``videos`` (B,): one fancy index."""
        return self.data[self.offsets[videos, None] + snippets]

    def video(self, index: int, length: int) -> np.ndarray:
        o = self.offsets[index]
        return self.data[o:o + length]


class LazyFeatures:
    """Per-video ``.npy`` files, memory-mapped while a batch is gathered: RAM holds the headers only.

    Every value read is checked (NaN / inf: PECRError naming the video and snippet)."""

    def __init__(self, files: dict[int, NpyFile], names: list[str], kind: str, width: int):
        self.files, self.names, self.kind, self.width = files, names, kind, width

    def gather(self, videos: np.ndarray, snippets: np.ndarray) -> np.ndarray:
        """(B, L, W) float32 rows ``snippets`` (B, L) of ``videos`` (B,), the same values as :class:`MemoryFeatures`."""
        out = np.empty((*snippets.shape, self.width), dtype=np.float32)
        for b, (v, rows) in enumerate(zip(videos, snippets)):
            header = self.files[int(v)]
            data = header.open()
            out[b] = data[rows]
            del data
            check_finite(out[b], self.kind, self.names[v], header.path, rows)
        return out

    def video(self, index: int, length: int) -> np.ndarray:
        """(T, W) float32: the first ``length`` rows of the video's file, checked."""
        out = np.empty((length, self.width), dtype=np.float32)
        read_checked(self.files[int(index)], out, self.kind, self.names[index])
        return out


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
    """A fresh array (not a view of the dataset's storage) -> tensor on ``device``; to CUDA through
    pinned memory without blocking (the host goes on while the copy runs)."""
    tensor = torch.from_numpy(array)
    if device is None:
        return tensor
    device = torch.device(device)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def load_annotations(annotation_dir: str | Path, where: str | Callable[[], str] = "--annotation-dir") -> dict:
    """Read and check a W-TALC annotation folder.

    Returns a dict: ``classlist`` list[str] (C), ``video_names`` / ``subsets`` list[str] (N),
    ``durations`` (N,) float64 seconds, ``segments`` list of (k_i, 2) float64 seconds,
    ``segment_labels`` list[list[str]] (one per segment), ``labels_all`` list[list[str]],
    and ``original_fps`` / ``extracted_fps`` (N,) arrays or None when the files are absent.
    ``where``: the option (or description key) to name when the folder is missing, or a function
    giving it (called only then: finding a description key reads the description).
    """
    folder = Path(annotation_dir)
    if not folder.is_dir():
        raise PECRError(f"annotation folder {folder} not found; place the W-TALC annotations there (see {README}) or set {where() if callable(where) else where}")
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


def read_feature_file(path: Path, n: int, names_file, flag: str | Callable[[], str] = "--feature-file",
                      width: int | str = "F") -> list:
    """The per-video arrays of an object ``.npy`` feature file (or a stacked 3-D array) whose videos are
    the ``n`` of ``names_file`` (videoname.npy), unchecked: PECRError when the file is missing (naming
    ``flag``, or the function giving it), unreadable, of another kind or another video count."""
    path = Path(path)
    if not path.is_file():
        raise PECRError(f"I3D feature file {path} not found; download it as described in {README} or set "
                        f"{flag() if callable(flag) else flag}")
    try:
        array = np.load(path, allow_pickle=True)
    except Exception as err:
        raise PECRError(f"cannot read I3D feature file {path} ({type(err).__name__}: {err}); re-download it (see {README})".replace("\n", " ")) from None
    if (array.dtype == object and array.ndim == 1) or (array.dtype != object and array.ndim == 3):  # np.save stacks equal lengths
        videos = list(array)
    else:
        raise PECRError(f"I3D feature file {path} holds a {array.dtype} array of shape {array.shape}; expected an object array of per-video (snippets x {width}) arrays")
    del array
    if len(videos) != n:
        raise PECRError(f"I3D feature file {path} holds {len(videos)} videos but {names_file} lists {n}; "
                        "use the feature file and annotation folder of the same release")
    return videos


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
    """Everything PECR reads, loaded and validated once (docs/method.md §1).

    Attributes: ``classlist`` / ``class_phrases`` (C), ``num_classes``, ``feature_size`` (F),
    ``clip_dim`` (D), ``video_names`` (N, annotation order), ``subsets``, ``durations`` (N,),
    ``segments`` / ``segment_labels`` (per video, seconds), ``labels`` (N, C) float32,
    ``train_indices`` / ``test_indices`` (int64 video ids), ``lengths`` (N,) usable snippets
    (0 for videos that are not loaded).
    """

    def __init__(self, opts, clip_dim: int | None = None, progress: bool | None = None):
        self.opts = opts
        self.annotation_dir = Path(opts.annotation_dir)
        ann = load_annotations(self.annotation_dir, lambda: origin(opts, "annotation_dir"))
        self.classlist: list[str] = ann["classlist"]
        self.class_phrases = class_phrases(self.classlist, opts.class_phrases)
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

        self._resident = None  # (device, I3D, CLIP) tensors, see keep_on_device
        self._class_videos = [self.train_indices[self.labels[self.train_indices, c] > 0] for c in range(self.num_classes)]
        self._pair_classes = np.array([c for c, v in enumerate(self._class_videos) if len(v) >= 2], dtype=np.int64)

    # ------------------------------------------------------------------ loading
    def _load_features(self, train: np.ndarray, test: np.ndarray) -> None:
        """Check the I3D and CLIP features of the train/test videos, then hold them in memory (stacked
        rows of all videos) or as memory-mapped per-video files (see the module docstring)."""
        opts, n = self.opts, len(self.video_names)
        used = np.union1d(train, test)
        i3d_len = np.zeros(n, dtype=np.int64)
        source = Path(opts.feature_file)
        if source.is_dir():  # per-video files: headers only
            videos = None
            i3d_files = self._i3d_headers(source, used)
            for v in used:
                i3d_len[v] = i3d_files[v].shape[0]
        else:
            if opts.feature_loading == "lazy":  # an object array is read whole: refuse before reading it
                raise PECRError(f"--feature-loading lazy reads per-video files, but {opts.feature_file} is one object array "
                                f"(read whole); split it with `python tools/split_features.py --features {opts.feature_file} "
                                f"--annotations {self.annotation_dir} --out DIR` and pass --feature-file DIR")
            videos = self._read_feature_file(source, n)
            for v in used:
                videos[v] = self._check_i3d(videos[v], v, opts.feature_file)
                i3d_len[v] = len(videos[v])
        min_len = max(1, int(opts.min_snippets))
        keep = self._keep(used[i3d_len[used] >= min_len], train, test)

        split = {int(v): opts.clip_train_split for v in train} | {int(v): opts.clip_test_split for v in test}
        clip_path = dict(zip(keep.tolist(), self._clip_paths(keep, split)))
        clip_len = i3d_len.copy()  # videos already too short keep their I3D length
        clip_files = {}
        for v in keep:
            clip_files[v] = self._clip_header(clip_path[v], self.video_names[v])
            clip_len[v] = clip_files[v].shape[0]
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

        self.feature_loading = "memory" if videos is not None else self._loading(int(self.lengths.sum()))
        if self.feature_loading == "lazy":
            self._i3d = LazyFeatures({int(v): i3d_files[v] for v in keep}, self.video_names, "I3D", self.feature_size)
            self._clip = LazyFeatures({int(v): clip_files[v] for v in keep}, self.video_names, "CLIP", self.clip_dim)
            return
        offsets = np.full(n, -1, dtype=np.int64)
        offsets[keep] = np.cumsum(self.lengths[keep]) - self.lengths[keep]
        total = int(self.lengths.sum())
        features = np.empty((total, self.feature_size), dtype=np.float32)
        for v in self._bar(keep, "reading I3D features") if videos is None else keep:
            o, t = offsets[v], self.lengths[v]
            if videos is None:
                read_checked(i3d_files[v], features[o:o + t], "I3D", self.video_names[v])
            else:
                features[o:o + t] = videos[v][:t]
                videos[v] = None  # release the loaded copy as we go
        clip = np.empty((total, self.clip_dim), dtype=np.float32)
        for v in self._bar(keep, "reading CLIP features"):
            o, t = offsets[v], self.lengths[v]
            read_checked(clip_files[v], clip[o:o + t], "CLIP", self.video_names[v])
        self._i3d, self._clip = MemoryFeatures(features, offsets), MemoryFeatures(clip, offsets)

    def _loading(self, rows: int) -> str:
        """``opts.feature_loading`` of per-video files resolved: auto = memory up to ``opts.feature_memory_gb``
        GiB (``rows`` snippets of I3D + CLIP features in float32), else lazy."""
        opts = self.opts
        if opts.feature_loading != "auto":
            return opts.feature_loading
        gib = rows * (self.feature_size + self.clip_dim) * 4 / 2**30
        choice = "memory" if gib <= opts.feature_memory_gb else "lazy"
        if choice == "lazy":  # say so: batches now read from disk (memory-mapped, page-cached)
            print(f"features: {gib:.1f} GiB (float32) > --feature-memory-gb {opts.feature_memory_gb:g}: lazy loading "
                  "(memory-mapped per-video files)", file=sys.stderr)
        return choice

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
        return read_feature_file(path, n, self.annotation_dir / "videoname.npy", lambda: origin(self.opts, "feature_file"),
                                 self.feature_size)

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
        check_finite(x, "I3D", name, path)
        return x

    def _clip_paths(self, videos: np.ndarray, split: dict[int, str]) -> list[Path]:
        root = Path(self.opts.clip_feature_dir)
        if not root.is_dir():
            raise PECRError(f"CLIP feature folder {root} not found; extract CLIP features (see {README}) or set {origin(self.opts, 'clip_feature_dir')}")
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

    def _clip_header(self, path: Path, name: str) -> NpyFile:
        """Shape check from the .npy header only (the data are read later, straight into place)."""
        header = NpyFile.read(path, "CLIP", name, "re-extract them")
        shape = header.shape
        if len(shape) != 2:
            raise PECRError(f"CLIP features {path} of video {name} have shape {shape}; expected a 2-D (snippets x clip_dim) array")
        if self.clip_dim is None:
            self.clip_dim = int(shape[1])
        elif shape[1] != self.clip_dim:
            raise PECRError(f"CLIP features {path} of video {name} are {shape[1]} wide but the CLIP model's embedding is {self.clip_dim}; "
                            "use features of the chosen --clip-backbone (or the backbone of these features)")
        return header

    def _i3d_headers(self, folder: Path, videos: np.ndarray) -> dict[int, NpyFile]:
        """Headers of ``<folder>/<video>.npy`` of the used videos, checked (2-D, numeric, ``feature_size`` wide)."""
        paths = {int(v): folder / f"{self.video_names[v]}.npy" for v in videos}
        missing = [p for p in paths.values() if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise PECRError(f"I3D features {missing[0]} not found{more}; a feature folder needs <video>.npy for every train/test video "
                            f"of {self.annotation_dir / 'videoname.npy'} (see {README}) or pass --feature-file")
        headers = {}
        for v, path in paths.items():
            header = headers[v] = NpyFile.read(path, "I3D", self.video_names[v], "re-extract them")
            if len(header.shape) != 2:
                raise PECRError(f"I3D features {path} of video {self.video_names[v]} have shape {header.shape}; expected a 2-D (snippets x {self.feature_size}) array")
            if header.shape[1] != self.feature_size:
                raise PECRError(f"I3D features {path} of video {self.video_names[v]} are {header.shape[1]} wide but --feature-size is "
                                f"{self.feature_size}; set --feature-size {header.shape[1]} or use matching features")
        return headers

    # ------------------------------------------------------------------ access
    @property
    def num_train_videos(self) -> int:
        return len(self.train_indices)

    @property
    def num_test_videos(self) -> int:
        return len(self.test_indices)

    def video_features(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(T, F) and (T, D) float32 features of one loaded video (in memory: views, do not modify them)."""
        t = int(self.lengths[index])
        if t == 0:
            raise KeyError(f"video {self.video_names[index]} is not loaded (not in the train/test subsets or too short)")
        return self._i3d.video(index, t), self._clip.video(index, t)

    def sample_videos(self, rng: np.random.Generator) -> np.ndarray:
        """(batch_size,) training video ids (docs/method.md §1.3).

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

    def keep_on_device(self, device) -> bool:
        """Copy the in-memory features to ``device`` once, so that training batches and test videos
        are gathered there (no host copy per step). ``--features-on-device``: auto = on CUDA when
        they take at most half of its free memory; on = on any device; off = never. Lazy loading
        keeps them on disk. Returns whether they are resident; values are the same either way."""
        device = torch.device(device)
        mode = getattr(self.opts, "features_on_device", "auto")
        if mode == "off" or not isinstance(self._i3d, MemoryFeatures):
            return False
        need = self._i3d.data.nbytes + self._clip.data.nbytes
        if mode == "auto":
            if device.type != "cuda":
                return False
            free, _ = torch.cuda.mem_get_info(device)
            if need > free / 2:
                print(f"features: {need / 2**30:.1f} GiB do not fit in half of {device}'s free memory "
                      f"({free / 2**30:.1f} GiB): batches are copied from pinned host memory", file=sys.stderr)
                return False
        self._resident = (device, torch.from_numpy(self._i3d.data).to(device), torch.from_numpy(self._clip.data).to(device))
        return True

    def train_batch(self, rng: np.random.Generator, device=None) -> TrainBatch:
        """Sample a batch and resample every video to ``max_seqlen`` snippets by random perturbation;
        the same snippet indices select I3D and CLIP rows (gathered on the device when the features
        are resident there, see :meth:`keep_on_device`)."""
        idx = self.sample_videos(rng)
        rows = random_perturb(rng, self.lengths[idx], int(self.opts.max_seqlen))
        resident = self._resident_on(device)
        if resident is not None:
            at = _tensor(self._i3d.offsets[idx, None] + rows, device)  # (B, L) row numbers: 25 KB to copy
            return TrainBatch(features=resident[1][at], clip_features=resident[2][at],
                              labels=_tensor(self.labels[idx], device), indices=idx)
        return TrainBatch(
            features=_tensor(self._i3d.gather(idx, rows), device),
            clip_features=_tensor(self._clip.gather(idx, rows), device),
            labels=_tensor(self.labels[idx], device),
            indices=idx,
        )

    def _resident_on(self, device):
        """(device, I3D rows, CLIP rows) when the features are resident on ``device``, else None."""
        resident = self._resident
        return resident if resident is not None and device is not None and torch.device(device) == resident[0] else None

    def test_video(self, index: int, device=None) -> TestVideo:
        """One whole video (no resampling) as a batch of one."""
        feats, clip = self.video_features(index)
        resident = self._resident_on(device)
        if resident is not None:
            o = self._i3d.offsets[index]
            features = resident[1][o:o + len(feats)][None]
        else:
            features = torch.tensor(feats, device=device)[None]
        return TestVideo(
            index=int(index),
            name=self.video_names[index],
            features=features,
            clip_features=torch.from_numpy(clip.copy())[None],
            labels=torch.from_numpy(self.labels[index].copy()),
        )

    def test_videos(self, device=None) -> Iterator[TestVideo]:
        """Every test video in annotation order."""
        for index in self.test_indices:
            yield self.test_video(int(index), device)
