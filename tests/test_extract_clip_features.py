"""tools/extract_clip_features.py: resampling by timestamps, snippet grid, CLIP preprocessing,
per-video extraction on real (tiny) encoded videos, resume and corrupt files, the CLI."""
from __future__ import annotations

import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from tools import extract_clip_features as ex
from utils.errors import PECRError

NTSC = Fraction(30000, 1001)


# ----------------------------------------------------------------------------- helpers

def frame_colour(i: int) -> tuple[int, int, int]:
    """A flat colour identifying frame i (i < 512) even after lossy coding (steps of 32)."""
    return (i % 8) * 32 + 16, (i // 8 % 8) * 32 + 16, (i // 64) * 32 + 16


def colour_index(rgb) -> int:
    r, g, b = (int(round((float(c) - 16) / 32)) for c in rgb[:3])
    return r + 8 * g + 64 * b


def write_video(path, n: int, rate, codec: str = "ffv1", size=(64, 48)):
    """n flat-coloured frames at ``rate`` fps (ffv1/bgr0 is lossless; mpeg4, intra-only at the finest
    quantiser, keeps flat colours within a few levels)."""
    pix, opts = {"ffv1": ("bgr0", {}), "mpeg4": ("yuv420p", {"qscale": "1"})}[codec]
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt, s.options = size[0], size[1], pix, opts
        s.codec_context.gop_size = 1
        for i in range(n):
            img = np.empty((size[1], size[0], 3), np.uint8)
            img[:] = frame_colour(i)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


class MeanColour:
    """Fake encoder: the mean RGB of each crop (so a row tells which frame it came from)."""
    resolution, dim = 32, 3

    def __init__(self):
        self.frames = 0

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        assert crops.dtype == np.uint8 and crops.shape[1:] == (32, 32, 3)
        self.frames += len(crops)
        return crops.reshape(len(crops), -1, 3).mean(1).astype(np.float32)


def naive_selection(times, t_end, fps=Fraction(25), snippet=16, offset=8, sampling="previous"):
    """Obviously-correct reference: for every complete snippet, scan all frames."""
    num = math.floor(t_end * fps) // snippet
    out = []
    for k in range(num):
        ts = Fraction(k * snippet + offset) / fps
        if sampling == "previous":
            out.append(max(i for i, t in enumerate(times) if t <= ts))
        else:
            out.append(min(range(len(times)), key=lambda i: (abs(times[i] - ts), i)))
    return np.array(out, dtype=np.int64)


# ----------------------------------------------------------------------------- frame selection

def test_snippet_offset():
    assert ex.snippet_offset("mid") == 8 and ex.snippet_offset("first") == 0 and ex.snippet_offset("last") == 15
    assert ex.snippet_offset("3") == 3 and ex.snippet_offset("mid", 5) == 2
    for bad in ("middle", "16", "-1"):
        with pytest.raises(PECRError):
            ex.snippet_offset(bad)


@pytest.mark.parametrize("sampling", ex.SAMPLING)
@pytest.mark.parametrize("src_fps", [Fraction(30), NTSC, Fraction(25), Fraction(24), Fraction(60), Fraction(12)])
@pytest.mark.parametrize("offset", [8, 0, 15])
def test_select_frames_matches_naive(src_fps, sampling, offset):
    n = 137
    times = [Fraction(i) / src_fps for i in range(n)]
    t_end = Fraction(n) / src_fps
    got = ex.select_frames(times, t_end, offset=offset, sampling=sampling)
    assert len(got) == math.floor(n * 25 / src_fps) // 16          # T = floor(frames at 25 fps / 16)
    np.testing.assert_array_equal(got, naive_selection(times, t_end, offset=offset, sampling=sampling))


def test_select_frames_irregular_times():
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.integers(1, 90, size=200)).tolist()
    times = [Fraction(0)] + [Fraction(int(t), 1000) for t in times]
    t_end = times[-1] + Fraction(1, 30)
    for sampling in ex.SAMPLING:
        np.testing.assert_array_equal(ex.select_frames(times, t_end, sampling=sampling),
                                      naive_selection(times, t_end, sampling=sampling))


def test_select_frames_known_values():
    # 30 fps: snippet t is resampled frame 16t+8 at (16t+8)/25 s; frame 0 at 0.32 s -> source 9.6
    times = [Fraction(i, 30) for i in range(96)]                    # 3.2 s -> 80 frames at 25 fps -> 5 snippets
    assert ex.select_frames(times, Fraction(96, 30)).tolist() == [9, 28, 48, 67, 86]
    assert ex.select_frames(times, Fraction(96, 30), sampling="nearest").tolist() == [10, 29, 48, 67, 86]   # 9.6, 28.8, 48.0, 67.2, 86.4
    # a frame exactly at the resampling time is taken by both rules (25 fps in, identity)
    times = [Fraction(i, 25) for i in range(40)]
    assert ex.select_frames(times, Fraction(40, 25)).tolist() == [8, 24]
    assert ex.select_frames(times, Fraction(40, 25), sampling="nearest").tolist() == [8, 24]
    assert ex.select_frames(times[:15], Fraction(15, 25)).tolist() == []   # shorter than one snippet


# ----------------------------------------------------------------------------- preprocessing

def test_preprocess_hand_computed_pixel():
    img = Image.new("RGB", (64, 48), (200, 100, 50))
    x = ex.preprocess(img, 32)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    # (200/255 - 0.48145466) / 0.26862954, (100/255 - 0.4578275) / 0.26130258, (50/255 - 0.40821073) / 0.27577711
    hand = torch.tensor([1.1274228, -0.2513203, -0.7692165])
    torch.testing.assert_close(x[:, 5, 7], hand, atol=1e-6, rtol=0)
    torch.testing.assert_close(x, hand.view(3, 1, 1).expand(3, 32, 32), atol=1e-6, rtol=0)
    # black and white hit the range ends
    lo = ex.preprocess(Image.new("RGB", (40, 40), 0), 32)[:, 0, 0]
    hi = ex.preprocess(Image.new("RGB", (40, 40), (255, 255, 255)), 32)[:, 0, 0]
    torch.testing.assert_close(lo, torch.tensor([-1.7922625, -1.7520971, -1.4802198]), atol=1e-6, rtol=0)
    torch.testing.assert_close(hi, torch.tensor([1.9303363, 2.0748838, 2.1458970]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("size_wh", [(64, 48), (65, 48), (48, 67), (50, 48), (32, 32), (100, 20)])
def test_resize_crop_geometry(size_wh):
    """Short side -> R (PIL bicubic), long side int(R*long/short), centre crop at round(excess/2)."""
    w, h = size_wh
    rng = np.random.default_rng(w * 1000 + h)
    img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    R = 32
    nw, nh = (R, int(R * h / w)) if w <= h else (int(R * w / h), R)
    ref = np.asarray(img.resize((nw, nh), Image.BICUBIC) if (nw, nh) != (w, h) else img)
    top, left = round((nh - R) / 2), round((nw - R) / 2)                # Python's round, as torchvision
    got = np.asarray(ex.resize_crop(img, R))
    np.testing.assert_array_equal(got, ref[top:top + R, left:left + R])
    # and the normalised tensor is exactly (crop/255 - mean)/std
    want = (torch.from_numpy(got.copy()).permute(2, 0, 1).float() / 255 - torch.tensor(ex.CLIP_MEAN).view(3, 1, 1)) \
        / torch.tensor(ex.CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(ex.preprocess(img, R), want, atol=1e-6, rtol=0)


def test_resize_crop_odd_excess_rounding():
    # widths 43, 41 at R=32 (after resize from short side 48): excess 11 -> left 6 (round(5.5)), 9 -> 4 (round(4.5))
    for w, left in [(65, 6), (62, 4)]:
        img = np.zeros((48, w, 3), np.uint8)
        img[:, :, 0] = np.arange(w)[None, :] * 3
        nw = int(32 * w / 48)
        assert round((nw - 32) / 2) == left
        ref = np.asarray(Image.fromarray(img).resize((nw, 32), Image.BICUBIC))[:, left:left + 32]
        np.testing.assert_array_equal(np.asarray(ex.resize_crop(Image.fromarray(img), 32)), ref)


# ----------------------------------------------------------------------------- one video

@pytest.mark.parametrize("rate,n,codec,sampling", [
    (Fraction(30), 100, "ffv1", "previous"),
    (NTSC, 110, "ffv1", "previous"),
    (NTSC, 110, "ffv1", "nearest"),
    (NTSC, 95, "mpeg4", "previous"),
    (Fraction(10), 40, "ffv1", "previous"),       # slower than 25 fps: frames repeat
    (Fraction(25), 70, "mpeg4", "nearest"),
])
def test_extract_video_rows_come_from_the_right_frames(tmp_path, rate, n, codec, sampling):
    path = write_video(tmp_path / ("v.avi" if codec == "ffv1" else "v.mp4"), n, rate, codec)
    enc = MeanColour()
    feats = ex.extract_video(path, enc, sampling=sampling, batch_size=3)
    T = math.floor(n * 25 / rate) // 16
    assert feats.shape == (T, 3) and feats.dtype == np.float32 and T >= 2
    times = [Fraction(i) / rate for i in range(n)]
    want = naive_selection(times, Fraction(n) / rate, sampling=sampling)
    got = [colour_index(row) for row in feats]
    assert got == want.tolist()
    tol = 0.5 if codec == "ffv1" else 10
    np.testing.assert_allclose(feats, np.array([frame_colour(i) for i in want], np.float32), atol=tol)
    assert enc.frames <= T + 1                      # only the chosen frames are encoded (+ the dropped tail)


@pytest.mark.parametrize("sampling", ex.SAMPLING)
def test_extract_video_variable_frame_rate(tmp_path, sampling):
    """Irregular timestamps (mkv, ms time base) starting at 0.5 s: the choice follows the pts from
    the first frame on, not the frame count."""
    pts = np.cumsum([500] + np.random.default_rng(1).integers(10, 90, 80).tolist()).tolist()
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "bgr0"
        s.time_base = s.codec_context.time_base = Fraction(1, 1000)
        for i, p in enumerate(pts):
            img = np.empty((48, 64, 3), np.uint8)
            img[:] = frame_colour(i)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = p, Fraction(1, 1000)
            for pk in s.encode(f):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    with av.open(str(path)) as c:                                      # the last frame's stored duration
        last = list(c.decode(video=0))[-1]
        assert last.pts == pts[-1]
        t_end = Fraction(pts[-1] - pts[0] + last.duration, 1000)
    feats = ex.extract_video(path, MeanColour(), sampling=sampling)
    want = naive_selection([Fraction(p - pts[0], 1000) for p in pts], t_end, sampling=sampling)
    assert len(want) >= 4 and [colour_index(r) for r in feats] == want.tolist()


def test_extract_video_frame_option_and_fps(tmp_path):
    path = write_video(tmp_path / "v.avi", 120, Fraction(30))
    first = ex.extract_video(path, MeanColour(), offset=0)
    assert [colour_index(r) for r in first] == [0, 19, 38, 57, 76, 96, 115][:len(first)]   # floor(16t*30/25)
    assert len(first) == math.floor(120 * 25 / 30) // 16
    # a 30 fps grid of 10-frame snippets on a 30 fps video is the identity grid
    same = ex.extract_video(path, MeanColour(), fps=Fraction(30), snippet=10, offset=5)
    assert [colour_index(r) for r in same] == list(range(5, 120, 10))


def test_extract_video_unreadable(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(Exception):
        ex.extract_video(bad, MeanColour())
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    with pytest.raises(Exception):
        ex.extract_video(empty, MeanColour())


# ----------------------------------------------------------------------------- many videos

def _dataset(tmp_path):
    vids = tmp_path / "videos"
    vids.mkdir()
    write_video(vids / "a.avi", 90, Fraction(30))                      # 75 frames at 25 fps -> 4 snippets
    write_video(vids / "b.avi", 100, NTSC)                             # 83 -> 5 snippets
    write_video(vids / "c.mp4", 10, Fraction(30), "mpeg4")             # 8 -> 0 snippets
    (vids / "broken.mp4").write_bytes(b"\x00\x01 this is not a video" * 100)
    (vids / "notes.txt").write_text("ignored: not a video extension")
    return vids


def test_extract_all_resume_and_failures(tmp_path):
    vids = _dataset(tmp_path)
    videos = ex.list_videos([vids])
    assert [p.name for p in videos] == ["a.avi", "b.avi", "broken.mp4", "c.mp4"]
    out = tmp_path / "out"
    enc = MeanColour()
    s = ex.extract_all(videos, out, enc, progress=False)
    assert s.done == ["a", "b", "c"] and s.skipped == [] and [n for n, _ in s.failed] == ["broken"]
    assert s.failed[0][1]                                            # a reason is given
    assert s.lengths == {"a": 4, "b": 5, "c": 0} and any("c:" in w for w in s.warnings)
    assert np.load(out / "c.npy").shape == (0, 3)
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "b.npy", "c.npy"]  # no temp files left
    a = np.load(out / "a.npy")

    # resume: nothing re-encoded; a corrupt or wrong-width output is redone
    enc2 = MeanColour()
    s2 = ex.extract_all(videos, out, enc2, progress=False)
    assert s2.done == [] and s2.skipped == ["a", "b", "c"] and enc2.frames == 0 and s2.lengths == s.lengths
    (out / "a.npy").write_bytes(b"garbage")
    np.save(out / "b.npy", np.zeros((5, 4), np.float32))
    s3 = ex.extract_all(videos, out, enc2, progress=False)
    assert s3.done == ["a", "b"] and s3.skipped == ["c"] and enc2.frames > 0
    np.testing.assert_array_equal(np.load(out / "a.npy"), a)
    s4 = ex.extract_all(videos[:1], out, MeanColour(), overwrite=True, progress=False)
    assert s4.done == ["a"]


def test_valid_output(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.ones((3, 4), np.float32))
    assert ex.valid_output(p, 4) and not ex.valid_output(p, 5)
    np.save(p, np.ones((3, 4), np.float64))
    assert not ex.valid_output(p, 4)
    np.save(p, np.array([[np.nan, 1]], np.float32))
    assert not ex.valid_output(p, 2)
    assert not ex.valid_output(tmp_path / "missing.npy", 4)


def test_list_videos_list_file_and_duplicates(tmp_path):
    vids = _dataset(tmp_path)
    lst = tmp_path / "list.txt"
    lst.write_text("# my videos\nvideos/b.avi\n\n" + str(vids / "a.avi") + "\n")
    assert [p.name for p in ex.list_videos([lst])] == ["b.avi", "a.avi"]
    assert ex.list_videos([lst])[0] == vids / "b.avi"
    write_video(tmp_path / "a.mp4", 5, Fraction(30), "mpeg4")
    with pytest.raises(PECRError, match="a.npy"):
        ex.list_videos([vids, tmp_path / "a.mp4"])
    with pytest.raises(PECRError, match="no such"):
        ex.list_videos([tmp_path / "nope"])


def test_check_lengths():
    s = ex.Summary(lengths={"a": 4, "b": 5, "c": 2})
    w = ex.check_lengths(s, {"a": 4, "b": 6})
    assert len(w) == 2 and w[0].startswith("b: 5 CLIP snippets but 6 I3D rows") and w[1].startswith("c: not in")


def test_i3d_lengths_of_a_per_video_feature_folder(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((4, 8), np.float32))
    np.save(tmp_path / "b.npy", np.zeros((6, 8), np.float16))
    assert ex.i3d_lengths(tmp_path, ["a", "b", "c"]) == ({"a": 4, "b": 6}, 2)  # c: no file, reported by check_lengths


# ----------------------------------------------------------------------------- command line + real CLIP

def test_main_end_to_end_with_random_tiny_clip(tmp_path, capsys):
    import clip
    vids = _dataset(tmp_path)
    ann = tmp_path / "ann"
    ann.mkdir()
    np.save(ann / "videoname.npy", np.array([b"a", b"b", b"c", b"broken", b"zz"], dtype=object))
    np.save(ann / "subset.npy", np.array([b"test", b"test", b"test", b"test", b"validation"], dtype=object))
    i3d = np.empty(5, dtype=object)
    for i, t in enumerate([4, 6, 0, 3, 9]):
        i3d[i] = np.zeros((t, 8), np.float32)
    np.save(tmp_path / "i3d.npy", i3d, allow_pickle=True)
    out = tmp_path / "feats" / "test"
    args = ["--videos", str(vids), "--out", str(out), "--backbone", "random-tiny", "--device", "cpu",
            "--batch-size", "2", "--annotations", str(ann), "--subset", "test",
            "--i3d-features", str(tmp_path / "i3d.npy"), "--no-progress"]
    assert ex.main(args) == 1                                          # broken.mp4 failed, batch went on
    text = capsys.readouterr().out
    assert "3 done, 0 skipped" in text and "1 failed" in text and "FAILED broken" in text
    assert "b: 5 CLIP snippets but 6 I3D rows" in text and "a: 4 CLIP" not in text

    model = clip.load("random-tiny", device="cpu")
    R, D = model.visual.input_resolution, model.embed_dim
    a = np.load(out / "a.npy")
    assert a.shape == (4, D) and a.dtype == np.float32
    # row t = CLIP(preprocess(source frame chosen for snippet t)); 30 fps: frames 9, 28, 48, 67
    imgs = torch.stack([ex.preprocess(Image.new("RGB", (64, 48), frame_colour(i)), R) for i in (9, 28, 48, 67)])
    with torch.inference_mode():
        want = model.encode_image(imgs).numpy()
    np.testing.assert_allclose(a, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(a[0], a[1])

    # resume: everything valid is skipped
    assert ex.main(args) == 1
    assert "0 done, 3 skipped" in capsys.readouterr().out
    # only good videos, without annotations: exit status 0 and I3D rows matched by order (a, b)
    np.save(tmp_path / "i3d2.npy", i3d[:2], allow_pickle=True)
    assert ex.main(["--videos", str(vids / "a.avi"), str(vids / "b.avi"), "--out", str(tmp_path / "o2"),
                    "--backbone", "random-tiny", "--device", "cpu", "--no-progress",
                    "--i3d-features", str(tmp_path / "i3d2.npy")]) == 0
    text = capsys.readouterr().out
    assert "2 done" in text and "b: 5 CLIP snippets but 6 I3D rows" in text


def test_main_reports_bad_input(tmp_path, capsys):
    assert ex.main(["--videos", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert ex.main(["--videos", str(tmp_path), "--out", str(tmp_path / "o"), "--frame", "centre"]) == 2
    assert ex.main(["--videos", str(tmp_path), "--out", str(tmp_path / "o")]) == 2      # folder without videos
    assert "no video files" in capsys.readouterr().err
    (tmp_path / "v").mkdir()
    vids = _dataset(tmp_path / "v")
    assert ex.main(["--videos", str(vids), "--out", str(tmp_path / "o"), "--backbone", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "fix --backbone" in err and "--clip-backbone" not in err and "\n" not in err  # this tool's flag names
    (tmp_path / "file").write_text("")
    assert ex.main(["--videos", str(vids), "--out", str(tmp_path / "file" / "o"), "--backbone", "random-tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write" in err and "--out" in err and "\n" not in err
