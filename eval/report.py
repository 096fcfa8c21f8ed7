"""Result records, tables and the best-checkpoint criterion (docs/method.md §4, §6).

A metrics record (one line of metrics.jsonl), all values fractions::

    {"iteration": 3050, "tiou": [0.1, ..., 0.9], "mAP": [...],
     "average_mAP": {"0.1:0.7": x, "0.3:0.7": y},   # protocol thumos
     "cmAP": z,                                      # activitynet: {"0.5:0.95": x}
     "ap_per_class": {"classes": [name, ...], "ap": [[...], ...]}}   # optional: ap[i][j] at tiou[i],
                                                     # class j; null for a class without ground truth

THUMOS14 reports mAP at 0.1..0.7 and the means over 0.1:0.7 and 0.3:0.7, and keeps the
checkpoint with the largest sum of mAP@0.1:0.7; ActivityNet1.2 reports 0.5, 0.75, 0.95 and the
mean over 0.5:0.05:0.95, which is also its criterion.

A dataset may declare a protocol of its own, as a mapping in its description (YAML)::

    protocol:
      reported: [0.3, 0.5, 0.7]                        # columns of the table
      averages: {"0.3:0.7": [0.3, 0.4, 0.5, 0.6, 0.7]}  # average_mAP entries (name: thresholds)
      criterion: mean 0.3:0.7                          # best checkpoint: "mean NAME" or "sum NAME"

Every function taking ``protocol`` accepts a built-in name or such a mapping.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from utils.errors import PECRError

PROTOCOLS = {
    # name: (reported thresholds, {average name: thresholds averaged})
    "thumos": ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7],
               {"0.1:0.7": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], "0.3:0.7": [0.3, 0.4, 0.5, 0.6, 0.7]}),
    "activitynet": ([0.5, 0.75, 0.95],
                    {"0.5:0.95": [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]}),
}
CRITERIA = {"thumos": "sum 0.1:0.7", "activitynet": "mean 0.5:0.95"}  # best-checkpoint criterion


@dataclass(frozen=True)
class Protocol:
    """What a dataset reports: ``reported`` thresholds, named ``averages``, and the best-checkpoint
    criterion: ``reduce`` ("mean" or "sum") of the mAP over the thresholds of average ``criterion``."""

    name: str
    reported: list[float]
    averages: dict[str, list[float]]
    reduce: str
    criterion: str


def resolve_protocol(protocol: str | Mapping[str, Any], where: str = "--protocol") -> Protocol:
    """A built-in protocol name or a mapping {reported, averages, criterion} -> :class:`Protocol`
    (PECRError naming ``where`` and the key when malformed)."""
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise PECRError(f"unknown evaluation protocol {protocol!r}; use one of {', '.join(PROTOCOLS)} (--protocol)")
        reported, averages = PROTOCOLS[protocol]
        reduce, name = CRITERIA[protocol].split()
        return Protocol(protocol, reported, averages, reduce, name)
    if not isinstance(protocol, Mapping):
        raise PECRError(f"{where}: expected a protocol name ({', '.join(PROTOCOLS)}) or a mapping "
                        f"{{reported, averages, criterion}}, got {protocol!r}")
    unknown = sorted(set(protocol) - {"name", "reported", "averages", "criterion"})
    missing = [k for k in ("reported", "averages", "criterion") if k not in protocol]
    if unknown or missing:
        raise PECRError(f"{where}: a protocol mapping has the keys reported, averages, criterion (and optionally name); "
                        + (f"unknown key {unknown[0]!r}" if unknown else f"missing {', '.join(missing)}"))

    def thresholds(value, key: str) -> list[float]:
        ok = isinstance(value, (list, tuple)) and value and all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and 0 < t <= 1 for t in value)
        if not ok:
            raise PECRError(f"{where}: {key} must be a non-empty list of tIoU thresholds in (0, 1], got {value!r}")
        return [float(t) for t in value]

    reported = thresholds(protocol["reported"], "reported")
    if not isinstance(protocol["averages"], Mapping) or not protocol["averages"]:
        raise PECRError(f"{where}: averages must map names to threshold lists, e.g. {{\"0.3:0.7\": [0.3, 0.4, 0.5, 0.6, 0.7]}}")
    averages = {str(k): thresholds(v, f"averages[{k!r}]") for k, v in protocol["averages"].items()}
    words = str(protocol["criterion"]).split()
    words = ["mean", *words] if len(words) == 1 else words  # a bare average name: its mean
    reduce, name = words if len(words) == 2 else ("", "")
    if reduce not in ("mean", "sum") or name not in averages:
        raise PECRError(f"{where}: criterion {protocol['criterion']!r} must be 'mean NAME' or 'sum NAME' with NAME one of "
                        f"the averages ({', '.join(averages)})")
    return Protocol(str(protocol.get("name", "custom")), reported, averages, reduce, name)


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


def metrics_record(iteration: int, tiou: Sequence[float], mAP: Sequence[float], protocol: str | Mapping,
                   cmap: float | None = None, ap_per_class: tuple[Sequence[str], np.ndarray] | None = None) -> dict:
    """The metrics.jsonl record of one evaluation (fractions; ``cmAP`` None when not computed).

    ``ap_per_class`` = (class names (C,), AP (n_tiou, C) with NaN for classes without ground truth)
    adds the ``ap_per_class`` entry (NaN written as null).
    """
    p = resolve_protocol(protocol)
    if len(tiou) != len(mAP):
        raise PECRError(f"metrics record: {len(tiou)} tIoU thresholds but {len(mAP)} mAP values")
    record = {
        "iteration": int(iteration),
        "tiou": [float(t) for t in tiou],
        "mAP": [float(m) for m in mAP],
        "average_mAP": {name: float(_at(tiou, mAP, ts, p.name).mean()) for name, ts in p.averages.items()},
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


def protocol_key(protocol: str | Mapping) -> str:
    """A protocol's identity as text: a built-in's name, a declared protocol's sorted JSON."""
    return protocol if isinstance(protocol, str) else json.dumps(protocol, sort_keys=True, default=str)


def columns(protocol: str | Mapping) -> list[str]:
    """The table columns of a protocol: its reported thresholds, ``avg NAME`` per average, ``cmAP``."""
    p = resolve_protocol(protocol)
    return [f"{t:g}" for t in p.reported] + [f"avg {name}" for name in p.averages] + ["cmAP"]


def format_table(record: dict, protocol: str | Mapping) -> str:
    """Two-line table of a record in percent: reported thresholds, averages, classification mAP."""
    p = resolve_protocol(protocol)
    values = _at(record["tiou"], record["mAP"], p.reported, p.name)
    heads = columns(protocol)
    cells = [f"{100 * v:.2f}" for v in values] + [f"{100 * record['average_mAP'][n]:.2f}" for n in p.averages]
    cells.append("-" if record.get("cmAP") is None else f"{100 * record['cmAP']:.2f}")
    widths = [max(len(h), len(c)) for h, c in zip(heads, cells)]
    title = f"iteration {record['iteration']}" if "iteration" in record else ""
    label = max(len(title), len("mAP (%)"))
    return "\n".join([
        f"{title:<{label}} | " + " ".join(f"{h:>{w}}" for h, w in zip(heads, widths)),
        f"{'mAP (%)':<{label}} | " + " ".join(f"{c:>{w}}" for c, w in zip(cells, widths)),
    ])


def selection_score(record: dict, protocol: str | Mapping) -> float:
    """Best-checkpoint criterion (higher is better): THUMOS14 Σ mAP@0.1:0.7, ActivityNet mean mAP@0.5:0.95,
    a declared protocol its ``criterion``."""
    p = resolve_protocol(protocol)
    if p.reduce == "sum":
        return float(_at(record["tiou"], record["mAP"], p.averages[p.criterion], p.name).sum())
    return float(record["average_mAP"][p.criterion])
