"""tools/visualize.py: the data steps against their inputs, the PNGs, the commands' bad input."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import options
from eval.detection import detection_ap
from eval.raw import load_raw, save_raw
from eval.scoring import RawPredictions, Reference, VideoOutput
from tools import visualize as viz
from utils.errors import PECRError

SPF = 16 / 25  # seconds per snippet of the synthetic preset
CLASSES = ["Jump", "Run", "Swim"]


def make_raw(path):
    """Three videos: v1 (T=20) with ground truth of Jump and high CAS for Jump and Swim, v2 (T=10) with
    Run, v3 (T=15) without ground truth; v9 has ground truth but no predictions (a dropped video)."""
    rng = np.random.default_rng(0)
    videos = []
    for name, T in (("v1", 20), ("v2", 10), ("v3", 15)):
        cas = rng.normal(0, 0.5, (T, 4)).astype(np.float32)
        if name == "v1":
            cas[:, [0, 2]] += 5
            cas[:, [1, 3]] -= 5
        att_v, att_f = rng.uniform(0, 1, T).astype(np.float32), rng.uniform(0, 1, T).astype(np.float32)
        videos.append(VideoOutput(name, cas, (att_v + att_f) / 2, att_v, att_f))
    labels = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=np.float32)
    gt = pd.DataFrame({"video-id": ["v1", "v1", "v2", "v9"], "label": np.array([0, 0, 1, 2]),
                       "t-start": np.array([5, 14, 2, 0]), "t-end": np.array([10, 17, 6, 3])})
    reference = Reference(gt, {"v1": np.array([[0.0, 1.28]])})
    opts = options.options_to_dict(options.parse_args(["--dataset", "synthetic"]))
    save_raw(path, RawPredictions(videos, labels), reference, CLASSES, opts, 42)
    return load_raw(path)


@pytest.fixture
def raw(tmp_path):
    return make_raw(tmp_path / "raw_predictions.npz")


DETECTIONS = pd.DataFrame({
    "video-id": ["v1", "v1", "v1", "v1", "v1", "v2"],
    "label": np.array([0, 0, 0, 0, 2, 1]),
    "t-start": np.array([5, 6, 14, 0, 1, 2]), "t-end": np.array([10, 8, 16, 2, 3, 6]),
    "score": np.array([0.9, 0.5, 0.7, 0.1, 0.3, 0.8])})


# ----------------------------------------------------------------------------- per-video AP and selection

def naive_video_ap(gt, det, tiou, num_classes):
    out = {}
    for video in pd.unique(pd.concat([gt["video-id"], det["video-id"]])):
        g, d = gt[gt["video-id"] == video], det[det["video-id"] == video]
        out[video] = np.nan if g.empty else float(np.nanmean(detection_ap(g, d, [tiou], num_classes)[0]))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_per_video_ap_equals_one_evaluation_per_video(seed):
    rng = np.random.default_rng(seed)
    def table(n, scored):
        s = rng.integers(0, 40, n)
        df = pd.DataFrame({"video-id": rng.choice(["a", "b", "c", "d"], n), "label": rng.integers(0, 3, n),
                           "t-start": s, "t-end": s + rng.integers(1, 15, n)})
        return df.assign(score=rng.uniform(0, 1, n)) if scored else df
    gt, det = table(12, False), table(60, True)
    gt = gt[gt["video-id"] != "d"]  # d: detections only
    got = viz.per_video_ap(gt, det, 0.3, 3)
    expected = naive_video_ap(gt, det, 0.3, 3)
    assert set(got.index) == set(expected)
    for video, value in expected.items():
        assert (np.isnan(value) and np.isnan(got[video])) or got[video] == pytest.approx(value, abs=1e-12), video


def test_per_video_ap_targets():
    gt = pd.DataFrame({"video-id": ["a", "b"], "label": [0, 1], "t-start": [0, 0], "t-end": [10, 10]})
    det = pd.DataFrame({"video-id": ["a", "a", "b"], "label": [0, 2, 0], "t-start": [0, 0, 0], "t-end": [10, 5, 10],
                        "score": [0.5, 0.9, 0.9]})
    ap = viz.per_video_ap(gt, det, 0.5, 3)
    assert ap["a"] == 1.0  # the class-2 false positive does not count: class 2 is not in a's ground truth
    assert ap["b"] == 0.0  # b's Run has no detection


def test_choose_videos():
    names = ["a", "b", "c", "d", "e"]
    ap = pd.Series({"a": 0.2, "b": np.nan, "c": 0.9, "d": 0.2, "e": 0.5})
    assert viz.choose_videos(names, ap, worst=2) == ["a", "d"]  # ties keep the names' order; NaN never chosen
    assert viz.choose_videos(names, ap, best=2) == ["c", "e"]
    assert viz.choose_videos(names, ap, ["b", "c"], worst=1, best=1) == ["b", "c", "a"]  # no repeats
    assert viz.choose_videos(names, ap, worst=10) == ["a", "d", "e", "c"]
    with pytest.raises(PECRError, match="'zz' is not in the raw predictions file"):
        viz.choose_videos(names, ap, ["zz"])


# ----------------------------------------------------------------------------- data steps

def test_video_figure_shows_the_inputs(raw):
    opts = options.parse_args(["--dataset", "synthetic"])
    fig = viz.video_figure(raw, "v1", DETECTIONS, raw.reference.ground_truth, raw.reference.ambiguous, opts,
                           ap=0.625, tiou=0.5, top=3)
    T = 20
    video = raw.predictions.video("v1")
    assert fig.xlim == (0.0, pytest.approx(T * SPF))
    assert fig.title.startswith("v1: AP@0.5 = 62.5%") and "2 ground-truth segments" in fig.title
    # class probabilities: Jump (ground truth) then Swim (predicted, not in the ground truth)
    assert [s.label for s in fig.cas] == ["Jump (GT, predicted)", "Swim (predicted)"]
    assert [s.style for s in fig.cas] == ["-", "--"]
    z = np.exp(video.cas.astype(np.float64))
    for s, c in zip(fig.cas, (0, 2)):
        assert np.allclose(s.x, (np.arange(T) + 0.5) * SPF)
        assert np.allclose(s.y, z[:, c] / z.sum(axis=1))
    assert [s.label for s in fig.attention] == ["A", "A_V (RGB)", "A_F (flow)"]
    for s, a in zip(fig.attention, (video.attention, video.attention_v, video.attention_f)):
        assert np.array_equal(s.y, a.astype(np.float64))
    # lanes: each class's ground truth, then its top detections by score
    assert fig.lanes == ["GT Jump", "#1 Jump", "#2 Jump", "#3 Jump", "GT Swim", "#1 Swim"]
    gt_bars = [(s.lane, s.start, s.end) for s in fig.segments if not s.text]
    assert gt_bars == [(0, pytest.approx(5 * SPF), pytest.approx(10 * SPF)), (0, pytest.approx(14 * SPF), pytest.approx(17 * SPF))]
    bars = {s.lane: s for s in fig.segments if s.text}
    assert [bars[k].text for k in (1, 2, 3, 5)] == ["0.90 | tIoU 1.00", "0.70 | tIoU 0.67", "0.50 | tIoU 0.40", "0.30 | no GT"]
    assert (bars[1].start, bars[1].end) == (pytest.approx(5 * SPF), pytest.approx(10 * SPF))
    assert bars[1].alpha == 1.0 and bars[5].alpha == 0.25 and bars[1].alpha > bars[2].alpha > bars[3].alpha > bars[5].alpha
    assert {s.color for s in fig.segments if s.lane < 4} == {0} and bars[5].color == 1  # the class's curve colour
    assert fig.ambiguous == [(0.0, 1.28)]
    assert fig.size[0] == viz.WIDTH and fig.size[1] > 5


def test_video_figure_without_ground_truth(raw):
    opts = options.parse_args(["--dataset", "synthetic"])
    fig = viz.video_figure(raw, "v3", DETECTIONS, raw.reference.ground_truth, None, opts, np.nan, 0.5)
    assert "no ground truth" in fig.title and fig.ambiguous == []
    assert all(label.endswith("(predicted)") for label in (s.label for s in fig.cas))
    with pytest.raises(PECRError, match="'v7' is not among"):
        viz.video_figure(raw, "v7", DETECTIONS, raw.reference.ground_truth, None, opts, np.nan, 0.5)


def records():
    tiou = [0.1 * i for i in range(1, 10)]
    out = []
    for it, level in ((0, 0.1), (50, 0.4), (100, 0.5)):
        mAP = [level * (1 - t) for t in tiou]
        out.append({"iteration": it, "tiou": tiou, "mAP": mAP, "cmAP": 0.5,
                    "average_mAP": {"0.1:0.7": float(np.mean(mAP[:7])), "0.3:0.7": float(np.mean(mAP[2:7]))},
                    "ap_per_class": {"classes": CLASSES, "ap": [[level, None, level / 2]] * 9}})
    return out


def test_map_chart():
    chart = viz.map_chart(records(), "thumos", "run")
    assert [s.label for s in chart.series] == [f"tIoU {0.1 * i:g}" for i in range(1, 10)] + ["mean 0.1:0.7", "mean 0.3:0.7"]
    assert np.array_equal(chart.series[0].x, [0, 50, 100])
    assert np.allclose(chart.series[4].y, [100 * lvl * 0.5 for lvl in (0.1, 0.4, 0.5)])  # tIoU 0.5
    assert np.allclose(chart.series[-2].y, [100 * r["average_mAP"]["0.1:0.7"] for r in records()])
    with pytest.raises(PECRError, match="no evaluation record"):
        viz.map_chart([], "thumos", "run")


def test_class_ap_chart():
    record = records()[-1]
    chart = viz.class_ap_chart(record, 0.5, "run")
    assert chart.labels == ["Jump", "Swim"]  # highest first; Run (no ground truth) left out
    assert np.allclose(chart.values, [50, 25])
    assert chart.reference[1] == pytest.approx(100 * record["mAP"][4])
    assert "iteration 100" in chart.title
    with pytest.raises(PECRError, match="no AP at tIoU 0.55"):
        viz.class_ap_chart(record, 0.55, "run")
    with pytest.raises(PECRError, match="no per-class AP"):
        viz.class_ap_chart({k: v for k, v in record.items() if k != "ap_per_class"}, 0.5, "run")


def test_read_records(tmp_path):
    with pytest.raises(PECRError, match="has no metrics.jsonl or metrics.json"):
        viz.read_records(tmp_path)
    with pytest.raises(PECRError, match="not found"):
        viz.read_records(tmp_path / "nope")
    (tmp_path / "metrics.json").write_text(json.dumps(records()[0]) + "\n")
    assert viz.read_records(tmp_path)[0] == [records()[0]]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()) + "{oops\n")
    with pytest.raises(PECRError, match="metrics.jsonl:4 is not a JSON record"):
        viz.read_records(tmp_path)


# ----------------------------------------------------------------------------- drawing

def assert_png(path, size_inches, dpi):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (round(size_inches[0] * dpi), round(size_inches[1] * dpi))


def test_drawing_writes_pngs_of_the_expected_size(raw, tmp_path):
    opts = options.parse_args(["--dataset", "synthetic"])
    fig = viz.video_figure(raw, "v1", DETECTIONS, raw.reference.ground_truth, raw.reference.ambiguous, opts, 0.5, 0.5)
    assert_png(viz.draw_video(fig, tmp_path / "v1.png", dpi=40), fig.size, 40)
    lines = viz.map_chart(records(), "thumos", "run")
    assert_png(viz.draw_lines(lines, tmp_path / "map.png", dpi=40), lines.size, 40)
    bars = viz.class_ap_chart(records()[-1], 0.5, "run")
    assert_png(viz.draw_bars(bars, tmp_path / "ap.png", dpi=40), bars.size, 40)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ap.png", "map.png", "raw_predictions.npz", "v1.png"]  # no temporaries


# ----------------------------------------------------------------------------- commands

def test_videos_command(raw, tmp_path, capsys):
    out = tmp_path / "figs"
    assert viz.main(["videos", "--raw", str(raw.path), "--out-dir", str(out), "--dpi", "30"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["v1.png", "v2.png"]  # worst / best of the videos with ground truth
    assert viz.main(["videos", "--raw", str(raw.path), "--videos", "v3", "--out-dir", str(out / "one"), "--dpi", "30",
                     "--act-s", "0.5"]) == 0
    assert [p.name for p in (out / "one").iterdir()] == ["v3.png"]
    assert viz.main(["videos", "--raw", str(raw.path), "--dpi", "30", "--best", "1"]) == 0
    assert (raw.path.parent / "figures").is_dir()  # default: beside the raw file
    capsys.readouterr()


def test_run_command(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()))
    assert viz.main(["run", "--run", str(run), "--dpi", "30", "--tiou", "0.3", "--iteration", "50"]) == 0
    assert sorted(p.name for p in (run / "figures").iterdir()) == ["ap_per_class_tiou0.3.png", "map_vs_iteration.png"]
    capsys.readouterr()


def test_commands_refuse_bad_input_in_one_line(raw, tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    out = tmp_path / "out"
    cases = [
        (["videos", "--raw", str(raw.path), "--videos", "nope", "--out-dir", str(out)], "'nope' is not in the raw predictions file"),
        (["videos", "--raw", str(tmp_path / "missing.npz"), "--out-dir", str(out)], "not found"),
        (["videos", "--raw", str(raw.path), "--tiou", "1.5", "--out-dir", str(out)], "--tiou 1.5 is out of range"),
        (["videos", "--raw", str(raw.path), "--out-dir", str(raw.path / "sub")], "cannot write to"),
        (["run", "--run", str(empty), "--out-dir", str(out)], "has no metrics.jsonl or metrics.json"),
        (["videos", "--raw", str(raw.path), "--lr", "1", "--out-dir", str(out)], "--lr cannot be changed"),
    ]
    for args, words in cases:
        assert viz.main(args) == 2, args
        err = capsys.readouterr().err
        assert words in err and err.strip().count("\n") == 0, err
        assert not out.exists()  # nothing written
    (empty / "metrics.jsonl").write_text(json.dumps(records()[0]) + "\n")
    assert viz.main(["run", "--run", str(empty), "--iteration", "7", "--out-dir", str(out)]) == 2
    assert "no evaluation at iteration 7" in capsys.readouterr().err and not out.exists()
