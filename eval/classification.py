"""Video-level classification (docs/method.md §5 last paragraph, §6).

Scores: ``softmax`` over all C+1 columns of the mean top-k of the raw CAS over time, with
k = 1 (``mode="release"``: the release takes k from the batch dimension of a (1, T, D)
tensor, i.e. a max over time) or k = ceil(T / 8) (``mode="paper"``).

Classification mAP: per class, videos ranked by score descending (ties in input order,
stable sort); AP = mean of the precision at each positive video; mean over the classes with
at least one positive video (classes without positives are undefined and left out, as in the
release). Returned as a fraction (the release prints it × 100).
"""
from __future__ import annotations

import math

import numpy as np

from utils.errors import PECRError

MODES = ("release", "paper")


def classification_scores(cas, mode: str = "release") -> np.ndarray:
    """(C+1,) video class probabilities of one video's CAS (T, C+1) (background last)."""
    cas = np.asarray(cas, dtype=np.float64)
    if cas.ndim == 3 and cas.shape[0] == 1:
        cas = cas[0]
    if cas.ndim != 2 or cas.shape[0] == 0:
        raise PECRError(f"classification scores need a CAS of shape (T, C+1) with T >= 1; got {cas.shape}")
    if mode not in MODES:
        raise PECRError(f"classification mode {mode!r} unknown; use one of {', '.join(MODES)} (--cls-topk)")
    k = 1 if mode == "release" else math.ceil(cas.shape[0] / 8)
    pooled = -np.sort(-cas, axis=0)[:k].mean(axis=0)
    z = np.exp(pooled - pooled.max())
    return z / z.sum()


def classification_ap(scores, labels) -> np.ndarray:
    """(C,) AP per class of scores (N, C) against binary labels (N, C); NaN without positives."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels) > 0
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise PECRError(f"classification mAP needs scores and labels of the same shape (N, C); got "
                        f"{scores.shape} and {labels.shape}")
    order = np.argsort(-scores, axis=0, kind="stable")
    hits = np.take_along_axis(labels, order, axis=0)
    precision = np.cumsum(hits, axis=0) / np.arange(1, len(hits) + 1)[:, None]
    npos = hits.sum(axis=0)
    total = np.where(hits, precision, 0.0).sum(axis=0)
    return np.divide(total, npos, out=np.full(npos.shape, np.nan), where=npos > 0)


def classification_map(scores, labels) -> float:
    """Classification mAP (fraction) over the classes with at least one positive video."""
    ap = classification_ap(scores, labels)
    if np.isnan(ap).all():
        raise PECRError("classification mAP: no class has a positive video in the labels")
    return float(np.nanmean(ap))
