"""Detection AP (SPEC §6): the vectorised evaluator against a naive per-prediction loop."""
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
