"""Video-level class scores and classification mAP (docs/method.md §5, §6) against loops and hand values."""

import numpy as np
import pytest

from eval.classification import classification_ap, classification_map, classification_scores
from utils.errors import PECRError


def softmax(x):
    z = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return z / z.sum()


def test_scores_release_is_max_over_time():
    cas = np.array([[1, 0, 2], [3, 1, 0], [2, 5, 1]], dtype=np.float32)
    np.testing.assert_allclose(classification_scores(cas, "release"), softmax([3, 5, 2]), rtol=1e-12)


def test_scores_paper_uses_ceil_t_over_8():
    rng = np.random.default_rng(0)
    cas = rng.normal(size=(9, 4))  # k = ceil(9 / 8) = 2
    want = softmax([np.mean(sorted(cas[:, c])[-2:]) for c in range(4)])
    np.testing.assert_allclose(classification_scores(cas, "paper"), want, rtol=1e-12)
    cas = rng.normal(size=(17, 4))  # k = 3
    want = softmax([np.mean(sorted(cas[:, c])[-3:]) for c in range(4)])
    np.testing.assert_allclose(classification_scores(cas[None], "paper"), want, rtol=1e-12)
    with pytest.raises(PECRError, match="mode"):
        classification_scores(cas, "bogus")


def naive_map(scores, labels):
    aps = []
    for c in range(scores.shape[1]):
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i, c])  # stable
        hits, precisions = 0, []
        for r, i in enumerate(ranked, 1):
            if labels[i, c]:
                hits += 1
                precisions.append(hits / r)
        if precisions:
            aps.append(sum(precisions) / len(precisions))
    return sum(aps) / len(aps)


def test_map_by_hand():
    scores = np.array([[0.9, 0.5, 0.1], [0.8, 0.5, 0.2], [0.7, 0.1, 0.3], [0.6, 0.2, 0.4]])
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    # class 0: positives at ranks 1 and 3 -> (1 + 2/3) / 2; class 1: tie 0.5/0.5 keeps input order, the
    # positive is second -> 1/2; class 2 has no positive -> left out
    ap = classification_ap(scores, labels)
    np.testing.assert_allclose(ap[:2], [(1 + 2 / 3) / 2, 0.5])
    assert np.isnan(ap[2])
    assert classification_map(scores, labels) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)


def test_map_matches_naive_loop():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n, c = int(rng.integers(1, 30)), int(rng.integers(1, 6))
        scores = np.round(rng.random((n, c)), 1)  # ties
        labels = rng.random((n, c)) < 0.3
        labels[rng.integers(0, n), 0] = True
        assert classification_map(scores, labels) == pytest.approx(naive_map(scores, labels), abs=1e-12)


def test_map_errors():
    with pytest.raises(PECRError, match="same shape"):
        classification_map(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(PECRError, match="no class"):
        classification_map(np.zeros((3, 2)), np.zeros((3, 2)))
