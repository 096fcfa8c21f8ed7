"""Metrics record, result tables and best-checkpoint criterion (docs/method.md §4, §6)."""
import json

import numpy as np
import pytest

from eval.report import format_table, metrics_record, selection_score
from options import ANET_TIOU, THUMOS_TIOU
from utils.errors import PECRError

# The successor release's THUMOS14 figures (docs/method.md §8), as fractions, padded with 0.8 / 0.9.
PUBLISHED = [0.7485, 0.6993, 0.6135, 0.5313, 0.4511, 0.3045, 0.1709, 0.06, 0.01]


def test_thumos_record_and_table():
    r = metrics_record(3050, THUMOS_TIOU, PUBLISHED, "thumos", 0.9)
    assert r["iteration"] == 3050 and r["tiou"] == THUMOS_TIOU and r["mAP"] == PUBLISHED and r["cmAP"] == 0.9
    assert set(r["average_mAP"]) == {"0.1:0.7", "0.3:0.7"}
    assert r["average_mAP"]["0.1:0.7"] == pytest.approx(np.mean(PUBLISHED[:7]))
    assert r["average_mAP"]["0.3:0.7"] == pytest.approx(np.mean(PUBLISHED[2:7]))
    assert json.loads(json.dumps(r)) == r  # one JSON line of metrics.jsonl
    table = format_table(r, "thumos")
    # docs/method.md §8: mean(0.1:0.7) 50.27, mean(0.3:0.7) 41.43
    for cell in ["74.85", "17.09", "50.27", "41.43", "90.00", "avg 0.1:0.7", "avg 0.3:0.7", "iteration 3050"]:
        assert cell in table
    assert "6.00" not in table  # 0.8 and 0.9 are not reported
    assert selection_score(r, "thumos") == pytest.approx(sum(PUBLISHED[:7]))


def test_activitynet_record_and_table():
    mAP = np.linspace(0.45, 0.05, 10)
    r = metrics_record(1000, ANET_TIOU, mAP, "activitynet", None)
    assert r["average_mAP"] == {"0.5:0.95": pytest.approx(0.25)} and r["cmAP"] is None
    table = format_table(r, "activitynet")
    assert "45.00" in table and "5.00" in table and "25.00" in table and f"{100 * mAP[5]:.2f}" in table
    assert selection_score(r, "activitynet") == pytest.approx(0.25)


def test_thresholds_from_linspace_are_found():
    r = metrics_record(0, np.linspace(0.1, 0.9, 9), PUBLISHED, "thumos")
    assert r["average_mAP"]["0.3:0.7"] == pytest.approx(np.mean(PUBLISHED[2:7]))


def test_errors():
    with pytest.raises(PECRError, match="tIoU 0.7"):
        metrics_record(0, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.5] * 6, "thumos")
    with pytest.raises(PECRError, match="protocol"):
        metrics_record(0, THUMOS_TIOU, PUBLISHED, "voc")
    with pytest.raises(PECRError, match="mAP values"):
        metrics_record(0, THUMOS_TIOU, PUBLISHED[:3], "thumos")


def test_per_class_ap_is_an_additive_entry():
    base = metrics_record(7, THUMOS_TIOU, PUBLISHED, "thumos", 0.5)
    ap = np.full((len(THUMOS_TIOU), 3), np.nan)
    ap[:, 0], ap[:, 2] = PUBLISHED, 0.25
    r = metrics_record(7, THUMOS_TIOU, PUBLISHED, "thumos", 0.5, ap_per_class=(["a", "b", "c"], ap))
    assert {k: v for k, v in r.items() if k != "ap_per_class"} == base  # the other keys are unchanged
    assert r["ap_per_class"]["classes"] == ["a", "b", "c"]
    assert r["ap_per_class"]["ap"][0] == [PUBLISHED[0], None, 0.25]  # NaN (no ground truth) -> null
    assert json.loads(json.dumps(r)) == r
    with pytest.raises(PECRError, match="per-class AP"):
        metrics_record(7, THUMOS_TIOU, PUBLISHED, "thumos", 0.5, ap_per_class=(["a", "b"], ap))
