"""Detection AP (docs/method.md §6): the vectorised evaluator against a naive per-prediction loop."""
import json

import numpy as np
import pandas as pd
import pytest

from eval import detection
from eval.detection import detection_ap, evaluate_detection, mean_ap
from utils.errors import PECRError


# ----------------------------------------------------------------------------- naive reference

def naive_ap(gt: pd.DataFrame, pred: pd.DataFrame, thresholds, classes) -> np.ndarray:
    """The ActivityNet loop, one prediction at a time (stable ranking, ties of gt tIoU by index)."""
    ap = np.full((len(thresholds), len(classes)), np.nan)
    for ci, c in enumerate(classes):
        g = gt[gt["label"] == c].reset_index(drop=True)
        p = pred[pred["label"] == c].reset_index(drop=True)
        if len(g) == 0:
            continue
        scores = list(p["score"])
        rank = sorted(range(len(p)), key=lambda i: -scores[i])  # Python's sort is stable
        for ti, thr in enumerate(thresholds):
            taken = [False] * len(g)
            hits = []
            for i in rank:
                s, e, v = p["t-start"][i], p["t-end"][i], p["video-id"][i]
                best, best_iou = None, None
                for j in range(len(g)):
                    if g["video-id"][j] != v or taken[j]:
                        continue
                    gs, ge = g["t-start"][j], g["t-end"][j]
                    inter = max(0.0, min(e, ge) - max(s, gs))
                    union = (ge - gs) + (e - s) - inter
                    iou = inter / union if union > 0 else 0.0
                    if iou >= thr and (best is None or iou > best_iou):
                        best, best_iou = j, iou
                if best is None:
                    hits.append(0)
                else:
                    taken[best] = True
                    hits.append(1)
            # cumulative precision / recall, VOC interpolation, written as loops
            prec, rec, tp = [], [], 0
            for k, h in enumerate(hits):
                tp += h
                prec.append(tp / (k + 1))
                rec.append(tp / len(g))
            mprec = [0.0] + prec + [0.0]
            mrec = [0.0] + rec + [1.0]
            for k in range(len(mprec) - 2, -1, -1):
                mprec[k] = max(mprec[k], mprec[k + 1])
            ap[ti, ci] = sum((mrec[k] - mrec[k - 1]) * mprec[k] for k in range(1, len(mrec)) if mrec[k] != mrec[k - 1])
    return ap


def gt_table(rows):
    return pd.DataFrame(rows, columns=["video-id", "label", "t-start", "t-end"])


def pred_table(rows):
    return pd.DataFrame(rows, columns=["video-id", "label", "t-start", "t-end", "score"])


def random_case(rng, integer: bool):
    n_vid, n_cls = rng.integers(1, 5), rng.integers(1, 5)
    n_gt, n_pred = rng.integers(1, 15), rng.integers(0, 40)

    def segments(n):
        s = rng.integers(0, 30, n) if integer else rng.uniform(0, 30, n)
        length = rng.integers(0, 10, n) if integer else rng.uniform(0, 10, n)
        return s, s + length

    gs, ge = segments(n_gt)
    gt = gt_table({"video-id": [f"v{i}" for i in rng.integers(0, n_vid, n_gt)], "label": rng.integers(0, n_cls, n_gt),
                   "t-start": gs, "t-end": ge})
    ps, pe = segments(n_pred)
    # few distinct scores -> many ties; one more video than the ground truth knows
    score = rng.integers(0, 5, n_pred) / 4 if rng.random() < 0.5 else rng.random(n_pred)
    pred = pred_table({"video-id": [f"v{i}" for i in rng.integers(0, n_vid + 1, n_pred)],
                       "label": rng.integers(0, n_cls + 1, n_pred), "t-start": ps, "t-end": pe, "score": score})
    return gt, pred, n_cls + 1


@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize("thresholds", [[0.1, 0.25, 0.3, 1 / 3, 0.5, 0.7, 0.9, 1.0], [0.0, 0.5]])
def test_matches_naive_loop_on_random_cases(integer, thresholds):
    """Hundreds of random cases, integer (ties in tIoU and score) and real-valued segments;
    with a zero threshold every same-class ground truth of the video is a candidate."""
    rng = np.random.default_rng(7 + integer + 2 * len(thresholds))
    for _ in range(120):
        gt, pred, n_cls = random_case(rng, integer)
        got = detection_ap(gt, pred, thresholds, classes=n_cls)
        want = naive_ap(gt, pred, thresholds, list(range(n_cls)))
        np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)
        assert np.array_equal(np.isnan(got), np.isnan(want))


def test_matches_naive_loop_on_dense_ground_truth():
    """Many predictions competing for contiguous ground truths: long chains of dependent matches."""
    rng = np.random.default_rng(2)
    start = np.arange(40.0)
    gt = gt_table({"video-id": "v", "label": 0, "t-start": start, "t-end": start + 1 + (rng.random(40) < 0.3)})
    s = rng.integers(0, 40, 300) + rng.choice([0, 0.5], 300)
    pred = pred_table({"video-id": "v", "label": 0, "t-start": s, "t-end": s + rng.choice([0.5, 1, 1.5, 2], 300),
                       "score": rng.random(300)})
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    np.testing.assert_allclose(detection_ap(gt, pred, thresholds), naive_ap(gt, pred, thresholds, [0]), atol=1e-9, rtol=0)


def test_no_predictions_and_any_row_index():
    gt = gt_table([("v", 0, 0, 10), ("w", 1, 0, 10)])
    assert detection_ap(gt, pred_table([]), [0.5]).tolist() == [[0.0, 0.0]]
    pred = pred_table([("w", 1, 0, 10, 0.2), ("v", 0, 0, 10, 0.1)])
    pred.index = [7, 3]  # filtered / shuffled tables keep their index
    assert detection_ap(gt.iloc[::-1], pred, [0.5]).tolist() == [[1.0, 1.0]]


# ----------------------------------------------------------------------------- hand-computed cases

def test_duplicate_detections():
    gt = gt_table([("v", 0, 0, 10)])
    pred = pred_table([("v", 0, 0, 10, 0.9), ("v", 0, 0, 10, 0.8)])
    # TP then FP: precision [1, 1/2], recall [1, 1] -> AP 1
    assert detection_ap(gt, pred, [0.5]).tolist() == [[1.0]]
    pred = pred_table([("v", 0, 50, 60, 0.95), ("v", 0, 0, 10, 0.9), ("v", 0, 0, 10, 0.8)])
    # FP, TP, FP: precision [0, 1/2, 1/3] -> recall reaches 1 at precision 1/2
    assert detection_ap(gt, pred, [0.5]).tolist() == [[0.5]]


def test_tiou_exactly_at_threshold():
    gt = gt_table([("v", 0, 0, 10), ("v", 0, 20, 30)])
    pred = pred_table([("v", 0, 0, 5, 0.9), ("v", 0, 20, 27, 0.8)])  # tIoU 0.5 and 0.7 exactly
    ap = detection_ap(gt, pred, [0.5, 0.55, 0.7, 0.75])
    # at 0.5 both hit; at 0.55 and 0.7 only the second (precision 1/2 at recall 1/2); at 0.75 none
    np.testing.assert_allclose(ap[:, 0], [1.0, 0.25, 0.25, 0.0])


def test_prediction_for_video_without_ground_truth_is_false_positive():
    gt = gt_table([("v1", 0, 0, 10)])
    pred = pred_table([("v2", 0, 0, 10, 0.9), ("v1", 0, 0, 10, 0.8), ("v1", 1, 0, 10, 0.95)])
    # class 0: FP (unknown video) then TP -> 1 * 1/2; the class-1 prediction has no ground truth class
    assert detection_ap(gt, pred, [0.5]).tolist() == [[0.5]]
    res = evaluate_detection(gt, pred, [0.5], classes=2)
    assert res.ap[0, 0] == 0.5 and np.isnan(res.ap[0, 1]) and res.mAP.tolist() == [0.5]


def test_class_without_predictions_counts_zero():
    gt = gt_table([("v", 0, 0, 10), ("v", 1, 20, 30), ("w", 1, 0, 4)])
    pred = pred_table([("v", 0, 0, 10, 0.5)])
    res = evaluate_detection(gt, pred, [0.3, 0.7], classes=3)
    np.testing.assert_array_equal(res.ap[:, :2], [[1.0, 0.0], [1.0, 0.0]])
    assert np.isnan(res.ap[:, 2]).all()  # no ground truth: left out of the mean
    assert res.mAP.tolist() == [0.5, 0.5] and res.num_positives.tolist() == [1, 2, 0]
    assert mean_ap(gt, pred, [0.3, 0.7], classes=3).tolist() == [0.5, 0.5]


def test_equal_tiou_ground_truths_go_in_input_order():
    gt = gt_table([("v", 0, 0, 10), ("v", 0, 10, 20)])
    # the first prediction overlaps both by 1/3 and takes the first; the second then finds its only
    # overlap taken: hits [1, 0] -> AP 1/2 (taking the second ground truth would give 1)
    pred = pred_table([("v", 0, 5, 15, 0.9), ("v", 0, 0, 10, 0.8)])
    assert detection_ap(gt, pred, [0.3]).tolist() == [[0.5]]


def test_equal_scores_keep_input_order():
    gt = gt_table([("v", 0, 0, 10)])
    hit, miss = ("v", 0, 0, 10, 0.5), ("v", 0, 40, 50, 0.5)
    assert detection_ap(gt, pred_table([hit, miss]), [0.5]).tolist() == [[1.0]]
    assert detection_ap(gt, pred_table([miss, hit]), [0.5]).tolist() == [[0.5]]


def test_string_labels_and_default_classes():
    gt = gt_table([("v", "run", 0, 10), ("v", "jump", 20, 30)])
    pred = pred_table([("v", "run", 0, 10, 0.5), ("v", "swim", 0, 10, 0.9)])
    res = evaluate_detection(gt, pred, [0.5])
    assert res.classes == ["jump", "run"] and res.ap.tolist() == [[0.0, 1.0]]


def test_table_errors():
    gt = gt_table([("v", 0, 5, 4)])
    with pytest.raises(PECRError, match="t-end 4.0 < t-start 5.0"):
        detection_ap(gt, pred_table([]), [0.5])
    with pytest.raises(PECRError, match="column 'score'"):
        detection_ap(gt_table([("v", 0, 0, 4)]), gt_table([("v", 0, 0, 4)]), [0.5])
    with pytest.raises(PECRError, match="no segment"):
        mean_ap(gt_table([("v", 0, 0, 4)]), pred_table([]), [0.5], classes=[1])


# ----------------------------------------------------------------------------- CLI

def write_json(path, data):
    path.write_text(json.dumps(data))
    return str(path)


GT_JSON = {"version": "t", "taxonomy": [], "database": {
    "v1": {"subset": "test", "duration": 30.0, "annotations": [{"segment": [0, 10], "label": "Run"},
                                                              {"segment": [20, 30], "label": "Jump"}]},
    "v2": {"subset": "test", "duration": 30.0, "annotations": [{"segment": [5, 15], "label": "Run"}]},
    "v3": {"subset": "validation", "duration": 30.0, "annotations": [{"segment": [0, 9], "label": "Run"}]}}}
PRED_JSON = {"version": "t", "external_data": {}, "results": {
    "v1": [{"label": "Run", "score": 0.9, "segment": [0, 8]}, {"label": "Jump", "score": 0.4, "segment": [20, 26]}],
    "v2": [{"label": "Run", "score": 0.8, "segment": [40, 50]}, {"label": "Swim", "score": 0.1, "segment": [0, 1]}]}}


def test_cli_table_and_json(tmp_path, capsys):
    gt, pred = write_json(tmp_path / "gt.json", GT_JSON), write_json(tmp_path / "pred.json", PRED_JSON)
    out = tmp_path / "res.json"
    assert detection.main(["--ground-truth", gt, "--predictions", pred, "--subset", "test", "--tiou", "0.5", "0.7",
                           "--json-out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "0.50" in printed.out and "0.70" in printed.out and "avg" in printed.out
    assert "1 predictions of classes without ground truth" in printed.err
    res = json.loads(out.read_text())
    # Jump: tIoU 0.6 -> AP [1, 0]; Run (2 gt): TP (tIoU 0.8) then FP -> AP 1/2 at both thresholds
    assert res["classes"] == ["Jump", "Run"] and res["tiou"] == [0.5, 0.7]
    np.testing.assert_allclose(res["ap"], [[1.0, 0.5], [0.0, 0.5]])
    np.testing.assert_allclose(res["mAP"], [0.75, 0.25])
    assert res["average_mAP"] == pytest.approx(0.5)
    # without --subset the validation video counts too: Run has 3 ground truths -> AP 1/3
    assert detection.main(["--ground-truth", gt, "--predictions", pred, "--tiou", "0.5", "--json-out", str(out)]) == 0
    np.testing.assert_allclose(json.loads(out.read_text())["ap"], [[1.0, 1 / 3]])


@pytest.mark.parametrize("mutate, message", [
    (lambda g, p: p["results"]["v1"][0].pop("score"), "results['v1'][0] has no 'score' field"),
    (lambda g, p: p.pop("results"), "no 'results' field"),
    (lambda g, p: p["results"]["v1"][0].update(segment=[8, 2]), "results['v1'][0] has segment end 2.0 < start 8.0"),
    (lambda g, p: p["results"]["v1"][0].update(segment=[1]), "has segment [1]"),
    (lambda g, p: p["results"]["v1"][0].update(score="high"), "has score 'high'"),
    (lambda g, p: g["database"]["v2"]["annotations"][0].update(segment=[15, 5]), "database['v2']['annotations'][0]"),
    (lambda g, p: g["database"]["v2"]["annotations"][0].pop("label"), "has no 'label' field"),
    (lambda g, p: g["database"]["v2"].update(subset="train"), None),  # fine: v2 just leaves the test subset
])
def test_cli_malformed_files(tmp_path, capsys, mutate, message):
    g, p = json.loads(json.dumps(GT_JSON)), json.loads(json.dumps(PRED_JSON))
    mutate(g, p)
    gt, pred = write_json(tmp_path / "gt.json", g), write_json(tmp_path / "pred.json", p)
    code = detection.main(["--ground-truth", gt, "--predictions", pred, "--subset", "test"])
    err = capsys.readouterr().err
    if message is None:
        assert code == 0
    else:
        assert code == 2 and message in err and "Traceback" not in err and err.startswith("error: ")


def test_cli_unknown_subset_and_bad_json(tmp_path, capsys):
    gt, pred = write_json(tmp_path / "gt.json", GT_JSON), write_json(tmp_path / "pred.json", PRED_JSON)
    assert detection.main(["--ground-truth", gt, "--predictions", pred, "--subset", "testing"]) == 2
    assert "unknown subset 'testing'" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{oops")
    assert detection.main(["--ground-truth", gt, "--predictions", str(tmp_path / "bad.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert detection.main(["--ground-truth", str(tmp_path / "none.json"), "--predictions", pred]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_as_module(tmp_path):
    import subprocess
    import sys

    gt = write_json(tmp_path / "gt.json", GT_JSON)
    pred = write_json(tmp_path / "pred.json", {"results": {"v1": [{"label": "Run", "segment": [0, 1]}]}})
    run = subprocess.run([sys.executable, "-m", "eval.detection", "--ground-truth", gt, "--predictions", pred],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "no 'score' field" in run.stderr and "Traceback" not in run.stderr


def test_cli_refuses_thresholds_outside_unit_interval(tmp_path, capsys):
    gt, pred = write_json(tmp_path / "gt.json", GT_JSON), write_json(tmp_path / "pred.json", PRED_JSON)
    assert detection.main(["--ground-truth", gt, "--predictions", pred, "--tiou", "1.5", "-0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--tiou 1.5 -0.2" in err and "(0, 1]" in err and "\n" not in err


def test_cli_warns_when_no_predicted_video_is_in_the_ground_truth(tmp_path, capsys):
    renamed = {"results": {f"{v}.mp4": p for v, p in PRED_JSON["results"].items()}}
    gt, pred = write_json(tmp_path / "gt.json", GT_JSON), write_json(tmp_path / "pred.json", renamed)
    assert detection.main(["--ground-truth", gt, "--predictions", pred]) == 0
    err = capsys.readouterr().err
    assert "warning: none of the 2 videos" in err and "'v1.mp4'" in err and "file extension" in err


def test_cli_scores_on_the_ground_truths_snippet_grid(tmp_path, capsys):
    """Ground truth on the 0.64 s grid with predictions in seconds: scored in snippet units, where a
    tIoU that is exactly the threshold in snippets stays a hit (in seconds float rounding decides)."""
    grid = {"fps": 25.0, "frames": 16}
    sec = lambda k: k * (16 / 25)
    gt_json = {"snippet_grid": grid, "database": {"v": {"subset": "test", "annotations": [
        {"segment": [sec(s), sec(e)], "label": "Run"} for s, e in [(0, 20), (100, 103), (7, 37)]]}}}
    preds = [(0, 10), (100, 106), (7, 22)]  # tIoU 0.5 exactly in snippets, each
    pred_json = {"results": {"v": [{"label": "Run", "score": 1 - i / 10, "segment": [sec(s), sec(e)]}
                                   for i, (s, e) in enumerate(preds)]}}
    gt, pred = write_json(tmp_path / "gt.json", gt_json), write_json(tmp_path / "pred.json", pred_json)
    out = tmp_path / "res.json"
    assert detection.main(["--ground-truth", gt, "--predictions", pred, "--tiou", "0.5", "--json-out", str(out)]) == 0
    assert "snippet grid" in capsys.readouterr().err
    assert json.loads(out.read_text())["mAP"] == [1.0]
    table = detection.to_grid(detection.load_activitynet_predictions(pred), grid, "near")
    assert table["t-start"].tolist() == [0, 100, 7] and table["t-end"].tolist() == [10, 106, 22]
