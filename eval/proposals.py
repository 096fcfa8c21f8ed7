"""Scored segments of one test video from its CAS and attention (docs/method.md §5).

    cfg = ProposalConfig.from_options(opts)
    df = video_proposals(cas, attention, cfg, "video_test_0000004")   # snippet units
    df = filter_ambiguous(df, load_ambiguous(opts.ambiguous_file))     # THUMOS14 only
    df_sec = to_seconds(df)

Steps (T snippets, C classes, background last):
1. ``E = CAS ⊙ A`` (T, C+1), formed in the inputs' precision (float32 like the release); all
   later arithmetic is float64.
2. video scores ``p = softmax(mean of the top-k of E over time)`` over the C+1 columns,
   k = max(1, T // test_topk); background dropped.
3. predicted classes: ``p >= vid_thresh``, else the argmax.
4. proposals for every predicted class c, from two threshold families ("above" = strictly
   greater): the CAS family groups and scores the min-max normalised ``E[:, c]`` (a constant
   column normalises to all zeros: its range is taken as 1, no division by zero); the
   actionness family groups ``A`` and scores the raw ``E[:, c]``. A run of consecutive
   snippets s..e becomes [s, e+1) with the outer-inner contrast score
   ``mean(inside) - mean(outside) + gamma_oic * p_c``; outside = [max(0, trunc(s - m·n)), s)
   ∪ (e, min(T-1, trunc(e + m·n))], n = e - s + 1, m = oic_margin, mean 0 when empty.
   Release quirk (``lone_first_snippet="skip"``, default): a (threshold, class) row whose only
   above-threshold snippet is snippet 0 makes no proposal (the release tests ``indices.any()``,
   False for the index list [0]); ``"keep"`` makes the single-snippet proposal [0, 1) there too.
5. per class, Gaussian soft-NMS with the release's pick order (see :func:`soft_nms`); every
   proposal is kept with its decayed score.
Rows come class by class (classes in order of their first proposal, as the release's dict),
each class in soft-NMS pick order; within a class the input to soft-NMS is the CAS family
(thresholds ascending, segments in time order) followed by the actionness family.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.errors import PECRError

COLUMNS = ["video-id", "label", "t-start", "t-end", "score"]


@dataclass(frozen=True)
class ProposalConfig:
    """Inference constants of docs/method.md §5 (defaults = the release's THUMOS14 values)."""

    test_topk: int = 20
    vid_thresh: float = 0.2
    cas_s: float = 0.0
    cas_e: float = 0.95
    cas_num: int = 20
    act_s: float = 0.1
    act_e: float = 0.95
    act_num: int = 20
    gamma_oic: float = 0.1
    oic_margin: float = 0.25
    nms_sigma: float = 0.3
    lone_first_snippet: str = "skip"

    def __post_init__(self):
        if self.lone_first_snippet not in ("skip", "keep"):
            raise PECRError(f"unknown --lone-first-snippet {self.lone_first_snippet!r}; use skip (the release) or keep")

    @classmethod
    def from_options(cls, opts: Any) -> "ProposalConfig":
        return cls(**{f.name: getattr(opts, f.name) for f in fields(cls)})

    @property
    def cas_thresholds(self) -> np.ndarray:
        return np.linspace(self.cas_s, self.cas_e, self.cas_num)

    @property
    def act_thresholds(self) -> np.ndarray:
        return np.linspace(self.act_s, self.act_e, self.act_num)


def _inputs(cas, attention, video_id: str = "") -> tuple[np.ndarray, np.ndarray]:
    cas, attention = np.asarray(cas), np.asarray(attention)
    if cas.ndim == 3 and cas.shape[0] == 1:
        cas = cas[0]
    attention = attention.reshape(-1) if attention.size == cas.shape[0] else attention
    if cas.ndim != 2 or cas.shape[0] == 0 or cas.shape[1] < 2 or attention.shape != (cas.shape[0],):
        raise PECRError(f"proposals need CAS (T, C+1) and attention (T,) with T >= 1; got {cas.shape} and "
                        f"{attention.shape}")
    if not (np.isfinite(cas).all() and np.isfinite(attention).all()):
        where = f" of video {video_id}" if video_id else ""
        raise PECRError(f"CAS or attention{where} holds NaN/inf; the model diverged or the checkpoint is broken")
    return cas, attention


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max())
    return z / z.sum()


def video_class_scores(cas, attention, test_topk: int = 20) -> np.ndarray:
    """p (C,): softmax over C+1 columns of the mean top-k (k = max(1, T // test_topk)) of
    ``E = CAS ⊙ A`` over time, background column dropped. cas (T, C+1), attention (T,)."""
    cas, attention = _inputs(cas, attention)
    return _scores_from_energy((cas * attention[:, None]).astype(np.float64), test_topk)


def _scores_from_energy(energy: np.ndarray, test_topk: int) -> np.ndarray:
    k = max(1, energy.shape[0] // test_topk)
    topk = -np.sort(-energy, axis=0)[:k]
    return _softmax(topk.mean(axis=0))[:-1]


def predicted_classes(scores: np.ndarray, vid_thresh: float) -> np.ndarray:
    """Indices with ``scores >= vid_thresh`` (ascending), else ``[argmax]``."""
    pred = np.flatnonzero(scores >= vid_thresh)
    return pred if pred.size else np.array([int(np.argmax(scores))])


def minmax_normalise(x: np.ndarray) -> np.ndarray:
    """Min-max normalise each column of x (T, P) over time; a constant column becomes zeros."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    return (x - lo) / np.where(span > 0, span, 1.0)


def group_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of True in each row of mask (R, T) -> (row, start, end), end exclusive, ordered by
    row then time."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    step = np.diff(padded, axis=1)
    row, start = np.nonzero(step == 1)
    _, end = np.nonzero(step == -1)
    return row, start, end


def outer_inner_contrast(values: np.ndarray, row: np.ndarray, start: np.ndarray, end: np.ndarray,
                         margin: float = 0.25) -> np.ndarray:
    """mean(inside) - mean(outside) of runs [start, end) of rows of values (R, T) (no γ·p term).

    Outside: [max(0, trunc(s - margin·n)), s) ∪ (e, min(T-1, trunc(e + margin·n))] with
    e = end - 1, n = end - start; its mean is 0 when it is empty. Sums from cumulative sums.
    """
    T = values.shape[1]
    csum = np.zeros((values.shape[0], T + 1))
    np.cumsum(values, axis=1, out=csum[:, 1:])
    n = end - start
    last = end - 1
    left = np.maximum(0, np.trunc(start - margin * n).astype(np.int64))
    right = np.minimum(T - 1, np.trunc(last + margin * n).astype(np.int64))
    inner = (csum[row, end] - csum[row, start]) / n
    outer_sum = (csum[row, start] - csum[row, left]) + (csum[row, right + 1] - csum[row, end])
    outer_n = (start - left) + (right - last)
    outer = np.divide(outer_sum, outer_n, out=np.zeros_like(outer_sum), where=outer_n > 0)
    return inner - outer


def soft_nms(start: np.ndarray, end: np.ndarray, score: np.ndarray, sigma: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian soft-NMS as released -> (pick order (N,) indices into the input, decayed scores (N,)).

    Repeatedly pick the first maximum (``np.argmax``) of the remaining scores, swap it with
    the first remaining row (which thus takes the picked row's place), drop it, and multiply
    the remaining scores by ``exp(-IoU² / sigma)``; IoU uses the "+1" convention on the boxes
    as given (length = end - start + 1). Nothing is discarded.
    """
    n = len(score)
    rows = np.stack([np.asarray(start, np.float64), np.asarray(end, np.float64),
                     np.asarray(score, np.float64), np.arange(n, dtype=np.float64)], axis=1)
    area = rows[:, 1] - rows[:, 0] + 1
    rows = np.concatenate([rows, area[:, None]], axis=1)  # x1, x2, score, index, area
    for i in range(n):
        j = i + int(np.argmax(rows[i:, 2]))
        if j != i:
            rows[[i, j]] = rows[[j, i]]
        x1, x2, a = rows[i, 0], rows[i, 1], rows[i, 4]
        rest = rows[i + 1:]
        inter = np.maximum(np.minimum(x2, rest[:, 1]) - np.maximum(x1, rest[:, 0]) + 1, 0.0)
        iou = inter / (a + rest[:, 4] - inter)
        rest[:, 2] *= np.exp(-(iou * iou) / sigma)
    return rows[:, 3].astype(np.int64), rows[:, 2].copy()


def video_proposals(cas, attention, cfg: ProposalConfig, video_id: str) -> pd.DataFrame:
    """Scored segments of one video (docs/method.md §5 steps 1-5) -> table video-id, label (class index),
    t-start, t-end (int snippets, [s, e+1)), score. cas (T, C+1) with background last, attention (T,)."""
    cas, attention = _inputs(cas, attention, video_id)
    energy = (cas * attention[:, None]).astype(np.float64)  # E (T, C+1)
    attention = attention.astype(np.float64)
    T = energy.shape[0]
    p = _scores_from_energy(energy, cfg.test_topk)
    classes = predicted_classes(p, cfg.vid_thresh)
    n_cls = classes.size
    raw = energy[:, classes].T  # (P, T)
    norm = minmax_normalise(energy[:, classes]).T  # (P, T)

    cas_thr, act_thr = cfg.cas_thresholds, cfg.act_thresholds
    # rows: (CAS threshold, class) then (actionness threshold, class), the release's order
    mask = np.concatenate([(norm[None] > cas_thr[:, None, None]).reshape(-1, T),
                           np.repeat(attention[None] > act_thr[:, None], n_cls, axis=0)])
    values = np.concatenate([norm, raw])  # score sequences: CAS family rows use norm, actionness rows raw
    n_cas_rows = cas_thr.size * n_cls
    if cfg.lone_first_snippet == "skip":  # the release: no proposal when snippet 0 alone is above the threshold
        mask[mask[:, 0] & (mask.sum(axis=1) == 1)] = False
    row, start, end = group_runs(mask)
    cls_pos = row % n_cls
    seq = np.where(row < n_cas_rows, cls_pos, n_cls + cls_pos)
    score = outer_inner_contrast(values, seq, start, end, cfg.oic_margin) + cfg.gamma_oic * p[classes[cls_pos]]

    parts = []
    first = np.unique(cls_pos, return_index=True)[1]
    for c in cls_pos[np.sort(first)]:  # classes in order of their first proposal
        idx = np.flatnonzero(cls_pos == c)
        order, decayed = soft_nms(start[idx], end[idx], score[idx], cfg.nms_sigma)
        parts.append(pd.DataFrame({"video-id": video_id, "label": int(classes[c]), "t-start": start[idx][order],
                                   "t-end": end[idx][order], "score": decayed}))
    if not parts:
        return empty_table()
    return pd.concat(parts, ignore_index=True)[COLUMNS]


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({"video-id": pd.Series(dtype=object), "label": pd.Series(dtype=np.int64),
                         "t-start": pd.Series(dtype=np.int64), "t-end": pd.Series(dtype=np.int64),
                         "score": pd.Series(dtype=np.float64)})


# ----------------------------------------------------------------------------- THUMOS14 ambiguous regions

def load_ambiguous(path: str | Path) -> dict[str, np.ndarray]:
    """Ambiguous_test.txt (lines ``<video> [class] <start_sec> <end_sec>``) -> video -> (n, 2) seconds."""
    path = Path(path)
    if not path.is_file():
        raise PECRError(f"ambiguous-region file {path} not found; pass --ambiguous-file none to disable the filter")
    regions: dict[str, list[tuple[float, float]]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) not in (3, 4):
                raise ValueError
            start, end = float(parts[-2]), float(parts[-1])
        except ValueError:
            raise PECRError(f"{path}:{number}: expected '<video> <start_sec> <end_sec>', got {line.strip()!r}") from None
        regions.setdefault(parts[0], []).append((start, end))
    return {v: np.array(r, dtype=np.float64) for v, r in regions.items()}


def filter_ambiguous(df: pd.DataFrame, ambiguous: dict[str, np.ndarray], fps: float = 25.0,
                     frames: int = 16) -> pd.DataFrame:
    """Drop predictions (snippet units) sharing an integer snippet with an ambiguous region of
    their video, whatever the class: ``range(s, e)`` against ``range(round(a·fps/frames),
    round(b·fps/frames))`` (round half to even, like Python's ``round``). Non-integer bounds
    are read as the integers i with s <= i < e."""
    drop = np.zeros(len(df), dtype=bool)
    vids = df["video-id"].to_numpy()
    s = np.ceil(df["t-start"].to_numpy(np.float64))
    e = np.ceil(df["t-end"].to_numpy(np.float64))
    for vid, regions in ambiguous.items():
        rows = np.flatnonzero(vids == vid)
        if rows.size == 0:
            continue
        a = np.round(regions[:, 0] * fps / frames)
        b = np.round(regions[:, 1] * fps / frames)
        overlap = np.maximum(s[rows, None], a[None]) < np.minimum(e[rows, None], b[None])
        drop[rows[overlap.any(axis=1)]] = True
    return df[~drop].reset_index(drop=True)


def to_seconds(df: pd.DataFrame, fps: float = 25.0, frames: int = 16) -> pd.DataFrame:
    """Copy of a snippet-unit table with t-start / t-end in seconds (snippet × frames / fps)."""
    out = df.copy()
    for col in ("t-start", "t-end"):
        out[col] = out[col].to_numpy(np.float64) * (frames / fps)
    return out
