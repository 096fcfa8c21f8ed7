"""Raw predictions (--save-raw) and re-scoring (python -m eval.rescore) on a tiny trained run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import main as train_main
import options
import test as test_cli
from eval import rescore as rescore_cli
from eval.proposals import ProposalConfig, group_runs, load_ambiguous, minmax_normalise, predicted_classes, video_class_scores
from eval.annotations import wtalc_classes
from eval.raw import load_raw, save_raw
from tests.test_end_to_end import tiny_args


@pytest.fixture(scope="module")
def run(tmp_path_factory, clip_vocab):
    """A tiny run trained with --save-raw true, and test.py --save-raw true on its best.pt."""
    tmp = tmp_path_factory.mktemp("rescore")
    opts = options.parse_args(tiny_args(tmp, "--save-raw", "true"))
    train_main.Run(opts).train()
    run_dir = tmp / "out" / "run"
    tested = tmp / "tested"
    assert test_cli.main(["--ckpt", str(run_dir / "best.pt"), "--out-dir", str(tested), "--save-raw", "true"]) == 0
    return {"tmp": tmp, "run_dir": run_dir, "tested": tested, "opts": opts}


def rescore(raw, out_dir, *extra) -> tuple[dict, dict]:
    assert rescore_cli.main(["--raw", str(raw), "--out-dir", str(out_dir), *extra]) == 0
    return (json.loads((Path(out_dir) / "metrics.json").read_text()),
            json.loads((Path(out_dir) / "detections.json").read_text()))


def test_rescoring_reproduces_test_py_exactly(run, tmp_path, capsys):
    tested = run["tested"]
    rescore(tested / "raw_predictions.npz", tmp_path / "same")
    for name in ("metrics.json", "detections.json"):  # byte for byte: same detections, same numbers
        assert (tmp_path / "same" / name).read_text() == (tested / name).read_text(), name
    assert "avg 0.1:0.7" in capsys.readouterr().out  # test.py's table
    record = json.loads((tested / "metrics.json").read_text())
    ap = np.array(record["ap_per_class"]["ap"], dtype=float)  # null -> nan
    assert np.allclose(np.nanmean(ap, axis=1), record["mAP"], atol=1e-12)  # mAP = mean over classes with ground truth
    saved = yaml.safe_load((tmp_path / "same" / "rescore_options.yaml").read_text())
    assert saved == load_raw(tested / "raw_predictions.npz").options  # unchanged options: the pass's own
    options.load_options(tmp_path / "same" / "rescore_options.yaml")  # a valid --config file


def test_ambiguous_regions_travel_with_the_raw_file(run, tmp_path):
    """THUMOS14's filter: regions stored in the raw file drop the same detections as in test.py."""
    videos = load_raw(run["tested"] / "raw_predictions.npz").predictions.names
    regions = tmp_path / "Ambiguous_test.txt"
    regions.write_text(f"{videos[0]} 0.0 3.2\n{videos[0]} Diving 10.0 12.5\n{videos[1]} 1.0 40.0\n")
    tested = tmp_path / "tested"
    assert test_cli.main(["--ckpt", str(run["run_dir"] / "best.pt"), "--out-dir", str(tested), "--save-raw", "true",
                          "--ambiguous-file", str(regions)]) == 0
    raw = load_raw(tested / "raw_predictions.npz")
    assert raw.reference.ambiguous.keys() == load_ambiguous(regions).keys()
    for video, r in load_ambiguous(regions).items():
        assert np.array_equal(raw.reference.ambiguous[video], r)
    rescore(tested / "raw_predictions.npz", tmp_path / "same")
    for name in ("metrics.json", "detections.json"):
        assert (tmp_path / "same" / name).read_text() == (tested / name).read_text(), name
    filtered = json.loads((tested / "detections.json").read_text())["results"]
    unfiltered = json.loads((run["tested"] / "detections.json").read_text())["results"]
    assert len(filtered.get(videos[1], [])) < len(unfiltered[videos[1]])  # the filter did act


def test_training_final_evaluation_writes_raw_predictions(run, tmp_path):
    run_dir = run["run_dir"]
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["iteration"] == run["opts"].max_iter - 1
    metrics, detections = rescore(run_dir / "raw_predictions.npz", tmp_path)
    assert metrics == last
    assert detections == json.loads((run_dir / "detections.json").read_text())


def test_raw_file_is_self_contained(run):
    opts = run["opts"]
    raw = load_raw(run["tested"] / "raw_predictions.npz")
    reference = test_cli.load_reference(opts)
    pd.testing.assert_frame_equal(raw.reference.ground_truth, reference.ground_truth)
    assert raw.reference.ambiguous is None  # the synthetic dataset has no ambiguous regions
    assert raw.classlist == wtalc_classes(opts.annotation_dir)
    assert raw.options["feature_fps"] == 25.0 and raw.options["snippet_frames"] == 16
    assert raw.seconds_per_snippet == pytest.approx(16 / 25)
    assert raw.iteration == 3
    C = len(raw.classlist)
    for video in raw.predictions.videos:
        T = len(video.attention)
        assert video.cas.shape == (T, C + 1) and video.cas.dtype == np.float32
        assert video.attention_v.shape == video.attention_f.shape == (T,)
        assert np.allclose(video.attention, (video.attention_v + video.attention_f) / 2, atol=1e-6)
    assert raw.predictions.labels.shape == (len(raw.predictions.videos), C)


def test_float16_file_is_smaller_and_close(run, tmp_path):
    raw = load_raw(run["tested"] / "raw_predictions.npz")
    half = tmp_path / "half.npz"
    save_raw(half, raw.predictions, raw.reference, raw.classlist, raw.options, raw.iteration, "float16")
    back = load_raw(half)
    assert half.stat().st_size < 0.75 * (run["tested"] / "raw_predictions.npz").stat().st_size
    for a, b in zip(raw.predictions.videos, back.predictions.videos):
        assert b.cas.dtype == np.float32 and np.allclose(a.cas, b.cas, rtol=1e-3, atol=1e-3)
        assert np.allclose(a.attention, b.attention, atol=1e-3)


def naive_segments(cas, attention, cfg: ProposalConfig) -> dict[int, list[tuple[int, int]]]:
    """Per predicted class, the sorted runs [s, e) of normalised E > each CAS threshold and A > each
    actionness threshold (a run that is snippet 0 alone at its threshold is skipped, as released)."""
    energy = cas.astype(np.float64) * attention[:, None]
    classes = predicted_classes(video_class_scores(cas, attention, cfg.test_topk), cfg.vid_thresh)
    out = {}
    for c in classes:
        norm = minmax_normalise(energy[:, [c]])[:, 0]
        rows = [norm > t for t in cfg.cas_thresholds] + [attention > t for t in cfg.act_thresholds]
        runs = []
        for mask in rows:
            if mask[0] and mask.sum() == 1:
                continue
            _, starts, ends = group_runs(mask[None])
            runs += list(zip(starts.tolist(), ends.tolist()))
        out[int(c)] = sorted(runs)
    return out


def test_threshold_options_change_the_proposals_as_they_should(run, tmp_path):
    raw_path = run["tested"] / "raw_predictions.npz"
    raw = load_raw(raw_path)
    base, _ = rescore(raw_path, tmp_path / "base")
    # one threshold per family at 0.5: exactly the runs above 0.5 of each predicted class
    single = ["--cas-s", "0.5", "--cas-e", "0.5", "--cas-num", "1", "--act-s", "0.5", "--act-e", "0.5", "--act-num", "1"]
    metrics, detections = rescore(raw_path, tmp_path / "single", *single)
    cfg = ProposalConfig(cas_s=0.5, cas_e=0.5, cas_num=1, act_s=0.5, act_e=0.5, act_num=1)
    spf, checked = 16 / 25, 0
    for video in raw.predictions.videos:
        expected = naive_segments(video.cas, video.attention, cfg)
        got: dict[int, list] = {}
        for d in detections["results"].get(video.name, []):
            got.setdefault(raw.classlist.index(d["label"]), []).append(
                (round(d["segment"][0] / spf), round(d["segment"][1] / spf)))
        assert {c: sorted(v) for c, v in got.items()} == {c: v for c, v in expected.items() if v}, video.name
        checked += sum(map(len, got.values()))
    assert checked > 0
    assert metrics["mAP"] != base["mAP"]
    # --vid-thresh 1: only the arg-max class of each video is predicted
    _, detections = rescore(raw_path, tmp_path / "argmax", "--vid-thresh", "1.0")
    for video in raw.predictions.videos:
        labels = {d["label"] for d in detections["results"].get(video.name, [])}
        top = int(np.argmax(video_class_scores(video.cas, video.attention, raw.options["test_topk"])))
        assert labels <= {raw.classlist[top]}
    # evaluation options: other thresholds, the other protocol's averages are refused without them
    metrics, _ = rescore(raw_path, tmp_path / "tiou", "--tiou-thresholds", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7")
    assert metrics["tiou"] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert metrics["mAP"] == pytest.approx(base["mAP"][:7], abs=1e-12)


@pytest.mark.parametrize("args, words", [
    (["--lr", "0.1"], "--lr cannot be changed when re-scoring"),
    (["--act-s", "1.5"], "--act-s 1.5 is out of range"),
    (["--act-s", "0.99"], "threshold ranges must run upwards"),
    (["--protocol", "activitynet"], "--tiou-thresholds"),
])
def test_bad_options_are_one_line(run, tmp_path, capsys, args, words):
    assert rescore_cli.main(["--raw", str(run["tested"] / "raw_predictions.npz"), "--out-dir", str(tmp_path / "o"),
                             *args]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # nothing written


def test_bad_files_are_one_line(run, tmp_path, capsys):
    raw_path = str(run["tested"] / "raw_predictions.npz")
    cases = [
        (["--raw", str(tmp_path / "missing.npz")], "not found"),
        (["--raw", str(run["tested"] / "detections.json")], "not a PECR raw predictions file"),
        (["--raw", raw_path, "--out-dir", str(Path(raw_path) / "sub")], "cannot write to"),
    ]
    np.savez(tmp_path / "other.npz", cas=np.zeros(3))
    cases.append((["--raw", str(tmp_path / "other.npz")], "not a PECR raw predictions file"))
    for args, words in cases:
        assert rescore_cli.main(args) == 2, args
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err


def test_annotation_folder_of_another_dataset_is_refused(run, tmp_path, capsys, thumos_annotations):
    raw_path = str(run["tested"] / "raw_predictions.npz")
    assert rescore_cli.main(["--raw", raw_path, "--out-dir", str(tmp_path / "o"),
                             "--annotation-dir", str(thumos_annotations)]) == 2
    err = capsys.readouterr().err
    assert "written for another dataset" in err and str(thumos_annotations) in err
    assert not (tmp_path / "o" / "metrics.json").exists()
    # the run's own annotation folder gives the stored ground truth back: same numbers
    metrics, _ = rescore(raw_path, tmp_path / "same", "--annotation-dir", run["opts"].annotation_dir)
    assert metrics == json.loads((run["tested"] / "metrics.json").read_text())
