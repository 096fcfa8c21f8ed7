"""Ground truth from the W-TALC folder and the ActivityNet JSON converter (docs/method.md §1.1, §6)."""
import json
from collections import Counter

import numpy as np
import pytest

from eval import annotations
from eval.annotations import load_wtalc_ground_truth, to_snippets, wtalc_classes
from eval.detection import load_activitynet_ground_truth
from utils.errors import PECRError


def raw_counts(folder, subset):
    """Segments per class name of one subset, read straight from the .npy files."""
    names = np.load(folder / "subset.npy")
    labels = np.load(folder / "labels.npy", allow_pickle=True)
    return Counter(str(l) for s, ls in zip(names, labels) if s.decode() == subset for l in ls)


def test_thumos_test_ground_truth(thumos_annotations):
    gt = load_wtalc_ground_truth(thumos_annotations, "test")
    classes = wtalc_classes(thumos_annotations)
    assert len(classes) == 20 and gt["video-id"].nunique() == 212 and len(gt) == 3358
    assert Counter(classes[c] for c in gt["label"]) == raw_counts(thumos_annotations, "test")
    assert gt["t-start"].dtype == np.int64 and (gt["t-end"] >= gt["t-start"]).all()
    # video_test_0000004 starts with [0.2, 1.1], [11.4, 12.2] (CricketBowling) ... [1.0, 1.5] (CricketShot)
    v4 = gt[gt["video-id"] == "video_test_0000004"]
    rows = list(zip(v4["t-start"], v4["t-end"], (classes[c] for c in v4["label"])))
    assert rows[0] == (0, 2, "CricketBowling")  # round(0.3125) = 0, round(1.71875) = 2
    assert rows[1] == (18, 19, "CricketBowling")  # round(17.8125), round(19.0625)
    assert rows[4] == (2, 2, "CricketShot")  # round(1.5625) = 2, round(2.34375) = 2
    seconds = load_wtalc_ground_truth(thumos_annotations, "test", snippet_units=False)
    assert seconds.iloc[0]["t-start"] == 0.2 and seconds.iloc[0]["t-end"] == 1.1
    np.testing.assert_array_equal(to_snippets(seconds["t-end"]), gt["t-end"])


def test_activitynet_validation_ground_truth(anet_annotations):
    gt = load_wtalc_ground_truth(anet_annotations, "validation", snippet_units=False)
    classes = wtalc_classes(anet_annotations)
    assert len(classes) == 100 and gt["video-id"].nunique() == 2383
    assert Counter(classes[c] for c in gt["label"]) == raw_counts(anet_annotations, "validation")


def test_snippet_rounding_is_half_to_even():
    # 0.32 s * 25 / 16 = 0.5 -> 0; 0.96 s -> 1.5 -> 2; 2.24 s -> 3.5 -> 4
    assert to_snippets([0.32, 0.96, 2.24, 1.1]).tolist() == [round(0.32 * 25 / 16), 2, 4, 2] == [0, 2, 4, 2]
    assert to_snippets([10.0], fps=30, frames=15).tolist() == [20]


def make_folder(tmp_path, subset=(b"test", b"test", b"validation"), labels=None):
    folder = tmp_path / "ann"
    folder.mkdir(exist_ok=True)
    np.save(folder / "classlist.npy", np.array([b"Jump", b"Run"]))
    np.save(folder / "videoname.npy", np.array([b"a", b"b", b"c"]))
    np.save(folder / "subset.npy", np.array(subset))
    np.save(folder / "duration.npy", np.array([[10.0], [20.0], [30.0]]))
    seg = np.empty(3, dtype=object)
    seg[:] = [[[1.0, 2.0], [3.2, 4.0]], [], [[0.0, 5.0]]]
    lab = np.empty(3, dtype=object)
    lab[:] = labels or [["Run", b"Jump"], [], ["Jump"]]
    np.save(folder / "segments.npy", seg, allow_pickle=True)
    np.save(folder / "labels.npy", lab, allow_pickle=True)
    return folder


def test_small_folder_and_errors(tmp_path):
    folder = make_folder(tmp_path)
    gt = load_wtalc_ground_truth(folder, "test")
    assert gt["video-id"].tolist() == ["a", "a"]  # b has no segment, c is another subset
    assert gt["label"].tolist() == [1, 0]
    assert gt["t-start"].tolist() == [2, 5] and gt["t-end"].tolist() == [3, 6]  # 1.5625, 3.125 / 5.0, 6.25
    assert len(load_wtalc_ground_truth(folder, "test", videos=["b"])) == 0
    with pytest.raises(PECRError, match="unknown subset 'testing'"):
        load_wtalc_ground_truth(folder, "testing")
    with pytest.raises(PECRError, match="not found"):
        load_wtalc_ground_truth(tmp_path / "nowhere", "test")
    (folder / "labels.npy").unlink()
    with pytest.raises(PECRError, match="labels.npy"):
        load_wtalc_ground_truth(folder, "test")
    folder = make_folder(tmp_path, labels=[["Run", "Swim"], [], ["Jump"]])
    with pytest.raises(PECRError, match="'Swim' missing from classlist"):
        load_wtalc_ground_truth(folder, "test")


def test_converter_reproduces_thumos_test(thumos_annotations, tmp_path):
    out = tmp_path / "gt.json"
    assert annotations.main(["--annotations", str(thumos_annotations), "--subset", "test", "--snippet-units",
                             "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data) == {"database", "taxonomy", "version"}
    db = data["database"]
    assert len(db) == 212 and {v["subset"] for v in db.values()} == {"test"}
    assert all(v["annotations"] and v["duration"] > 0 for v in db.values())
    counts = Counter(a["label"] for v in db.values() for a in v["annotations"])
    assert counts == raw_counts(thumos_annotations, "test") and sum(counts.values()) == 3358
    assert [t["nodeName"] for t in data["taxonomy"]] == wtalc_classes(thumos_annotations)
    assert db["video_test_0000004"]["annotations"][0] == {"segment": [0, 2], "label": "CricketBowling"}
    # the JSON reads back into the same table (labels as names)
    back = load_activitynet_ground_truth(out, "test")
    gt = load_wtalc_ground_truth(thumos_annotations, "test")
    classes = wtalc_classes(thumos_annotations)
    assert back["video-id"].tolist() == gt["video-id"].tolist()
    assert back["label"].tolist() == [classes[c] for c in gt["label"]]
    np.testing.assert_array_equal(back[["t-start", "t-end"]].to_numpy(), gt[["t-start", "t-end"]].to_numpy())


def test_converter_seconds_and_error(tmp_path, capsys):
    folder = make_folder(tmp_path)
    out = tmp_path / "gt.json"
    assert annotations.main(["--annotations", str(folder), "--subset", "test", "--seconds", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["database"] == {"a": {"subset": "test", "duration": 10.0, "annotations": [
        {"segment": [1.0, 2.0], "label": "Run"}, {"segment": [3.2, 4.0], "label": "Jump"}]}}
    assert "snippet_grid" not in data
    # default: the protocol's ground truth, on the snippet grid (round(sec * 25/16) snippets of 0.64 s)
    assert annotations.main(["--annotations", str(folder), "--subset", "test", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["snippet_grid"] == {"fps": 25.0, "frames": 16}
    assert data["database"]["a"]["annotations"] == [{"segment": [2 * 0.64, 3 * 0.64], "label": "Run"},
                                                    {"segment": [5 * 0.64, 6 * 0.64], "label": "Jump"}]
    assert annotations.main(["--annotations", str(tmp_path / "none"), "--subset", "test", "--out", str(out)]) == 2
    assert "(--annotations)" in capsys.readouterr().err  # this command's flag
    (tmp_path / "file").write_text("")
    assert annotations.main(["--annotations", str(folder), "--subset", "test", "--out", str(tmp_path / "file" / "gt.json")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert annotations.main(["--annotations", str(folder), "--subset", "nope", "--out", str(out)]) == 2
    assert "unknown subset 'nope'" in capsys.readouterr().err
