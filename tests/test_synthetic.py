"""tools/make_synthetic.py: layout, determinism, planted signal, real ground truth, ensure_synthetic, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tools.make_synthetic as ms
from dataset import WTALDataset
from options import build_parser, load_description, parse_args
from utils.errors import PECRError

ANNOTATION_FILES = {"classlist.npy", "videoname.npy", "subset.npy", "duration.npy", "segments.npy", "labels.npy",
                    "labels_all.npy", "original_fps.npy", "extracted_fps.npy"}


def paths_in(root: Path, name: str = "Synthetic") -> dict:
    return ms.dataset_paths(root, name)


def opts_for(paths: dict, *extra: str):
    return parse_args(["--dataset", "synthetic", "--feature-file", str(paths["feature_file"]), "--annotation-dir",
                       str(paths["annotation_dir"]), "--clip-feature-dir", str(paths["clip_feature_dir"]), *extra])


def snippet_labels(gt_segments, gt_labels, classlist, length) -> np.ndarray:
    """(T,) class index of the segment covering each snippet centre, -1 for background (naive loop)."""
    y = np.full(length, -1)
    for (start, end), name in zip(gt_segments, gt_labels):
        for t in range(length):
            if start * 25 / 16 <= t + 0.5 < end * 25 / 16:
                y[t] = classlist.index(name)
    return y


def load_split(paths: dict, F: int):
    """Snippet features and labels of the generated dataset, read through the real loader."""
    data = WTALDataset(opts_for(paths, "--feature-size", str(F)), progress=False)
    out = {}
    for role, ids in (("train", data.train_indices), ("test", data.test_indices)):
        X, Z, Y = [], [], []
        for v in ids:
            x, z = data.video_features(v)
            X.append(x), Z.append(z)
            Y.append(snippet_labels(data.segments[v], data.segment_labels[v], data.classlist, len(x)))
        out[role] = (np.concatenate(X), np.concatenate(Z), np.concatenate(Y))
    return data, out


# ----------------------------------------------------------------------------- random ground truth
def test_random_ground_truth_sizes():
    gt = ms.random_ground_truth(np.random.default_rng(0), 120, 5, "validation", "test")
    assert len(gt["video_names"]) == 120 and len(gt["classlist"]) == 5 and len(set(gt["video_names"])) == 120
    lengths = np.floor(gt["durations"] * 25 / 16).astype(int)
    assert lengths.min() >= 60 and lengths.max() <= 200
    subsets = np.array(gt["subsets"])
    assert (subsets == "validation").sum() == 60 and (subsets == "test").sum() == 60
    for v in range(120):
        seg = np.asarray(gt["segments"][v]) * 25 / 16
        assert 1 <= len(seg) <= 4 and len(gt["labels"][v]) == len(seg)
        assert (seg[:, 0] >= 0).all() and (seg[:, 1] <= lengths[v]).all()
        assert ((seg[:, 1] - seg[:, 0]) <= 40.01).all() and ((seg[:, 1] - seg[:, 0]) >= 4.9).all()
        assert (seg[1:, 0] >= seg[:-1, 1]).all()  # ordered, non-overlapping
        assert gt["labels_all"][v] == list(dict.fromkeys(gt["labels"][v])) and 1 <= len(gt["labels_all"][v]) <= 2
    for subset in ("validation", "test"):
        seen = {c for v in np.flatnonzero(subsets == subset) for c in gt["labels_all"][v]}
        assert seen == set(gt["classlist"])
    assert any(len(x) == 2 for x in gt["labels_all"])


def test_envelopes_against_naive_loop():
    segments = np.array([[2.0, 9.5], [12.3, 13.1], [15.0, 40.0]])
    strength = np.array([1.0, 0.8, 0.6])
    for ramp in (0.0, 1.0, 3.0):
        env = ms.envelopes(20, segments, strength, ramp)
        assert env.shape == (20, 3)
        for t in range(20):
            for k, (a, b) in enumerate(segments):
                c = t + 0.5
                inside = min(c - a, b - c)
                want = (1.0 if inside > 0 else 0.0) if ramp == 0 else min(1.0, max(0.0, inside / ramp + 0.5))
                assert env[t, k] == pytest.approx(want * strength[k])
    soft = ms.envelopes(20, segments[:1], np.ones(1), 4.0)[:, 0]
    assert 0 < soft[2] < soft[3] < soft[4] == 1.0  # soft ramp in, flat top
    assert 0 < soft[0] < 0.5 and soft[11] == 0  # the ramp is centred on the boundary: half of it lies outside


# ----------------------------------------------------------------------------- layout and loading
def test_layout_is_complete_and_loads(tmp_path):
    paths = paths_in(tmp_path)
    record = ms.generate(**paths, num_videos=14, num_classes=3, feature_size=12, clip_dim=6, seed=1, progress=False)
    ann = paths["annotation_dir"]
    assert {p.name for p in ann.iterdir()} == ANNOTATION_FILES | {ms.MARKER}
    assert json.loads((ann / ms.MARKER).read_text()) == record and record["num_videos"] == 14
    names = np.load(ann / "videoname.npy")
    assert names.dtype.kind == "S" and np.load(ann / "classlist.npy").dtype.kind == "S" and np.load(ann / "subset.npy").dtype.kind == "S"
    assert np.load(ann / "duration.npy").shape == (14, 1)
    features = np.load(paths["feature_file"], allow_pickle=True)
    assert features.dtype == object and features.shape == (14,)
    subsets = [s.decode() for s in np.load(ann / "subset.npy")]
    for v, name in enumerate(n.decode() for n in names):
        x = features[v]
        assert x.dtype == np.float32 and x.shape[1] == 12 and (x >= 0).all()
        split = "train" if subsets[v] == "validation" else "test"
        z = np.load(paths["clip_feature_dir"] / split / f"{name}.npy")
        assert z.dtype == np.float32 and z.shape == (len(x), 6)
        assert not (paths["clip_feature_dir"] / ("test" if split == "train" else "train") / f"{name}.npy").exists()
    data = WTALDataset(opts_for(paths, "--feature-size", "12"), clip_dim=6)
    assert data.num_train_videos == 7 and data.num_test_videos == 7 and data.num_classes == 3


def test_deterministic_by_seed(tmp_path):
    def files(root: Path) -> dict:
        return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ms.MARKER}

    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        ms.generate(**paths_in(tmp_path / name), num_videos=8, num_classes=2, feature_size=8, clip_dim=4, seed=seed, progress=False)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert a == b
    key = Path("Synthetic") / "Synthetic-I3D-JOINTFeatures.npy"
    assert a[key] != c[key]


# ----------------------------------------------------------------------------- planted signal
def least_squares_accuracy(train, test) -> float:
    """Frame accuracy (background = class -1) of a least-squares linear classifier."""
    (X, _, Y), (Xt, _, Yt) = train, test
    k = max(Y.max(), Yt.max()) + 2
    W = np.linalg.lstsq(np.c_[X, np.ones(len(X))], np.eye(k)[Y + 1], rcond=None)[0]
    return float(((np.c_[Xt, np.ones(len(Xt))] @ W).argmax(1) - 1 == Yt).mean())


def test_difficulty_knob_controls_separability(tmp_path):
    acc = {}
    for d in (0.0, 0.5, 1.0):
        paths = paths_in(tmp_path / str(d))
        ms.generate(**paths, num_videos=40, num_classes=4, feature_size=48, clip_dim=8, difficulty=d, seed=0, progress=False)
        _, split = load_split(paths, 48)
        acc[d] = least_squares_accuracy(split["train"], split["test"])
        background = (split["test"][2] == -1).mean()
    assert acc[0.0] > 0.97
    assert acc[0.0] > acc[0.5] + 0.03 > acc[1.0] + 0.06
    assert acc[1.0] < background + 0.1  # signal nearly buried


def test_signal_lives_in_segments_in_both_streams_and_in_clip(tmp_path):
    paths = paths_in(tmp_path)
    ms.generate(**paths, num_videos=40, num_classes=4, feature_size=64, clip_dim=16, difficulty=0.3, seed=2, progress=False)
    data, split = load_split(paths, 64)
    X, Z, Y = split["train"]
    Xt, Zt, Yt = split["test"]
    assert (X >= 0).all() and (Xt >= 0).all()
    bg = X[Y == -1].mean(0)
    signature = np.stack([X[Y == c].mean(0) - bg for c in range(4)])  # (C, F) class signatures
    h = 32
    for s in signature:  # action raises both the RGB and the flow half
        assert s[:h].sum() > 0 and s[h:].sum() > 0
    assert not np.allclose(signature[:, :h], signature[:, h:], atol=0.05)
    # nearest class signature classifies held-out action snippets
    act = Yt >= 0
    pred = ((Xt[act] - bg) @ signature.T / np.linalg.norm(signature, axis=1)).argmax(1)
    assert (pred == Yt[act]).mean() > 0.8
    # CLIP-like features carry the class too
    clip_sig = np.stack([Z[Y == c].mean(0) - Z[Y == -1].mean(0) for c in range(4)])
    zpred = ((Zt[act] - Z[Y == -1].mean(0)) @ clip_sig.T / np.linalg.norm(clip_sig, axis=1)).argmax(1)
    assert (zpred == Yt[act]).mean() > 0.6
    # scene background sits mostly in the RGB stream
    assert bg[:h].mean() > bg[h:].mean()


# ----------------------------------------------------------------------------- real ground truth
def test_real_thumos_ground_truth_is_kept(tmp_path, thumos_annotations):
    paths = paths_in(tmp_path, "Thumos14reduced")
    record = ms.generate(**paths, annotations=thumos_annotations, feature_size=8, clip_dim=4, progress=False)
    assert record["train_subset"] == "validation" and record["test_subset"] == "test" and record["num_videos"] == 412
    for src in thumos_annotations.iterdir():  # every file copied byte for byte, Ambiguous_test.txt included
        assert (paths["annotation_dir"] / src.name).read_bytes() == src.read_bytes()
    assert (paths["annotation_dir"] / "Ambiguous_test.txt").is_file()
    durations = np.load(thumos_annotations / "duration.npy").reshape(-1)
    features = np.load(paths["feature_file"], allow_pickle=True)
    assert [len(x) for x in features] == np.floor(durations * 25 / 16).astype(int).tolist()
    assert len(list((paths["clip_feature_dir"] / "train").iterdir())) == 200
    assert len(list((paths["clip_feature_dir"] / "test").iterdir())) == 212
    # planted segments follow the real ground truth: action snippets differ from background
    names = [n.decode() for n in np.load(thumos_annotations / "videoname.npy")]
    segments = np.load(thumos_annotations / "segments.npy", allow_pickle=True)
    v = names.index("video_validation_0000051")
    inside = np.zeros(len(features[v]), bool)
    for start, end in segments[v]:
        inside[int(np.ceil(start * 25 / 16)) + 1:int(end * 25 / 16) - 1] = True
    assert inside.any() and features[v][inside].sum(1).mean() > features[v][~inside].sum(1).mean()


def test_subsets_are_inferred_or_refused(tmp_path):
    assert ms._infer_subsets(["training", "validation", "training"]) == ("training", "validation")
    assert ms._infer_subsets(["validation", "test"]) == ("validation", "test")
    with pytest.raises(PECRError, match="train_subset"):
        ms._infer_subsets(["a", "b"])
    with pytest.raises(PECRError, match="--synthetic-annotations"):
        ms.generate(**paths_in(tmp_path), annotations=tmp_path / "missing")
    paths = paths_in(tmp_path)
    with pytest.raises(PECRError, match="ground-truth source"):  # never write over the source annotations
        ms.generate(**paths, annotations=paths["annotation_dir"])


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(PECRError, match="difficulty"):
        ms.generate(**paths_in(tmp_path), difficulty=1.5)
    with pytest.raises(PECRError, match="feature-size"):
        ms.generate(**paths_in(tmp_path), feature_size=1)
    with pytest.raises(PECRError, match="synthetic-videos"):
        ms.generate(**paths_in(tmp_path), num_videos=1)


# ----------------------------------------------------------------------------- ensure_synthetic
def test_ensure_generates_once_then_reuses(tmp_path):
    paths = paths_in(tmp_path / "data")
    opts = opts_for(paths, "--synthetic-videos", "10", "--synthetic-classes", "2", "--feature-size", "8",
                    "--train-subset", "training", "--test-subset", "validation", "--clip-train-split", "tr", "--clip-test-split", "va")
    assert ms.ensure_synthetic(opts, clip_dim=4, progress=False) is True
    stamp = paths["feature_file"].stat().st_mtime_ns
    assert ms.ensure_synthetic(opts, clip_dim=4) is False
    assert paths["feature_file"].stat().st_mtime_ns == stamp
    assert {s.decode() for s in np.load(paths["annotation_dir"] / "subset.npy")} == {"training", "validation"}
    assert len(list((paths["clip_feature_dir"] / "tr").iterdir())) == 5
    data = WTALDataset(opts, clip_dim=4)
    assert data.num_train_videos == 5 and data.feature_size == 8
    opts.synthetic_difficulty = 0.9  # other parameters: regenerated in place
    assert ms.ensure_synthetic(opts, clip_dim=4) is True
    assert json.loads((paths["annotation_dir"] / ms.MARKER).read_text())["request"]["difficulty"] == 0.9
    assert ms.ensure_synthetic(opts, clip_dim=8) is True  # another CLIP width too
    assert WTALDataset(opts).clip_dim == 8


def test_ensure_never_overwrites_foreign_data(tmp_path):
    paths = paths_in(tmp_path)
    paths["annotation_dir"].mkdir(parents=True)
    (paths["annotation_dir"] / "classlist.npy").write_bytes(b"real data")
    with pytest.raises(PECRError, match="not synthetic data"):
        ms.ensure_synthetic(opts_for(paths), clip_dim=4)
    assert (paths["annotation_dir"] / "classlist.npy").read_bytes() == b"real data"


def test_interrupted_generation_leaves_the_targets_untouched(tmp_path, monkeypatch):
    paths = paths_in(tmp_path)
    opts = opts_for(paths, "--synthetic-videos", "12", "--synthetic-classes", "2", "--feature-size", "8")
    assert ms.ensure_synthetic(opts, clip_dim=4) is True
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    real = ms.video_features
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ms, "video_features", failing)
    opts.synthetic_difficulty = 0.9  # another dataset at the same paths: regenerated, interrupted
    with pytest.raises(KeyboardInterrupt):
        ms.ensure_synthetic(opts, clip_dim=4)
    for path, content in before.items():  # the complete previous dataset is still there, unchanged
        assert path.read_bytes() == content
    monkeypatch.setattr(ms, "video_features", real)
    assert ms.ensure_synthetic(opts, clip_dim=4) is True
    assert json.loads((paths["annotation_dir"] / ms.MARKER).read_text())["request"]["difficulty"] == 0.9
    assert WTALDataset(opts, clip_dim=4).num_test_videos == 6
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith((ms.STAGED, ms.RETIRED))]
    assert leftovers == []


def test_options_naming_another_feature_file_never_touch_the_existing_dataset(tmp_path):
    """The data of one synthetic dataset are not rewritten for options that name only part of it."""
    paths = paths_in(tmp_path / "data")
    opts = opts_for(paths, "--synthetic-videos", "10", "--synthetic-classes", "2", "--feature-size", "8")
    ms.ensure_synthetic(opts, clip_dim=4)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for flag, value in (("--feature-file", tmp_path / "x" / "feat.npy"), ("--clip-feature-dir", tmp_path / "otherclip")):
        other = opts_for({**paths, {"--feature-file": "feature_file", "--clip-feature-dir": "clip_feature_dir"}[flag]: value},
                         "--synthetic-videos", "10", "--synthetic-classes", "2", "--feature-size", "8")
        with pytest.raises(PECRError, match=f"holds the synthetic dataset.*{flag} {value}.*left alone"):
            ms.ensure_synthetic(other, clip_dim=4)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "x").exists() and not (tmp_path / "otherclip").exists()


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_the_preset_layout(tmp_path, capsys):
    preset = load_description("synthetic", {a.dest for a in build_parser()._actions})
    expected = ms.dataset_paths("features/synthetic", "Synthetic")
    assert {k: str(v) for k, v in expected.items()} == {k: preset[k] for k in expected}
    record = ms.main(["--out-root", str(tmp_path), "--videos", "6", "--classes", "2", "--feature-size", "8", "--clip-dim", "4",
                      "--difficulty", "0.2", "--seed", "3"])
    assert record["num_videos"] == 6 and record["request"]["difficulty"] == 0.2 and record["request"]["seed"] == 3
    out = capsys.readouterr().out
    assert "--feature-file" in out and str(tmp_path) in out
    paths = paths_in(tmp_path)
    assert paths["feature_file"].is_file() and (paths["annotation_dir"] / ms.MARKER).is_file()
    assert len(list(paths["clip_feature_dir"].rglob("*.npy"))) == 6


def test_cli_names_the_dataset_after_the_annotation_folder(tmp_path):
    src = tmp_path / "Tiny-Annotations"
    ms.generate(**{**paths_in(tmp_path / "src"), "annotation_dir": src}, num_videos=4, num_classes=2, feature_size=4, clip_dim=2, progress=False)
    ms.main(["--out-root", str(tmp_path / "out"), "--annotations", str(src), "--feature-size", "4", "--clip-dim", "2"])
    paths = paths_in(tmp_path / "out", "Tiny")
    assert paths["feature_file"] == tmp_path / "out" / "Tiny" / "Tiny-I3D-JOINTFeatures.npy" and paths["feature_file"].is_file()
    assert np.array_equal(np.load(paths["annotation_dir"] / "videoname.npy"), np.load(src / "videoname.npy"))
