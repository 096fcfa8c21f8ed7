"""A dataset of one's own: ActivityNet JSON -> W-TALC conversion (round trip on the real
annotations, bad input), dataset descriptions with a declared protocol, class-phrase files reaching
the tokenizer, and training end to end on converted data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import options
import tools.convert_activitynet as conv
from dataset import WTALDataset, load_annotations
from eval.annotations import load_wtalc, load_wtalc_ground_truth, to_activitynet_json, wtalc_classes
from utils.errors import PECRError

CLASSES = ["Jumping jacks", "RopeClimbing", "push ups"]


# ----------------------------------------------------------------------------- a small generated JSON dataset
def make_json_dataset(root: Path, videos: int = 16, width: int = 32, clip_dim: int = 64, seed: int = 0) -> dict:
    """ActivityNet JSON + <video>.npy I3D features (+ CLIP features in train/test folders): paths."""
    rng = np.random.default_rng(seed)
    database = {}
    (root / "I3D").mkdir(parents=True)
    for i in range(videos):
        name = f"v_{i:03d}"
        T = int(rng.integers(20, 60))
        duration = (T + 0.5) * 16 / 25
        label = CLASSES[i % len(CLASSES)]
        start = float(rng.uniform(0, duration / 2))
        database[name] = {"subset": "training" if i % 2 == 0 else "validation", "duration": duration, "url": "",
                          "annotations": [{"segment": [round(start, 3), round(start + duration / 4, 3)], "label": label}]}
        x = rng.random((T, width), dtype=np.float32)
        x[:, i % len(CLASSES)::len(CLASSES)] += 2.0  # a class signal
        np.save(root / "I3D" / f"{name}.npy", x)
        split = "train" if i % 2 == 0 else "test"
        (root / "I3D-CLIP" / split).mkdir(parents=True, exist_ok=True)
        np.save(root / "I3D-CLIP" / split / f"{name}.npy", rng.standard_normal((T, clip_dim)).astype(np.float32))
    data = {"version": "test", "taxonomy": [], "database": database}
    (root / "ann.json").write_text(json.dumps(data))
    return {"json": root / "ann.json", "features": root / "I3D", "out": root / "MyData-Annotations", "data": data}


def convert_args(paths: dict, *extra: str) -> list[str]:
    return ["--json", str(paths["json"]), "--features", str(paths["features"]), "--out", str(paths["out"]), *extra]


def run_convert(argv) -> conv.Report:
    return conv.convert(conv.build_parser().parse_args(argv), progress=False)


def test_converter_writes_the_wtalc_layout_and_a_description(tmp_path):
    paths = make_json_dataset(tmp_path)
    (paths["features"] / "stray.npy").write_bytes((paths["features"] / "v_000.npy").read_bytes())  # no annotation
    del_name = "v_005"
    (paths["features"] / f"{del_name}.npy").unlink()  # annotation without features
    report = run_convert(convert_args(paths))
    assert sorted(name for name, _ in report.skipped) == ["stray", del_name]
    reasons = dict(report.skipped)
    assert "without annotation" in reasons["stray"] and "stray.npy" in reasons["stray"]
    assert "without features" in reasons[del_name]

    out = paths["out"]
    ann = load_annotations(out)
    database = paths["data"]["database"]
    expected = [v for v in database if v != del_name]
    assert ann["video_names"] == expected and ann["classlist"] == sorted(CLASSES)  # empty taxonomy: the labels sorted
    assert ann["subsets"] == [database[v]["subset"] for v in expected]
    assert ann["durations"].tolist() == [database[v]["duration"] for v in expected]
    for v, seg, lab, lab_all in zip(expected, ann["segments"], ann["segment_labels"], ann["labels_all"]):
        assert seg.tolist() == [a["segment"] for a in database[v]["annotations"]]
        assert lab == lab_all == [a["label"] for a in database[v]["annotations"]]
    for key in ("classlist", "videoname", "subset"):  # byte strings, as the released files
        assert np.load(out / f"{key}.npy").dtype.kind == "S"
    assert "stray" in (out / conv.REPORT).read_text()

    description = yaml.safe_load((out / conv.DESCRIPTION).read_text())
    assert description["feature_file"] == str(paths["features"]) and description["annotation_dir"] == str(out)
    assert description["feature_size"] == 32 and description["protocol"] == "activitynet"
    assert description["clip_feature_dir"] == str(paths["features"]) + "-CLIP"
    opts = options.parse_args(["--dataset", str(out / conv.DESCRIPTION)])
    assert (opts.train_subset, opts.test_subset, opts.max_seqlen, opts.lr) == ("training", "validation", 60, 3e-5)
    assert list(tmp_path.glob(".*tmp")) == []  # no temporary folder left


def test_round_trip_on_generated_json(tmp_path):
    """JSON -> W-TALC -> JSON gives back every video, segment, label and duration."""
    paths = make_json_dataset(tmp_path)
    run_convert(["--json", str(paths["json"]), "--out", str(paths["out"])])
    assert json_from_wtalc(paths["out"])["database"] == {
        v: {**{k: e[k] for k in ("subset", "duration", "annotations")}} for v, e in paths["data"]["database"].items()}


def json_from_wtalc(annotation_dir: Path) -> dict:
    """The W-TALC -> JSON converter (eval.annotations, seconds) over every subset, in videoname order."""
    ann = load_wtalc(annotation_dir)
    classes = wtalc_classes(annotation_dir)
    names = [v.decode() for v in ann["videoname"]]
    durations = dict(zip(names, ann["duration"].tolist()))
    database = {}
    for subset in sorted({s.decode() for s in ann["subset"]}):
        gt = load_wtalc_ground_truth(annotation_dir, subset, snippet_units=False)
        data = to_activitynet_json(gt, classes, subset, durations)
        database.update(data["database"])
    return {"version": "", "taxonomy": data["taxonomy"], "database": {v: database[v] for v in names if v in database}}


@pytest.mark.parametrize("which, relabelled", [("thumos", 28), ("anet", 0)])
def test_round_trip_on_the_real_annotations(tmp_path, request, which, relabelled):
    """W-TALC -> JSON (eval.annotations) -> W-TALC (the converter) gives back the released files: class
    list, videos, subsets, durations, segments and labels exactly; labels_all is the set of segment
    labels, which the THUMOS14 release differs from in 28 videos (CricketShot segments in videos
    labelled CricketBowling only)."""
    source = request.getfixturevalue("thumos_annotations" if which == "thumos" else "anet_annotations")
    (tmp_path / "gt.json").write_text(json.dumps(json_from_wtalc(source)))
    report = run_convert(["--json", str(tmp_path / "gt.json"), "--out", str(tmp_path / "out")])
    a, b = load_annotations(source), load_annotations(tmp_path / "out")
    assert b["classlist"] == a["classlist"] and b["video_names"] == a["video_names"] and b["subsets"] == a["subsets"]
    assert np.array_equal(b["durations"], a["durations"])
    assert all(np.array_equal(x, y) for x, y in zip(a["segments"], b["segments"]))
    assert b["segment_labels"] == a["segment_labels"]
    assert all(labels == list(dict.fromkeys(seg)) for labels, seg in zip(b["labels_all"], b["segment_labels"]))
    assert sum(set(x) != set(y) for x, y in zip(a["labels_all"], b["labels_all"])) == relabelled
    raw = {k: np.load(source / f"{k}.npy", allow_pickle=True) for k in ("classlist", "videoname", "subset")}
    for key, value in raw.items():  # the same bytes in the string files
        assert np.array_equal(np.load(tmp_path / "out" / f"{key}.npy"), value), key
    # the released ActivityNet1.2 segments reaching past the video end or of zero length are kept and reported
    outside = sum("reaches outside" in w for w in report.warnings)
    zero = sum("zero-length" in w for w in report.warnings)
    assert (outside > 0 and zero > 0) if which == "anet" else zero == 0
    # and back again: the same JSON
    assert json_from_wtalc(tmp_path / "out") == json.loads((tmp_path / "gt.json").read_text())


# ----------------------------------------------------------------------------- bad input
def rewrite(paths: dict, change) -> None:
    data = json.loads(paths["json"].read_text())
    change(data["database"])
    paths["json"].write_text(json.dumps(data))


BAD_JSON = [
    ("unknown class", lambda db: db["v_003"]["annotations"][0].update(label="Skydiving"), ["v_003", "'Skydiving'", "class list"]),
    ("reversed segment", lambda db: db["v_002"]["annotations"][0].update(segment=[5.0, 1.0]), ["v_002", "ends before it starts"]),
    ("no duration", lambda db: db["v_004"].pop("duration"), ["v_004", "duration"]),
    ("bad segment", lambda db: db["v_001"]["annotations"][0].update(segment=[1.0]), ["v_001", "annotation 0"]),
]


@pytest.mark.parametrize("case, change, fragments", BAD_JSON, ids=[c for c, _, _ in BAD_JSON])
def test_bad_json_is_reported_with_file_and_video_and_nothing_is_written(tmp_path, case, change, fragments, capsys):
    paths = make_json_dataset(tmp_path)
    rewrite(paths, change)
    classlist = tmp_path / "classes.txt"
    classlist.write_text("\n".join(CLASSES) + "\n")
    assert conv.main(convert_args(paths, "--classlist", str(classlist))) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and "nothing written" in last and str(paths["json"]) in last
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not paths["out"].exists() and list(tmp_path.glob(".*tmp")) == []


def test_bad_features_are_reported_with_the_file(tmp_path, capsys):
    paths = make_json_dataset(tmp_path)
    np.save(paths["features"] / "v_006.npy", np.zeros((30, 16), np.float32))  # another width
    bad = np.zeros((30, 32), np.float32)
    bad[7, 3] = np.nan
    np.save(paths["features"] / "v_009.npy", bad)
    np.save(paths["features"] / "v_010.npy", np.zeros(30, np.float32))  # 1-D
    assert conv.main(convert_args(paths)) == 2
    err = capsys.readouterr().err
    assert "v_006.npy of video v_006 are 16 wide" in err and "other videos' 32" in err
    assert "video v_009" in err and "NaN or inf" in err and "snippet 7" in err
    assert "v_010.npy of video v_010 have shape (30,)" in err
    assert not paths["out"].exists()


def test_segments_outside_the_video_and_zero_length(tmp_path, capsys):
    paths = make_json_dataset(tmp_path)
    duration = paths["data"]["database"]["v_002"]["duration"]
    rewrite(paths, lambda db: db["v_002"]["annotations"].extend(
        [{"segment": [duration - 1, duration + 3], "label": CLASSES[2]}, {"segment": [2.0, 2.0], "label": CLASSES[2]},
         {"segment": [duration + 1, duration + 2], "label": CLASSES[2]}]))
    report = run_convert(convert_args(paths))  # keep (default): as given, reported
    assert sum("v_002" in w for w in report.warnings) == 3
    assert load_annotations(paths["out"])["segments"][2].shape == (4, 2)
    report = run_convert(convert_args(paths, "--bad-segments", "clip", "--overwrite"))
    segments = load_annotations(paths["out"])["segments"][2]
    assert segments.tolist()[1:] == [[duration - 1, duration]]  # clipped; the empty ones dropped
    assert sum("dropped" in w for w in report.warnings) == 2
    assert conv.main(convert_args(paths, "--bad-segments", "error", "--overwrite")) == 2
    assert "zero-length" in capsys.readouterr().err
    assert load_annotations(paths["out"])["segments"][2].tolist()[1:] == [[duration - 1, duration]]  # the old output is intact


def test_class_phrase_file_is_checked_against_the_classes(tmp_path, capsys):
    paths = make_json_dataset(tmp_path)
    phrases = tmp_path / "phrases.yaml"
    phrases.write_text("RopeClimbing: rope climbing\nPushUps: push ups\n")  # PushUps is not a class
    assert conv.main(convert_args(paths, "--class-phrases", str(phrases))) == 2
    err = capsys.readouterr().err
    assert f"class phrase file {phrases}: class 'PushUps' is not in the class list" in err
    phrases.write_text("RopeClimbing: rope climbing\n")
    report = run_convert(convert_args(paths, "--class-phrases", str(phrases)))
    assert any("no phrase for 2 classes" in w and "'jumping jacks'" in w for w in report.warnings)
    assert yaml.safe_load((paths["out"] / conv.DESCRIPTION).read_text())["class_phrases"] == str(phrases)


def test_existing_output_needs_overwrite(tmp_path):
    paths = make_json_dataset(tmp_path)
    paths["out"].mkdir()
    with pytest.raises(PECRError, match="--overwrite"):
        run_convert(convert_args(paths))


# ----------------------------------------------------------------------------- descriptions
def test_description_errors_name_the_file_and_key(tmp_path):
    desc = tmp_path / "mine.yaml"
    desc.write_text(yaml.safe_dump({"feature_file": "x"}))
    with pytest.raises(PECRError, match=r"mine.yaml lacks annotation_dir"):
        options.parse_args(["--dataset", str(desc)])
    with pytest.raises(PECRError, match="not found"):
        options.parse_args(["--dataset", str(tmp_path / "nope.yaml")])
    with pytest.raises(PECRError, match="no such dataset"):
        options.parse_args(["--dataset", "hacs"])
    values = yaml.safe_load((options.DESCRIPTIONS / "thumos.yaml").read_text())
    desc.write_text(yaml.safe_dump({**values, "dataset": "thumos"}))
    with pytest.raises(PECRError, match="'dataset' cannot be set in a description"):
        options.parse_args(["--dataset", str(desc)])
    desc.write_text(yaml.safe_dump({**values, "protocol": {"reported": [0.5], "averages": {"a": [0.5]}, "criterion": "max a"}}))
    with pytest.raises(PECRError, match=r"protocol in .*mine.yaml: criterion 'max a'"):
        options.parse_args(["--dataset", str(desc)])


def test_a_description_as_config_is_its_own_dataset(tmp_path):
    values = yaml.safe_load((options.DESCRIPTIONS / "activitynet.yaml").read_text())
    desc = tmp_path / "mine.yaml"
    desc.write_text(yaml.safe_dump(values))
    as_config = options.parse_args(["--config", str(desc)])
    as_dataset = options.parse_args(["--dataset", str(desc)])
    assert as_config.dataset == as_dataset.dataset == str(desc)
    assert {**vars(as_config), "config": None} == {**vars(as_dataset), "config": None}
    assert {**vars(as_dataset), "dataset": "activitynet", "config": None} == vars(options.parse_args(["--dataset", "activitynet"]))


def test_missing_data_path_names_the_description(tmp_path):
    values = yaml.safe_load((options.DESCRIPTIONS / "thumos.yaml").read_text())
    desc = tmp_path / "mine.yaml"
    desc.write_text(yaml.safe_dump({**values, "annotation_dir": str(tmp_path / "gone")}))
    with pytest.raises(PECRError, match=r"gone not found.*annotation_dir in .*mine.yaml"):
        WTALDataset(options.parse_args(["--dataset", str(desc)]))


# ----------------------------------------------------------------------------- class phrases reach the tokenizer
def test_phrase_file_override_reaches_the_prompt_token_ids(tmp_path, clip_vocab):
    import clip
    from model import build_model

    paths = make_json_dataset(tmp_path)
    run_convert(convert_args(paths))
    phrases = tmp_path / "phrases.json"
    phrases.write_text(json.dumps({"RopeClimbing": "climbing a rope"}))
    base = ["--dataset", str(paths["out"] / conv.DESCRIPTION), "--clip-backbone", "random-tiny", "--feature-size", "32"]
    tokenizer = clip.get_tokenizer(str(clip_vocab))
    rows = {}
    for name, extra in (("default", []), ("file", ["--class-phrases", str(phrases)])):
        opts = options.parse_args(base + extra)
        data = WTALDataset(opts)
        model = build_model(opts, data.class_phrases, "cpu")
        c = data.classlist.index("RopeClimbing")
        ids = next(m for m in model.modules() if isinstance(m, clip.PromptLearner)).token_ids[c]
        rows[name] = ids[opts.prompt_prefix + 1: opts.prompt_prefix + 1 + len(tokenizer.encode(data.class_phrases[c]))].tolist()
        assert rows[name] == tokenizer.encode(data.class_phrases[c])
    assert rows["default"] == tokenizer.encode("rope climbing") and rows["file"] == tokenizer.encode("climbing a rope")


# ----------------------------------------------------------------------------- end to end
def test_convert_then_train_and_test_on_a_declared_protocol(tmp_path, clip_vocab):
    """JSON + feature folder -> converter -> description (with a protocol of its own) -> training -> test.py."""
    import main as train_main
    import test as test_cli

    paths = make_json_dataset(tmp_path)
    template = yaml.safe_load((options.DESCRIPTIONS / "activitynet.yaml").read_text())
    template["protocol"] = {"name": "mine", "reported": [0.3, 0.5], "averages": {"0.3:0.7": [0.3, 0.4, 0.5, 0.6, 0.7]},
                            "criterion": "mean 0.3:0.7"}
    template["tiou_thresholds"] = [0.3, 0.4, 0.5, 0.6, 0.7]
    (tmp_path / "template.yaml").write_text(yaml.safe_dump(template))
    run_convert(convert_args(paths, "--template", str(tmp_path / "template.yaml")))
    out = tmp_path / "runs"
    args = ["--dataset", str(paths["out"] / conv.DESCRIPTION), "--output-dir", str(out), "--model-name", "mine",
            "--clip-backbone", "random-tiny", "--device", "cpu", "--max-seqlen", "16", "--batch-size", "4",
            "--num-similar", "1", "--k-easy", "2", "--k-hard", "2", "--mining-m", "4", "--num-prob-v", "3",
            "--max-iter", "3", "--warmup-iter", "0", "--interval", "2", "--feature-loading", "lazy"]
    assert train_main.main(args) == 0
    records = [json.loads(line) for line in (out / "mine" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [2]
    assert list(records[0]["average_mAP"]) == ["0.3:0.7"] and records[0]["tiou"] == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert "avg 0.3:0.7" in (out / "mine" / "results.txt").read_text()
    saved = yaml.safe_load((out / "mine" / "options.yaml").read_text())
    assert saved["protocol"]["criterion"] == "mean 0.3:0.7" and saved["feature_loading"] == "lazy"
    assert test_cli.main(["--ckpt", str(out / "mine" / "best.pt"), "--out-dir", str(tmp_path / "t"), "--feature-loading", "memory"]) == 0
    assert json.loads((tmp_path / "t" / "metrics.json").read_text())["mAP"] == records[0]["mAP"]  # lazy and memory: the same pass


def test_saved_options_without_the_description_file_and_from_before_phrase_files(tmp_path):
    values = yaml.safe_load((options.DESCRIPTIONS / "activitynet.yaml").read_text())
    desc = tmp_path / "mine.yaml"
    desc.write_text(yaml.safe_dump(values))
    saved = options.options_to_dict(options.parse_args(["--dataset", str(desc), "--lr", "0.5"]))
    desc.unlink()  # the checkpoint's options still hold everything the description set
    assert options.options_to_dict(options.parse_args([], base=saved)) == saved
    with pytest.raises(PECRError, match="not found"):
        options.parse_args(["--dataset", str(desc)])
    old = {k: v for k, v in options.options_to_dict(options.parse_args([])).items() if k != "class_phrases"}
    assert options.parse_args([], base=old).class_phrases == "configs/datasets/thumos_phrases.yaml"  # a run saved before phrase files
