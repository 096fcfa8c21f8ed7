"""dataset.py: W-TALC loading, class phrases, the training sampler (docs/method.md §1) and bad-input errors."""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import dataset as ds
from dataset import TrainBatch, WTALDataset, class_phrase, random_perturb
from options import parse_args
from tools.make_synthetic import generate
from utils.errors import PECRError

ROOT = Path(__file__).resolve().parents[1]

PAPER_PHRASES = {  # docs/method.md §1.2, verbatim
    "BaseballPitch": "baseball pitch", "BasketballDunk": "basketball dunk", "Billiards": "billiards",
    "CleanAndJerk": "clean and jerk", "CliffDiving": "cliff diving", "CricketBowling": "cricket bowling",
    "CricketShot": "cricket shot", "Diving": "diving", "FrisbeeCatch": "frisbee catch", "GolfSwing": "golf swing",
    "HammerThrow": "hammer throw", "HighJump": "high jump", "JavelinThrow": "javelin throw", "LongJump": "long jump",
    "PoleVault": "pole vault", "Shotput": "shot put", "SoccerPenalty": "soccer penalty", "TennisSwing": "tennis swing",
    "ThrowDiscus": "throw discus", "VolleyballSpiking": "volleyball spiking",
}


# ----------------------------------------------------------------------------- a hand-written dataset
def write_dataset(root: Path, features: list, clip: list, labels_all: list, subsets: list, *, classlist=("Jump", "Run", "Swim"),
                  labels: list | None = None, names: list | None = None, clip_split=("train", "test"), skip_clip=()) -> dict:
    """Write the docs/method.md §1.1 layout by hand (independently of tools/make_synthetic.py); returns option overrides."""
    n = len(features)
    names = names or [f"vid_{i:03d}" for i in range(n)]
    ann = root / "Annotations"
    ann.mkdir(parents=True, exist_ok=True)

    def objects(items):
        out = np.empty(len(items), dtype=object)
        for i, x in enumerate(items):
            out[i] = x
        return out

    labels = labels if labels is not None else [list(x) for x in labels_all]
    np.save(ann / "classlist.npy", np.array([c.encode() for c in classlist]))
    np.save(ann / "videoname.npy", np.array([v.encode() for v in names]))
    np.save(ann / "subset.npy", np.array([s.encode() for s in subsets]))
    np.save(ann / "duration.npy", np.array([[len(f) * 0.64] for f in features]))
    np.save(ann / "segments.npy", objects([[[0.0, 1.0]] * len(x) for x in labels]), allow_pickle=True)
    np.save(ann / "labels.npy", objects(labels), allow_pickle=True)
    np.save(ann / "labels_all.npy", objects(labels_all), allow_pickle=True)
    (root / "I3D").mkdir(exist_ok=True)
    np.save(root / "I3D" / "features.npy", objects(features), allow_pickle=True)
    for i, (name, subset) in enumerate(zip(names, subsets)):
        folder = root / "CLIP" / (clip_split[0] if subset == "validation" else clip_split[1])
        folder.mkdir(parents=True, exist_ok=True)
        if i not in skip_clip:
            np.save(folder / f"{name}.npy", clip[i])
    return {"feature_file": root / "I3D" / "features.npy", "annotation_dir": ann, "clip_feature_dir": root / "CLIP"}


def make_opts(paths: dict, *extra: str, feature_size: int) -> object:
    argv = ["--feature-file", str(paths["feature_file"]), "--annotation-dir", str(paths["annotation_dir"]),
            "--clip-feature-dir", str(paths["clip_feature_dir"]), "--feature-size", str(feature_size),
            "--class-phrases", "none", *extra]
    return parse_args(argv)


def coded_dataset(root: Path, lengths=(7, 12, 30, 5, 9, 40, 16, 3), F=8, D=4):
    """Features that encode (video, snippet) in their first columns: I3D[t] = (v, t, ...), CLIP[t] = (v, t, ...)."""
    feats, clip = [], []
    for v, T in enumerate(lengths):
        x = np.random.default_rng(v).random((T, F)).astype(np.float32)
        z = np.random.default_rng(100 + v).standard_normal((T, D)).astype(np.float32)
        x[:, 0] = z[:, 0] = v
        x[:, 1] = z[:, 1] = np.arange(T)
        feats.append(x)
        clip.append(z)
    labels_all = [["Jump"], ["Jump", "Run"], ["Run"], ["Jump"], ["Swim"], ["Run"], ["Jump"], ["Swim", "Run"]]
    subsets = ["validation", "validation", "validation", "validation", "validation", "test", "test", "test"]
    return feats, clip, labels_all[:len(lengths)], subsets[:len(lengths)]


@pytest.fixture
def coded(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    return paths, feats, clip, labels_all, subsets


# ----------------------------------------------------------------------------- class phrases (docs/method.md §1.2)
def test_class_phrase_matches_spec_table_for_all_thumos_names():
    """The default rule gives every THUMOS14 phrase but one; the THUMOS14 description's phrase file has that one."""
    phrase_file = parse_args(["--dataset", "thumos"]).class_phrases
    assert phrase_file == "configs/datasets/thumos_phrases.yaml"
    names = list(PAPER_PHRASES)
    assert ds.class_phrases(names, phrase_file) == [PAPER_PHRASES[n] for n in names]
    assert [n for n in names if class_phrase(n) != PAPER_PHRASES[n]] == ["Shotput"]
    assert ds.read_phrase_file(ROOT / phrase_file) == {"Shotput": "shot put"}


def test_class_phrase_real_thumos_classlist(thumos_annotations):
    classes = [c.decode() for c in np.load(thumos_annotations / "classlist.npy")]
    assert sorted(classes) == sorted(PAPER_PHRASES)
    assert ds.class_phrases(classes, parse_args([]).class_phrases) == [PAPER_PHRASES[c] for c in classes]


def test_class_phrase_activitynet_names_are_lower_cased(anet_annotations):
    classes = [c.decode() for c in np.load(anet_annotations / "classlist.npy")]
    assert [class_phrase(c) for c in classes] == [c.lower() for c in classes]
    assert class_phrase("Tennis serve with ball bouncing") == "tennis serve with ball bouncing"
    assert class_phrase("Ping-pong") == "ping-pong"


# ----------------------------------------------------------------------------- random perturbation (docs/method.md §1.3)
def naive_bins(T: int, L: int) -> list[tuple[int, int]]:
    """[low, high) of the candidates of every bin, written out as the release's rule reads:
    bin i < L-1 draws from floor(iT/L)..floor((i+1)T/L) inclusive when the floors differ, else
    takes floor(iT/L); the last bin draws from floor((L-1)T/L)..T-1; T == L is the identity."""
    if T == L:
        return [(i, i + 1) for i in range(L)]
    out = []
    for i in range(L):
        low = math.floor(Fraction(i * T, L))
        if i < L - 1:
            nxt = math.floor(Fraction((i + 1) * T, L))
            out.append((low, nxt + 1) if nxt != low else (low, low + 1))
        else:
            out.append((low, T) if low < T - 1 else (low, low + 1))
    return out


@pytest.mark.parametrize("T,L", [(1, 5), (3, 8), (7, 7), (10, 3), (320, 320), (1000, 320), (333, 320), (50, 64)])
def test_random_perturb_draws_one_index_inside_each_bin(T, L):
    rng = np.random.default_rng(0)
    idx = random_perturb(rng, np.full(200, T), L)
    assert idx.shape == (200, L) and idx.dtype == np.int64
    bins = naive_bins(T, L)
    low = np.array([b[0] for b in bins])
    high = np.array([b[1] for b in bins])
    assert ((idx >= low) & (idx < high)).all()
    assert (np.diff(idx, axis=1) >= 0).all() and idx.min() >= 0 and idx.max() < T
    if T == L:
        assert (idx == np.arange(L)).all()
    if T < L:
        assert (np.diff(idx, axis=1) == 0).any()  # repeated indices
    if T != L and T > 1:
        assert (high - low > 1).any()  # some bins really are random
        for b in np.flatnonzero(high - low > 1):  # every candidate of a random bin is drawn
            assert set(np.unique(idx[:, b])) == set(range(low[b], high[b]))


def test_random_perturb_is_uniform_within_bins_and_handles_mixed_lengths():
    rng = np.random.default_rng(1)
    idx = random_perturb(rng, np.full(50000, 10), 2)  # bins 0..5 (both ends) and 5..9 (the last)
    for b, values in enumerate((range(0, 6), range(5, 10))):
        freq = np.bincount(idx[:, b], minlength=10)[list(values)] / len(idx)
        assert np.allclose(freq, 1 / len(values), atol=0.01)
    lengths = np.array([3, 64, 100, 1])
    mixed = random_perturb(np.random.default_rng(2), lengths, 64)
    for row, T in zip(mixed, lengths):
        bins = naive_bins(T, 64)
        assert all(lo <= x < hi for x, (lo, hi) in zip(row, bins))


# ----------------------------------------------------------------------------- loading
def test_loader_reads_layout_and_keeps_exact_values(coded):
    paths, feats, clip, labels_all, subsets = coded
    data = WTALDataset(make_opts(paths, feature_size=8))
    assert data.classlist == ["Jump", "Run", "Swim"] and data.class_phrases == ["jump", "run", "swim"]
    assert data.num_classes == 3 and data.feature_size == 8 and data.clip_dim == 4
    assert data.video_names == [f"vid_{i:03d}" for i in range(8)]
    assert data.train_indices.tolist() == [0, 1, 2, 3, 4] and data.test_indices.tolist() == [5, 6, 7]
    assert data.num_train_videos == 5 and data.num_test_videos == 3
    expected = np.zeros((8, 3), np.float32)
    for v, names in enumerate(labels_all):
        for name in names:
            expected[v, data.classlist.index(name)] = 1
    assert data.labels.dtype == np.float32 and (data.labels == expected).all()
    for v in range(8):
        x, z = data.video_features(v)
        assert x.dtype == np.float32 and np.array_equal(x, feats[v]) and np.array_equal(z, clip[v])
    assert data.lengths.tolist() == [len(f) for f in feats]


def test_loader_drops_short_videos_with_min_snippets(coded):
    paths, feats, *_ = coded
    with pytest.warns(UserWarning, match=r"3 of 8 videos have fewer than --min-snippets 8 snippets.*vid_000, vid_003, vid_007"):
        data = WTALDataset(make_opts(paths, "--min-snippets", "8", feature_size=8))
    kept = [v for v, f in enumerate(feats) if len(f) >= 8]
    assert sorted(data.train_indices.tolist() + data.test_indices.tolist()) == kept
    assert (data.lengths[[v for v in range(8) if v not in kept]] == 0).all()


def test_videos_without_snippets_are_named_in_a_warning(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    feats[2], clip[2] = feats[2][:0], clip[2][:0]
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    with pytest.warns(UserWarning, match=r"1 videos have no snippet.*vid_002") as record:
        data = WTALDataset(make_opts(paths, feature_size=8))
    assert 2 not in data.train_indices and 2 not in data.test_indices
    assert not any("min-snippets" in str(w.message) for w in record)


def test_loader_accepts_float64_and_float16_inputs(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    paths = write_dataset(tmp_path, [f.astype(np.float64) for f in feats], [c.astype(np.float16) for c in clip], labels_all, subsets)
    data = WTALDataset(make_opts(paths, feature_size=8))
    x, z = data.video_features(2)
    assert x.dtype == z.dtype == np.float32
    assert np.array_equal(x, feats[2]) and np.array_equal(z, clip[2].astype(np.float16).astype(np.float32))


def test_everything_is_read_once(coded):
    """After construction the files are no longer needed: batches and test videos come from memory."""
    import shutil

    paths, feats, *_ = coded
    data = WTALDataset(make_opts(paths, "--max-seqlen", "8", feature_size=8))
    Path(paths["feature_file"]).unlink()
    shutil.rmtree(paths["clip_feature_dir"])
    assert data.train_batch(np.random.default_rng(0)).features.shape == (10, 8, 8)
    assert [v.features.shape[1] for v in data.test_videos()] == [len(feats[v]) for v in (5, 6, 7)]


def test_equal_length_videos_stacked_by_np_save_are_accepted(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path, lengths=(9,) * 8)
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    np.save(paths["feature_file"], np.stack(feats))  # a plain (N, T, F) array, as np.save makes of equal-length lists
    data = WTALDataset(make_opts(paths, feature_size=8))
    assert np.array_equal(data.video_features(4)[0], feats[4])


def test_length_mismatch_is_aligned_to_the_shorter_with_one_warning(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    clip[1] = clip[1][:-3]  # CLIP shorter
    feats[6] = feats[6][:-2]  # I3D shorter
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    with pytest.warns(UserWarning) as record:
        data = WTALDataset(make_opts(paths, feature_size=8))
    messages = [str(w.message) for w in record if "different lengths" in str(w.message)]
    assert len(messages) == 1 and messages[0].startswith("2 of 8 videos") and "vid_001, vid_006" in messages[0]
    assert data.lengths[1] == len(clip[1]) and data.lengths[6] == len(feats[6])
    x, z = data.video_features(1)
    assert np.array_equal(x, feats[1][:len(clip[1])]) and np.array_equal(z, clip[1])


# ----------------------------------------------------------------------------- training batches
def test_train_batch_pairs_share_a_class_and_indices_match(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    opts = make_opts(paths, "--batch-size", "9", "--num-similar", "3", "--max-seqlen", "16", feature_size=8)
    data = WTALDataset(opts)
    rng = np.random.default_rng(0)
    pair_classes, rest = [], []
    for _ in range(300):
        batch = data.train_batch(rng)
        assert isinstance(batch, TrainBatch)
        assert batch.features.shape == (9, 16, 8) and batch.clip_features.shape == (9, 16, 4) and batch.labels.shape == (9, 3)
        assert batch.features.dtype == batch.clip_features.dtype == batch.labels.dtype == torch.float32
        idx = batch.indices
        assert np.isin(idx, data.train_indices).all()
        for k in range(3):
            a, b = idx[2 * k], idx[2 * k + 1]
            assert a != b
            shared = np.flatnonzero(data.labels[a] * data.labels[b])
            assert len(shared) >= 1
            pair_classes.append(tuple(shared))
        rest.extend(idx[6:].tolist())
        # the video and snippet encoded in the features: the same rows for I3D and CLIP, inside each bin
        assert torch.equal(batch.features[..., :2], batch.clip_features[..., :2])
        assert (batch.features[..., 0].numpy() == idx[:, None]).all()
        snippets = batch.features[..., 1].numpy().astype(int)
        for row, v in zip(snippets, idx):
            assert all(lo <= s < hi for s, (lo, hi) in zip(row, naive_bins(int(data.lengths[v]), 16)))
        assert torch.equal(batch.labels, torch.from_numpy(data.labels[idx]))
    # training videos per class: Jump {0,1,3}, Run {1,2}, Swim {4}: Swim (one video) never forms a pair;
    # Jump and Run are drawn uniformly (a pair shares exactly one class: only video 1 has both).
    flat = [c for pair in pair_classes for c in pair]
    assert 2 not in flat
    jump, run = pair_classes.count((0,)), pair_classes.count((1,))
    assert jump + run == len(pair_classes) and abs(jump - run) < 0.15 * len(pair_classes)
    counts = np.bincount(rest, minlength=8)[data.train_indices]
    assert (counts > 0).all() and counts.std() < 0.25 * counts.mean()  # uniform over all training videos


def test_train_batch_gathers_exact_rows(coded):
    paths, feats, clip, *_ = coded
    data = WTALDataset(make_opts(paths, "--max-seqlen", "12", feature_size=8))
    batch = data.train_batch(np.random.default_rng(5))
    for b, v in enumerate(batch.indices):
        rows = batch.features[b, :, 1].numpy().astype(int)
        assert np.array_equal(batch.features[b].numpy(), feats[v][rows])
        assert np.array_equal(batch.clip_features[b].numpy(), clip[v][rows])


def test_train_batch_is_reproducible_from_the_generator(coded):
    paths, *_ = coded
    data = WTALDataset(make_opts(paths, "--max-seqlen", "10", feature_size=8))
    a = data.train_batch(np.random.default_rng(42))
    b = data.train_batch(np.random.default_rng(42))
    assert np.array_equal(a.indices, b.indices) and torch.equal(a.features, b.features)


def test_train_batch_errors(coded):
    paths, *_ = coded
    with pytest.raises(PECRError, match="--batch-size 4"):  # refused when the options are parsed
        make_opts(paths, "--batch-size", "4", "--num-similar", "3", feature_size=8)
    opts = make_opts(paths, feature_size=8)
    data = WTALDataset(opts)
    opts.batch_size = 4  # set after parsing: the sampler still says what is wrong
    with pytest.raises(PECRError, match="--batch-size 4"):
        data.train_batch(np.random.default_rng(0))


def test_no_pairable_class_is_a_clear_error(tmp_path):
    feats, clip, _, subsets = coded_dataset(tmp_path)
    labels_all = [["Jump"], ["Run"], ["Swim"], [], [], ["Jump"], ["Run"], ["Swim"]]
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    data = WTALDataset(make_opts(paths, feature_size=8))
    with pytest.raises(PECRError, match="--num-similar 0"):
        data.train_batch(np.random.default_rng(0))
    data.opts.num_similar = 0
    assert data.train_batch(np.random.default_rng(0)).features.shape[0] == 10


# ----------------------------------------------------------------------------- test iteration
def test_test_videos_whole_videos_in_order(coded):
    paths, feats, clip, *_ = coded
    data = WTALDataset(make_opts(paths, feature_size=8))
    videos = list(data.test_videos(device="cpu"))
    assert [v.index for v in videos] == [5, 6, 7] and [v.name for v in videos] == ["vid_005", "vid_006", "vid_007"]
    for v in videos:
        assert isinstance(v, ds.TestVideo)
        assert v.features.shape == (1, len(feats[v.index]), 8) and v.clip_features.shape == (1, len(feats[v.index]), 4)
        assert v.features.dtype == torch.float32 and v.features.device.type == "cpu"
        assert np.array_equal(v.features[0].numpy(), feats[v.index]) and np.array_equal(v.clip_features[0].numpy(), clip[v.index])
        assert torch.equal(v.labels, torch.from_numpy(data.labels[v.index]))
    videos[0].features.zero_()  # callers may modify their tensors: the dataset keeps its own copy
    assert np.array_equal(data.video_features(5)[0], feats[5])


# ----------------------------------------------------------------------------- synthetic + real annotations
def test_loader_on_generated_synthetic_dataset(tmp_path):
    root = tmp_path / "syn"
    paths = {"feature_file": root / "S" / "S-I3D-JOINTFeatures.npy", "annotation_dir": root / "S-Annotations", "clip_feature_dir": root / "S-CLIP"}
    generate(**paths, num_videos=20, num_classes=3, feature_size=12, clip_dim=5, seed=3, progress=False)
    data = WTALDataset(make_opts(paths, "--max-seqlen", "32", feature_size=12))
    subsets = [s.decode() for s in np.load(paths["annotation_dir"] / "subset.npy")]
    assert data.train_indices.tolist() == [i for i, s in enumerate(subsets) if s == "validation"]
    assert data.test_indices.tolist() == [i for i, s in enumerate(subsets) if s == "test"]
    durations = np.load(paths["annotation_dir"] / "duration.npy").reshape(-1)
    assert data.lengths.tolist() == np.floor(durations * 25 / 16).astype(int).tolist()
    raw = np.load(paths["feature_file"], allow_pickle=True)
    assert all(np.array_equal(data.video_features(v)[0], raw[v]) for v in range(20))
    assert data.clip_dim == 5 and data.train_batch(np.random.default_rng(0)).clip_features.shape == (10, 32, 5)


def test_loader_on_real_thumos_annotations(tmp_path, thumos_annotations):
    root = tmp_path
    paths = {"feature_file": root / "T" / "T-I3D-JOINTFeatures.npy", "annotation_dir": root / "T-Annotations", "clip_feature_dir": root / "T-CLIP"}
    generate(**paths, annotations=thumos_annotations, feature_size=16, clip_dim=8, progress=False)
    data = WTALDataset(make_opts(paths, "--class-phrases", parse_args([]).class_phrases, feature_size=16), clip_dim=8)
    assert data.num_classes == 20 and len(data.video_names) == 412
    assert data.num_train_videos == 200 and data.num_test_videos == 212
    assert all(data.subsets[v] == "validation" for v in data.train_indices) and all(data.subsets[v] == "test" for v in data.test_indices)
    durations = np.load(thumos_annotations / "duration.npy").reshape(-1)
    assert data.lengths.tolist() == np.floor(durations * 25 / 16).astype(int).tolist()
    labels_all = np.load(thumos_annotations / "labels_all.npy", allow_pickle=True)
    naive = np.array([[float(c in list(labels_all[v])) for c in data.classlist] for v in range(412)], np.float32)
    assert np.array_equal(data.labels, naive)
    assert data.labels[data.video_names.index("video_test_0000270")].sum() == 0  # empty labels_all in the release
    assert data.class_phrases == [PAPER_PHRASES[c] for c in data.classlist]
    assert data.segments[0].shape[1] == 2 and len(data.segment_labels[0]) == len(data.segments[0])
    batch = data.train_batch(np.random.default_rng(0), device="cpu")
    assert batch.features.shape == (10, 320, 16) and batch.clip_features.shape == (10, 320, 8)
    assert sum(1 for _ in data.test_videos()) == 212


def test_loader_on_real_activitynet_annotations(tmp_path, anet_annotations):
    names = [v.decode() for v in np.load(anet_annotations / "videoname.npy")]
    subsets = [s.decode() for s in np.load(anet_annotations / "subset.npy")]
    n = len(names)
    lengths = np.random.default_rng(0).integers(4, 16, size=n)  # small T; about half at or below 10 snippets
    feats = np.empty(n, dtype=object)
    for v, T in enumerate(lengths):
        feats[v] = np.full((T, 4), v % 7, dtype=np.float32)
    (tmp_path / "I3D").mkdir()
    np.save(tmp_path / "I3D" / "f.npy", feats, allow_pickle=True)
    for split in ("train", "test"):
        (tmp_path / "CLIP" / split).mkdir(parents=True)
    for v, (name, subset) in enumerate(zip(names, subsets)):
        np.save(tmp_path / "CLIP" / ("train" if subset == "training" else "test") / f"{name}.npy", np.zeros((lengths[v], 3), np.float16))
    paths = {"feature_file": tmp_path / "I3D" / "f.npy", "annotation_dir": anet_annotations, "clip_feature_dir": tmp_path / "CLIP"}
    opts = make_opts(paths, "--dataset", "activitynet", feature_size=4)
    assert opts.min_snippets == 11 and opts.train_subset == "training" and opts.test_subset == "validation"
    with pytest.warns(UserWarning, match="fewer than --min-snippets 11"):  # the protocol's drop is reported
        data = WTALDataset(opts, progress=False)
    assert n == 7202 and data.num_classes == 100 and data.clip_dim == 3
    long = lengths > 10
    assert data.train_indices.tolist() == [v for v in range(n) if subsets[v] == "training" and long[v]]
    assert data.test_indices.tolist() == [v for v in range(n) if subsets[v] == "validation" and long[v]]
    assert data.class_phrases[2] == "bathing dog"
    batch = data.train_batch(np.random.default_rng(0))
    assert batch.features.shape == (10, 60, 4) and batch.clip_features.shape == (10, 60, 3)
    assert (batch.features[:, :, 0].numpy() == (batch.indices % 7)[:, None]).all()


# ----------------------------------------------------------------------------- bad input
def expect_error(opts, *fragments: str, clip_dim=None):
    with pytest.raises(PECRError) as info:
        WTALDataset(opts, clip_dim=clip_dim)
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_missing_paths_point_at_the_readme(coded, tmp_path):
    paths, *_ = coded
    expect_error(make_opts({**paths, "feature_file": tmp_path / "nope.npy"}, feature_size=8), "nope.npy", "features/README.md", "--feature-file")
    expect_error(make_opts({**paths, "annotation_dir": tmp_path / "noann"}, feature_size=8), "noann", "features/README.md", "--annotation-dir")
    expect_error(make_opts({**paths, "clip_feature_dir": tmp_path / "noclip"}, feature_size=8), "noclip", "features/README.md", "--clip-feature-dir")
    expect_error(make_opts(paths, "--clip-train-split", "training", feature_size=8), "training", "--clip-train-split")
    (Path(paths["annotation_dir"]) / "labels_all.npy").unlink()
    expect_error(make_opts(paths, feature_size=8), "labels_all.npy", "features/README.md")


def test_missing_clip_file_names_it_and_the_options(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets, skip_clip=(2, 6))
    message = expect_error(make_opts(paths, feature_size=8), "vid_002.npy", "1 more", "--clip-feature-dir", "--clip-train-split")
    assert "train" in message


def test_class_missing_from_classlist(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    labels_all[3] = ["Jump", "Fly"]
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    expect_error(make_opts(paths, feature_size=8), "'Fly'", "vid_003", "classlist.npy")
    labels_all[3] = ["Jump"]
    segment_labels = [list(x) for x in labels_all]
    segment_labels[4] = ["Dive"]
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets, labels=segment_labels)
    expect_error(make_opts(paths, feature_size=8), "'Dive'", "vid_004", "labels.npy")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_name_the_video(tmp_path, bad):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    feats[2][4, 3] = bad
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    expect_error(make_opts(paths, feature_size=8), "vid_002", "NaN or inf", "snippet 4")
    feats[2][4, 3] = 0
    clip[6][1, 2] = bad
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    expect_error(make_opts(paths, feature_size=8), "vid_006", "NaN or inf", "snippet 1")


def test_shape_errors(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    expect_error(make_opts(paths, feature_size=2048), "vid_000", "8 wide", "--feature-size 8")
    expect_error(make_opts(paths, feature_size=8), "vid_000", "4 wide", "1024", clip_dim=1024)
    bad = list(feats)
    bad[1] = feats[1].reshape(-1)
    paths = write_dataset(tmp_path, bad, clip, labels_all, subsets)
    expect_error(make_opts(paths, feature_size=8), "vid_001", "2-D")
    bad_clip = list(clip)
    bad_clip[5] = clip[5][None]
    paths = write_dataset(tmp_path, feats, bad_clip, labels_all, subsets)
    expect_error(make_opts(paths, feature_size=8), "vid_005", "2-D")
    bad_clip[5] = clip[5][:, :3]  # widths differ between videos (clip_dim inferred from the first)
    paths = write_dataset(tmp_path, feats, bad_clip, labels_all, subsets)
    expect_error(make_opts(paths, feature_size=8), "vid_005", "3 wide")


def test_feature_count_must_match_videoname(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    objects = np.empty(7, dtype=object)
    for i in range(7):
        objects[i] = feats[i]
    np.save(paths["feature_file"], objects, allow_pickle=True)
    expect_error(make_opts(paths, feature_size=8), "7 videos", "lists 8", "videoname.npy")


def test_corrupt_or_wrong_kind_of_feature_file(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    Path(paths["feature_file"]).write_bytes(b"not a numpy file")
    expect_error(make_opts(paths, feature_size=8), "cannot read", "features.npy")
    np.save(paths["feature_file"], np.zeros((8, 6)))
    expect_error(make_opts(paths, feature_size=8), "object array")


def test_unknown_subset_names_the_option(coded):
    paths, *_ = coded
    expect_error(make_opts(paths, "--train-subset", "training", feature_size=8), "'training'", "--train-subset", "validation")
    expect_error(make_opts(paths, "--min-snippets", "100", feature_size=8), "--min-snippets")


# ----------------------------------------------------------------------------- per-video feature folders, lazy loading
def feature_folder(paths: dict, feats: list, names=None) -> Path:
    """The I3D features as <folder>/<video>.npy (video 3 as float64, to exercise the conversion)."""
    folder = Path(paths["feature_file"]).parent / "per-video"
    folder.mkdir(exist_ok=True)
    for v, x in enumerate(feats):
        np.save(folder / f"{(names or [f'vid_{i:03d}' for i in range(len(feats))])[v]}.npy", x.astype(np.float64) if v == 3 else x)
    return folder


def test_lazy_and_memory_loading_give_identical_batches_and_test_videos(coded):
    paths, feats, clip, *_ = coded
    folder = feature_folder(paths, feats)
    loaded = {}
    for name, source, mode in (("array", paths["feature_file"], "auto"), ("memory", folder, "memory"), ("lazy", folder, "lazy"),
                               ("auto", folder, "auto")):
        loaded[name] = WTALDataset(make_opts({**paths, "feature_file": source}, "--feature-loading", mode, "--max-seqlen", "24",
                                             feature_size=8))
    assert [d.feature_loading for d in loaded.values()] == ["memory", "memory", "lazy", "memory"]  # auto: small, in memory
    rngs = {name: np.random.default_rng(11) for name in loaded}
    for _ in range(30):
        batches = {name: data.train_batch(rngs[name]) for name, data in loaded.items()}
        reference = batches["array"]
        for batch in batches.values():
            assert np.array_equal(batch.indices, reference.indices)
            assert torch.equal(batch.features, reference.features) and torch.equal(batch.clip_features, reference.clip_features)
            assert torch.equal(batch.labels, reference.labels) and batch.features.dtype == torch.float32
    for videos in zip(*(data.test_videos() for data in loaded.values())):
        for video in videos:
            assert video.name == videos[0].name and torch.equal(video.features, videos[0].features)
            assert torch.equal(video.clip_features, videos[0].clip_features)
    x, z = loaded["lazy"].video_features(3)
    assert x.dtype == np.float32 and np.array_equal(x, feats[3]) and np.array_equal(z, clip[3])


def test_auto_loading_goes_lazy_above_the_memory_budget(coded):
    paths, feats, *_ = coded
    folder = feature_folder(paths, feats)
    data = WTALDataset(make_opts({**paths, "feature_file": folder}, "--feature-memory-gb", "0", feature_size=8))
    assert data.feature_loading == "lazy" and not hasattr(data._i3d, "data")  # nothing stacked in memory
    with pytest.raises(PECRError, match="tools/split_features.py") as info:
        WTALDataset(make_opts(paths, "--feature-loading", "lazy", feature_size=8))  # an object array is read whole
    assert "--feature-file" in str(info.value)


def test_split_features_tool_writes_the_folder_the_loader_reads(coded, tmp_path):
    from tools.split_features import main as split

    paths, feats, *_ = coded
    assert split(["--features", str(paths["feature_file"]), "--annotations", str(paths["annotation_dir"]), "--out", str(tmp_path / "split")]) == 0
    lazy = WTALDataset(make_opts({**paths, "feature_file": tmp_path / "split"}, "--feature-loading", "lazy", feature_size=8))
    assert all(np.array_equal(lazy.video_features(v)[0], feats[v]) for v in range(8))


def test_lazy_loading_checks_headers_at_start_and_values_when_read(tmp_path):
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    folder = feature_folder(paths, feats)
    lazy = lambda *extra: make_opts({**paths, "feature_file": folder}, "--feature-loading", "lazy", *extra, feature_size=8)
    np.save(folder / "vid_004.npy", feats[4][:, :6])
    expect_error(lazy(), "vid_004.npy", "6 wide", "--feature-size 6")
    np.save(folder / "vid_004.npy", feats[4])
    (folder / "vid_006.npy").unlink()
    expect_error(lazy(), "vid_006.npy not found", "--feature-file")
    bad = feats[6].copy()
    bad[5, 2] = np.nan
    np.save(folder / "vid_006.npy", bad)
    data = WTALDataset(lazy("--num-similar", "0"))  # headers only: starts
    with pytest.raises(PECRError, match=r"video vid_006 .* NaN or inf \(first at snippet 5\)"):
        data.test_video(6)
    bad = feats[2].copy()
    bad[:, 0] = np.inf  # every snippet of training video 2
    np.save(folder / "vid_002.npy", bad)
    rng = np.random.default_rng(0)
    with pytest.raises(PECRError, match=r"I3D features of video vid_002 .* NaN or inf"):
        for _ in range(50):  # 10 of 5 training videos a batch: video 2 is drawn
            data.train_batch(rng)
    with pytest.raises(PECRError, match=r"video vid_002 .* snippet 0"):  # memory loading checks every value at start
        WTALDataset(make_opts({**paths, "feature_file": folder}, "--feature-loading", "memory", feature_size=8))


def test_features_kept_on_the_device_give_the_same_batches_and_videos(tmp_path):
    """--features-on-device on (here the CPU stands in for the GPU): batches gathered from the resident
    tensors equal those gathered on the host, for the same generator; auto keeps nothing resident on the CPU."""
    feats, clip, labels_all, subsets = coded_dataset(tmp_path)
    paths = write_dataset(tmp_path, feats, clip, labels_all, subsets)
    host = WTALDataset(make_opts(paths, "--max-seqlen", "16", feature_size=8))
    resident = WTALDataset(make_opts(paths, "--max-seqlen", "16", "--features-on-device", "on", feature_size=8))
    assert host.keep_on_device("cpu") is False and resident.keep_on_device("cpu") is True
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(5):
        x, y = host.train_batch(a, "cpu"), resident.train_batch(b, "cpu")
        assert np.array_equal(x.indices, y.indices)
        for name in ("features", "clip_features", "labels"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name
    for u, v in zip(host.test_videos("cpu"), resident.test_videos("cpu")):
        assert u.name == v.name and torch.equal(u.features, v.features)
    off = WTALDataset(make_opts(paths, "--features-on-device", "off", feature_size=8))
    assert off.keep_on_device("cpu") is False
