"""Extract one CLIP image embedding per I3D snippet (docs/method.md §1.1): ``<out>/<videoname>.npy`` (T x D float32).

    python tools/extract_clip_features.py --videos videos/test --out features/MyData-CLIP/test \\
        --backbone RN50 [--fps 25 --snippet 16 --frame mid] [--device auto] [--batch-size 64]

Pipeline per video (streaming: only the frames that are chosen are converted and kept):

1. Decode with PyAV. Frame times come from the decoded frames' pts (exact rationals), measured
   from the first decoded frame (time 0).
2. Resample to ``fps`` (25) by timestamps: resampled frame j lies at time j/fps. ``--sampling
   previous`` (default) takes the source frame on screen at that time, i.e. the last source frame
   with time <= j/fps; ``--sampling nearest`` takes the source frame closest in time (ties: the
   earlier one).
3. Duration = time of the last decoded frame + its duration (its ``duration`` field, else the last
   frame gap, else 1/average_rate). Resampled frames: N = floor(duration * fps). Snippets:
   T = floor(N / snippet), the I3D grid (16 non-overlapping frames, the incomplete tail dropped).
4. Snippet t is represented by resampled frame t*snippet + offset; ``--frame mid`` is offset
   snippet // 2 = 8 (frames 0..15 have their centre at 7.5; we take the later one, 8).
5. CLIP preprocessing (as OpenAI CLIP's ``_transform``): resize the short side to the model
   resolution R with PIL bicubic (long side ``int(R * long / short)``), centre crop R x R (offsets
   ``round((size - R) / 2)``), RGB, /255, (x - mean) / std with CLIP's mean/std.
6. ``model.encode_image`` in batches under ``torch.inference_mode``; raw (not L2-normalised) output.

Resumable: a valid existing output (2-D float32, D columns, finite) is skipped. A video that cannot
be decoded is reported and skipped. Exit status 0 when every video is done or skipped, 1 otherwise.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from utils.errors import PECRError, cli  # noqa: E402
from utils.io import atomic_save, check_writable  # noqa: E402
from utils.progress import progress as progress_bar  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                    ".3gp", ".ts", ".mts", ".ogv", ".ogg", ".vob"}
LIST_EXTENSIONS = {".txt", ".lst", ".list"}
SAMPLING = ("previous", "nearest")


# ----------------------------------------------------------------------------- frame selection

def snippet_offset(frame: str | int, snippet: int = 16) -> int:
    """Index inside a snippet of the frame that represents it: mid -> snippet // 2, first -> 0,
    last -> snippet - 1, or an integer in [0, snippet)."""
    named = {"mid": snippet // 2, "first": 0, "last": snippet - 1}
    if isinstance(frame, str) and frame in named:
        return named[frame]
    try:
        offset = int(frame)
    except (TypeError, ValueError):
        raise PECRError(f"--frame {frame!r} is not mid, first, last or an integer; pick one of those") from None
    if not 0 <= offset < snippet:
        raise PECRError(f"--frame {offset} is outside the snippet (0..{snippet - 1}); use mid or a value in range")
    return offset


class FrameSelector:
    """Streaming choice of the source frame of every snippet.

    Feed the decoded frames in order with ``push(time, item)`` (time: seconds from the first
    frame, a Fraction); each call returns the ``(snippet_index, item)`` pairs it settles.
    ``finish(t_end)`` settles the rest and returns them with the snippet count T; pairs with
    index >= T (at most one, the incomplete tail) must be dropped by the caller.
    """

    def __init__(self, fps: Fraction = Fraction(25), snippet: int = 16, offset: int = 8,
                 sampling: str = "previous"):
        if sampling not in SAMPLING:
            raise PECRError(f"--sampling {sampling!r} is unknown; use one of {', '.join(SAMPLING)}")
        self.fps, self.snippet, self.offset, self.sampling = Fraction(fps), snippet, offset, sampling
        self.next = 0                      # next snippet to settle
        self.prev: Any = None              # latest frame pushed
        self.prev_time: Fraction | None = None

    def slot_time(self, k: int) -> Fraction:
        """Time of the resampled frame that represents snippet k."""
        return (k * self.snippet + self.offset) / self.fps

    def push(self, time: Fraction, item: Any) -> list[tuple[int, Any]]:
        settled = []
        if self.prev is not None:
            # every slot before `time` lies in [prev_time, time): choose between prev and this frame
            while (ts := self.slot_time(self.next)) < time:
                later = self.sampling == "nearest" and time - ts < ts - self.prev_time
                settled.append((self.next, item if later else self.prev))
                self.next += 1
        self.prev, self.prev_time = item, time
        return settled

    def finish(self, t_end: Fraction) -> tuple[list[tuple[int, Any]], int]:
        num = math.floor(Fraction(t_end) * self.fps) // self.snippet
        settled = []
        if self.prev is not None:
            while self.next < num:         # slots after the last frame's start: it is still on screen
                settled.append((self.next, self.prev))
                self.next += 1
        return settled, num


def select_frames(times: Sequence[Fraction], t_end: Fraction, fps: Fraction = Fraction(25), snippet: int = 16,
                  offset: int = 8, sampling: str = "previous") -> np.ndarray:
    """Source frame index per snippet, (T,) int64, for frames at ``times`` (seconds, increasing,
    times[0] = 0) and a video ending at ``t_end``."""
    sel = FrameSelector(fps, snippet, offset, sampling)
    pairs = [p for i, t in enumerate(times) for p in sel.push(Fraction(t), i)]
    tail, num = sel.finish(t_end)
    out = np.full(num, -1, dtype=np.int64)
    for k, i in pairs + tail:
        if k < num:
            out[k] = i
    return out


# ----------------------------------------------------------------------------- preprocessing

def resize_crop(image: Image.Image, size: int) -> Image.Image:
    """CLIP's geometry: short side -> ``size`` (bicubic, long side ``int(size*long/short)``),
    then the centre ``size x size`` crop with offsets ``round((side - size) / 2)``; RGB."""
    w, h = image.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.BICUBIC)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return image if image.mode == "RGB" else image.convert("RGB")


def normalize(crops: torch.Tensor) -> torch.Tensor:
    """uint8 crops (N,R,R,3) -> CLIP input (N,3,R,R) float32: x/255, then (x - mean) / std."""
    x = crops.permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub(mean).div(std)


def preprocess(image: Image.Image, size: int) -> torch.Tensor:
    """One PIL image -> CLIP input (3,R,R) float32 (``resize_crop`` then ``normalize``)."""
    crop = np.asarray(resize_crop(image, size), dtype=np.uint8)
    return normalize(torch.from_numpy(crop.copy())[None])[0]


# ----------------------------------------------------------------------------- encoder

class Encoder(Protocol):
    """Maps uint8 crops (N,R,R,3) to features (N,D) (numpy or torch, any device); ``resolution`` = R,
    ``dim`` = D."""
    resolution: int
    dim: int

    def __call__(self, crops: np.ndarray) -> np.ndarray | torch.Tensor: ...


class ClipImageEncoder:
    """The CLIP image tower as an :class:`Encoder`: normalisation and encoding on ``device``. The
    features stay there (no synchronisation), so a GPU encodes while the CPU decodes on."""

    def __init__(self, model: torch.nn.Module, device: torch.device | str = "cpu"):
        self.model, self.device = model.eval(), torch.device(device)
        self.resolution = int(model.visual.input_resolution)
        self.dim = int(model.embed_dim)
        self.dtype = next(model.parameters()).dtype

    @torch.inference_mode()
    def __call__(self, crops: np.ndarray) -> torch.Tensor:
        x = normalize(torch.from_numpy(crops).to(self.device)).to(self.dtype)
        return self.model.encode_image(x).float()


def load_encoder(backbone: str, device: torch.device | str = "cpu", download_root: str | None = None) -> ClipImageEncoder:
    """``clip.load(backbone)`` wrapped as an encoder (random-tiny etc. work without downloads)."""
    import clip
    flags = {"backbone": "--backbone", "download_root": "--download-root"}  # this tool's names in clip's messages
    return ClipImageEncoder(clip.load(backbone, device=device, download_root=download_root, flags=flags), device)


# ----------------------------------------------------------------------------- one video

def _frame_time(frame: av.VideoFrame, index: int, rate: Fraction | None) -> Fraction | None:
    if frame.pts is not None and frame.time_base is not None:
        return frame.pts * Fraction(frame.time_base)
    return Fraction(index) / rate if rate else None


def extract_video(path: str | Path, encoder: Encoder, *, fps: Fraction = Fraction(25), snippet: int = 16,
                  offset: int = 8, sampling: str = "previous", batch_size: int = 64,
                  progress: bool | None = False) -> np.ndarray:
    """CLIP features (T, D) float32 of one video file (see the module docstring for the rules).

    Raises PECRError (or a PyAV error) when the file cannot be decoded.
    """
    selector = FrameSelector(fps, snippet, offset, sampling)
    size = encoder.resolution
    crops: list[np.ndarray] = []
    chunks: list[torch.Tensor] = []
    last: list[Any] = [None, None]        # (frame, crop) of the last conversion: reused for repeats

    def take(pairs: Iterable[tuple[int, Any]]) -> None:
        for _, frame in pairs:
            if frame is not last[0]:
                last[:] = [frame, np.asarray(resize_crop(frame.to_image(), size), dtype=np.uint8)]
            crops.append(last[1])
            if len(crops) == batch_size:
                chunks.append(torch.as_tensor(encoder(np.stack(crops))))
                crops.clear()

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise PECRError(f"{path}: no video stream; pass video files only")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        rate = Fraction(rate) if rate else None
        total = stream.frames or (int(float(stream.duration * stream.time_base) * rate)
                                  if stream.duration and stream.time_base and rate else None)
        t0 = t_prev = gap = None
        last_frame = None
        with progress_bar(total=total, desc=Path(path).name, unit="frame", leave=False, disable=progress is False) as bar:
            for i, frame in enumerate(container.decode(stream)):
                bar.update()
                t = _frame_time(frame, i, rate)
                if t is None:
                    raise PECRError(f"{path}: frame {i} has no timestamp and the stream no frame rate")
                t0 = t if t0 is None else t0
                t -= t0
                if t_prev is not None:
                    if t <= t_prev:        # duplicate / out-of-order timestamp: keep the earlier frame
                        continue
                    gap = t - t_prev
                take(selector.push(t, frame))
                t_prev, last_frame = t, frame
        if last_frame is None:
            raise PECRError(f"{path}: no video frame could be decoded; the file is empty or corrupt")
        if last_frame.duration and last_frame.time_base is not None:
            tail = last_frame.duration * Fraction(last_frame.time_base)
        else:
            tail = gap if gap is not None else (1 / rate if rate else Fraction(0))
        pairs, num = selector.finish(t_prev + tail)
        take(pairs)
    if crops:
        chunks.append(torch.as_tensor(encoder(np.stack(crops))))
    if not chunks:
        return np.zeros((0, encoder.dim), np.float32)
    return np.ascontiguousarray(torch.cat(chunks)[:num].cpu().numpy(), dtype=np.float32)


# ----------------------------------------------------------------------------- many videos

def list_videos(sources: Sequence[str | Path]) -> list[Path]:
    """Video files from folders (their video files, sorted, not recursive), list files
    (.txt/.lst/.list: one path per line, relative to the list's folder, '#' comments) and
    single video files, in the order given. Two videos with the same stem are an error."""
    videos: list[Path] = []
    for src in map(Path, sources):
        if src.is_dir():
            videos += sorted(p for p in src.iterdir()
                             if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."))
        elif src.suffix.lower() in LIST_EXTENSIONS and src.is_file():
            for line in src.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line).expanduser()
                    videos.append(p if p.is_absolute() else src.parent / p)
        elif src.exists():
            videos.append(src)
        else:
            raise PECRError(f"--videos {src}: no such file or folder; pass a video folder, a list file or video files")
    unique: dict[Path, Path] = {}
    seen: dict[str, Path] = {}
    for p in videos:
        key = p.resolve()
        if p.stem in seen and seen[p.stem].resolve() != key:
            raise PECRError(f"--videos: {seen[p.stem]} and {p} would both write {p.stem}.npy; rename one")
        seen[p.stem] = p
        unique.setdefault(key, p)
    return list(unique.values())


def valid_output(path: Path, dim: int) -> bool:
    """True when ``path`` is a readable 2-D float32 array with ``dim`` columns and finite values."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        return arr.ndim == 2 and arr.dtype == np.float32 and arr.shape[1] == dim and bool(np.isfinite(arr).all())
    except Exception:  # noqa: BLE001 -- any unreadable file is simply not valid
        return False


def _strings(arr: np.ndarray) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(arr).ravel()]


def read_annotations(annotation_dir: str | Path) -> tuple[list[str], list[str] | None]:
    """(video names, subsets or None) of a W-TALC annotation folder."""
    d = Path(annotation_dir)
    try:
        names = _strings(np.load(d / "videoname.npy", allow_pickle=True))
    except (OSError, ValueError) as e:
        raise PECRError(f"--annotations {d}: cannot read videoname.npy ({e}); pass a W-TALC annotation folder") from None
    subsets = _strings(np.load(d / "subset.npy", allow_pickle=True)) if (d / "subset.npy").is_file() else None
    return names, subsets


def i3d_lengths(i3d_file: str | Path, names: Sequence[str]) -> tuple[dict[str, int], int]:
    """({name: snippet count}, number of videos) of an object .npy of per-video I3D arrays; row i
    is ``names[i]`` (the annotation order, or the order of the videos for a plain list). A folder
    of per-video ``<name>.npy`` files: the headers of those of ``names`` (the count: files found)."""
    if Path(i3d_file).is_dir():
        lengths = {}
        for name in names:
            path = Path(i3d_file) / f"{name}.npy"
            if path.is_file():
                try:
                    lengths[name] = int(np.load(path, mmap_mode="r").shape[0])
                except (OSError, ValueError) as e:
                    raise PECRError(f"--i3d-features {path}: cannot read it ({e}); re-extract it") from None
        return lengths, len(lengths)
    try:
        feats = np.load(i3d_file, allow_pickle=True)
    except (OSError, ValueError) as e:
        raise PECRError(f"--i3d-features {i3d_file}: cannot read it ({e}); pass the I3D object .npy") from None
    return {name: len(f) for name, f in zip(names, feats)}, len(feats)


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    lengths: dict[str, int] = field(default_factory=dict)   # snippets per video (done or skipped)
    warnings: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = [f"videos: {len(self.done)} done, {len(self.skipped)} skipped (valid output exists), "
                 f"{len(self.failed)} failed"]
        lines += [f"  FAILED {name}: {reason}" for name, reason in self.failed]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def extract_all(videos: Sequence[Path], out_dir: str | Path, encoder: Encoder, *, overwrite: bool = False,
                progress: bool | None = None, **kwargs: Any) -> Summary:
    """Extract every video into ``out_dir/<stem>.npy``; failures are recorded, never raised.
    ``kwargs`` go to :func:`extract_video`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    for path in progress_bar(videos, desc="videos", unit="video", disable=progress is False):
        name, target = path.stem, out_dir / f"{path.stem}.npy"
        if not overwrite and valid_output(target, encoder.dim):
            summary.skipped.append(name)
            summary.lengths[name] = len(np.load(target, mmap_mode="r"))
            continue
        try:
            feats = extract_video(path, encoder, progress=progress, **kwargs)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 -- one bad video must not stop the batch
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            summary.failed.append((name, f"{type(e).__name__}: {reason}"))
            continue
        atomic_save(target, lambda f: np.save(f, feats))
        summary.done.append(name)
        summary.lengths[name] = len(feats)
        if len(feats) == 0:
            summary.warnings.append(f"{name}: shorter than one snippet, wrote an empty (0, {encoder.dim}) array")
    return summary


def check_lengths(summary: Summary, i3d: dict[str, int]) -> list[str]:
    """Warnings for videos whose CLIP snippet count differs from their I3D feature length."""
    out = []
    for name, num in summary.lengths.items():
        if name not in i3d:
            out.append(f"{name}: not in the I3D features; cannot check its snippet count")
        elif i3d[name] != num:
            out.append(f"{name}: {num} CLIP snippets but {i3d[name]} I3D rows (check --fps/--snippet or the video file)")
    return out


# ----------------------------------------------------------------------------- command line

def _fraction(value: str) -> Fraction:
    try:
        f = Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a number such as 25 or 30000/1001, got {value!r}") from None
    if f <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return f


def _positive_int(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Extract one CLIP image embedding per I3D snippet (T x D float32 .npy per video)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--videos", nargs="+", required=True, help="video folder(s), list file(s) (.txt, one path a line) or video files")
    p.add_argument("--out", required=True, help="output folder, e.g. features/<Name>-CLIP/<split>; writes <videoname>.npy")
    p.add_argument("--backbone", default="RN50", help="CLIP model: official name, checkpoint path, or random-tiny")
    p.add_argument("--download-root", dest="download_root", default=None,
                   help="cache folder of CLIP checkpoints (default: $PECR_CLIP_ROOT, else ~/.cache/clip)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=64, help="frames per encoder batch")
    p.add_argument("--fps", type=_fraction, default=Fraction(25), help="frame rate of the snippet grid (I3D: 25)")
    p.add_argument("--snippet", type=_positive_int, default=16, help="frames per snippet (I3D: 16)")
    p.add_argument("--frame", default="mid", help="frame representing a snippet: mid (index snippet//2), first, last or an index")
    p.add_argument("--sampling", choices=SAMPLING, default="previous",
                   help="resampling: previous = last source frame with time <= j/fps; nearest = closest in time")
    p.add_argument("--annotations", default=None, help="W-TALC annotation folder: video names for --i3d-features and --subset")
    p.add_argument("--subset", default=None, help="only the videos of this subset.npy value (needs --annotations), e.g. test")
    p.add_argument("--i3d-features", dest="i3d_features", default=None,
                   help="I3D object .npy or folder of <video>.npy: warn where a video's snippet count differs (object rows matched by --annotations names, else by video order)")
    p.add_argument("--overwrite", action="store_true", help="re-extract videos whose output already exists")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
    return p


@cli
def main(argv: Sequence[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


def _run(args: argparse.Namespace) -> int:
    from utils.device import resolve_device

    offset = snippet_offset(args.frame, args.snippet)
    videos = list_videos(args.videos)
    names = subsets = None
    if args.annotations:
        names, subsets = read_annotations(args.annotations)
    missing: list[str] = []
    if args.subset is not None:
        if names is None or subsets is None:
            raise PECRError("--subset needs --annotations with a subset.npy; add --annotations DIR")
        wanted = [n for n, s in zip(names, subsets) if s == args.subset]
        if not wanted:
            raise PECRError(f"--subset {args.subset!r} matches no video; subsets present: {sorted(set(subsets))}")
        found, keep = {p.stem for p in videos}, set(wanted)
        videos = [p for p in videos if p.stem in keep]
        missing = [n for n in wanted if n not in found]
    if not videos:
        raise PECRError(f"--videos {' '.join(args.videos)}: no video files found (extensions: {' '.join(sorted(VIDEO_EXTENSIONS))})")

    check_writable(args.out, "--out")
    device = resolve_device(args.device)
    encoder = load_encoder(args.backbone, device, args.download_root)
    print(f"{len(videos)} videos -> {args.out}  ({args.backbone}, D={encoder.dim}, R={encoder.resolution}, "
          f"{args.fps} fps, {args.snippet}-frame snippets, frame {offset}, {args.sampling}, {device})", flush=True)
    start = time.perf_counter()
    summary = extract_all(videos, args.out, encoder, overwrite=args.overwrite, progress=None if args.progress else False,
                          fps=args.fps, snippet=args.snippet, offset=offset, sampling=args.sampling,
                          batch_size=args.batch_size)
    summary.failed += [(n, "video file not found among --videos") for n in missing]
    if args.i3d_features:
        order = names if names is not None else [p.stem for p in list_videos(args.videos)]
        lengths, count = i3d_lengths(args.i3d_features, order)
        if count != len(order):
            source, hint = ("--annotations", "") if names is not None else \
                ("--videos", "; matching by order is unreliable, add --annotations DIR")
            summary.warnings.append(f"--i3d-features has {count} videos but {source} lists {len(order)}{hint}")
        summary.warnings += check_lengths(summary, lengths)
    print(summary.report())
    print(f"time: {time.perf_counter() - start:.1f} s")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
