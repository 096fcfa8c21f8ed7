"""Result records, tables and the best-checkpoint criterion (SPEC §4, §6).

A metrics record (one line of metrics.jsonl), all values fractions::

    {"iteration": 3050, "tiou": [0.1, ..., 0.9], "mAP": [...],
     "average_mAP": {"0.1:0.7": x, "0.3:0.7": y},   # protocol thumos
     "cmAP": z,                                      # activitynet: {"0.5:0.95": x}
     "ap_per_class": {"classes": [name, ...], "ap": [[...], ...]}}   # optional: ap[i][j] at tiou[i],
                                                     # class j; null for a class without ground truth

THUMOS14 reports mAP at 0.1..0.7 and the means over 0.1:0.7 and 0.3:0.7, and keeps the
checkpoint with the largest sum of mAP@0.1:0.7; ActivityNet1.2 reports 0.5, 0.75, 0.95 and the
mean over 0.5:0.05:0.95, which is also its criterion.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from utils.errors import PECRError

PROTOCOLS = {
    # name: (reported thresholds, {average name: thresholds averaged})
    "thumos": ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
               {"0.1:0.7": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], "0.3:0.7": [0.3, 0.4, 0.5, 0.6, 0.7]}),
    "activitynet": ([0.5, 0.75, 0.95],
                    {"0.5:0.95": [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]}),
}


def _protocol(protocol: str):
    if protocol not in PROTOCOLS:
        raise PECRError(f"unknown evaluation protocol {protocol!r}; use one of {', '.join(PROTOCOLS)} (--protocol)")
    return PROTOCOLS[protocol]


def _at(tiou: Sequence[float], mAP: Sequence[float], wanted: Sequence[float], protocol: str) -> np.ndarray:
    """mAP values at the ``wanted`` thresholds (matched to 1e-9)."""
    tiou, mAP = np.asarray(tiou, dtype=np.float64), np.asarray(mAP, dtype=np.float64)
    out = []
    for w in wanted:
        hit = np.flatnonzero(np.abs(tiou - w) < 1e-9)
        if hit.size == 0:
            raise PECRError(f"protocol {protocol} needs mAP at tIoU {w:g} but the evaluation used "
                            f"{[round(t, 4) for t in tiou.tolist()]}; set --tiou-thresholds accordingly")
        out.append(mAP[hit[0]])
    return np.array(out)


def metrics_record(iteration: int, tiou: Sequence[float], mAP: Sequence[float], protocol: str,
                   cmap: float | None = None, ap_per_class: tuple[Sequence[str], np.ndarray] | None = None) -> dict:
    """The metrics.jsonl record of one evaluation (fractions; ``cmAP`` None when not computed).

    ``ap_per_class`` = (class names (C,), AP (n_tiou, C) with NaN for classes without ground truth)
    adds the ``ap_per_class`` entry (NaN written as null).
    """
    _, averages = _protocol(protocol)
    if len(tiou) != len(mAP):
        raise PECRError(f"metrics record: {len(tiou)} tIoU thresholds but {len(mAP)} mAP values")
    record = {
        "iteration": int(iteration),
        "tiou": [float(t) for t in tiou],
        "mAP": [float(m) for m in mAP],
        "average_mAP": {name: float(_at(tiou, mAP, ts, protocol).mean()) for name, ts in averages.items()},
        "cmAP": None if cmap is None else float(cmap),
    }
    if ap_per_class is not None:
        classes, ap = ap_per_class
        ap = np.asarray(ap, dtype=np.float64)
        if ap.shape != (len(tiou), len(classes)):
            raise PECRError(f"metrics record: per-class AP of shape {ap.shape}, expected ({len(tiou)}, {len(classes)}) "
                            "(tIoU thresholds, classes)")
        record["ap_per_class"] = {"classes": [str(c) for c in classes],
                                  "ap": [[None if np.isnan(a) else float(a) for a in row] for row in ap]}
    return record


def format_table(record: dict, protocol: str) -> str:
    """Two-line table of a record in percent: reported thresholds, averages, classification mAP."""
    reported, averages = _protocol(protocol)
    values = _at(record["tiou"], record["mAP"], reported, protocol)
    heads = [f"{t:g}" for t in reported] + [f"avg {name}" for name in averages] + ["cmAP"]
    cells = [f"{100 * v:.2f}" for v in values] + [f"{100 * record['average_mAP'][n]:.2f}" for n in averages]
    cells.append("-" if record.get("cmAP") is None else f"{100 * record['cmAP']:.2f}")
    widths = [max(len(h), len(c)) for h, c in zip(heads, cells)]
    title = f"iteration {record['iteration']}" if "iteration" in record else ""
    label = max(len(title), len("mAP (%)"))
    return "\n".join([
        f"{title:<{label}} | " + " ".join(f"{h:>{w}}" for h, w in zip(heads, widths)),
        f"{'mAP (%)':<{label}} | " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths)),
    ])


def selection_score(record: dict, protocol: str) -> float:
    """Best-checkpoint criterion (higher is better): THUMOS14 Σ mAP@0.1:0.7, ActivityNet mean mAP@0.5:0.95."""
    _protocol(protocol)
    if protocol == "thumos":
        return float(_at(record["tiou"], record["mAP"], PROTOCOLS["thumos"][0], protocol).sum())
    return float(record["average_mAP"]["0.5:0.95"])
