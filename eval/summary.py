"""Tables over seeds: many run folders -> mean ± sample std per group of runs with the same options.

A run folder is what ``main.py`` writes (``options.yaml``, ``metrics.jsonl``, ...). Runs are grouped
by their options minus the seed and the session options (``options.SESSION_OPTIONS``: where a run
wrote, on which device, how often it saved). The protocol and the tIoU thresholds are options, so
runs of different protocols are never in one group, and each protocol gets its own tables.

For every run two evaluations are read from ``metrics.jsonl``: *best*, the one the run's selection
criterion keeps (``eval.report.selection_score``, the evaluation ``best.pt`` holds: the untrained
``--eval-at-start`` baseline is not a candidate, the earliest of equal scores wins) and *last*, the
final one. Only finished runs (their last evaluation is at ``--max-iter - 1``) enter the tables;
the others are listed with the reason. Values are percent; the standard deviation is the sample one
(n - 1 in the denominator), written "–" in Markdown and left empty in the CSV when n = 1.

Used by ``python tools/sweep.py report`` (no Ray, no torch: it reads text files).
"""
from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import yaml

from eval.report import PROTOCOLS, columns, protocol_key, resolve_protocol, selection_score
from options import SESSION_OPTIONS
from utils.errors import PECRError
from utils.io import atomic_save, atomic_write_text

# Options that do not make two runs different experiments.
NOT_GROUPED = frozenset({"seed", *SESSION_OPTIONS})
RUN_FILES = ("options.yaml", "metrics.jsonl", "error.txt")  # any of them marks a run folder
EVALUATIONS = ("best", "last")
DASH = "–"


@dataclass
class RunResult:
    """One run folder: its options and chosen evaluations, or why it is not in the tables."""

    dir: Path
    options: dict | None = None
    best: dict | None = None   # metrics.jsonl record
    last: dict | None = None
    problem: str | None = None  # set when the run is not in the tables

    @property
    def seed(self):
        return (self.options or {}).get("seed")


@dataclass
class Group:
    """Finished runs with the same options (but the seed); ``label`` names what sets it apart."""

    key: str
    options: dict
    runs: list[RunResult] = field(default_factory=list)
    label: str = ""

    @property
    def protocol(self):
        """The runs' ``protocol`` option: a built-in name or a declared mapping."""
        return self.options["protocol"]

    @property
    def protocol_key(self) -> str:
        return protocol_key(self.protocol)


@dataclass
class Summary:
    groups: list[Group]
    excluded: list[RunResult]
    markdown: str
    csv: str
    paths: dict[str, Path] = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading
def find_runs(patterns: Sequence[str | Path]) -> list[Path]:
    """Run folders named by ``patterns``: run folders, folders holding run folders (at any depth; folders
    whose name starts with ``_`` or ``.``, such as Ray's ``_ray_tune``, are not searched), or globs."""
    found: dict[Path, None] = {}
    for pattern in map(str, patterns):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise PECRError(f"{pattern} matches no folder; pass run folders, a sweep folder (outputs/<sweep>) or a glob")
        for match in map(Path, matches):
            if not match.is_dir():
                if glob.has_magic(pattern):
                    continue
                raise PECRError(f"{match} is not a folder; pass run folders, a sweep folder (outputs/<sweep>) or a glob")
            runs = _runs_under(match)
            if not runs and not glob.has_magic(pattern):
                raise PECRError(f"{match} holds no run folder (none with options.yaml or metrics.jsonl); "
                                "pass the folder main.py or tools/sweep.py wrote (outputs/<sweep>)")
            found.update(dict.fromkeys(runs))
    if not found:
        raise PECRError(f"{' '.join(map(str, patterns))}: no run folder (none with options.yaml or metrics.jsonl)")
    return list(found)


def _runs_under(folder: Path) -> list[Path]:
    if any((folder / name).is_file() for name in RUN_FILES):
        return [folder]
    runs = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        runs += _runs_under(child)
    return runs


def read_run(run_dir: Path) -> RunResult:
    """The run's options and its best and last evaluations; ``problem`` says why it cannot be counted."""
    run = RunResult(Path(run_dir))
    failure = _read_error(run.dir)
    try:
        run.options = _read_options(run.dir)
        records = _read_metrics(run.dir)
    except PECRError as err:
        run.problem = f"failed: {failure}" if failure else str(err)
        return run
    opts = run.options
    if opts.get("eval_at_start") and records and records[0]["iteration"] == 0:
        records = records[1:]  # the untrained baseline: never the run's best
    by_iteration = {r["iteration"]: r for r in records}  # a resumed run may have evaluated an iteration twice
    records = [by_iteration[i] for i in sorted(by_iteration)]
    if not records:
        run.problem = f"failed: {failure}" if failure else "no evaluation after training yet"
        return run
    max_iter = opts.get("max_iter")
    if max_iter is not None and records[-1]["iteration"] < max_iter - 1:
        state = f"failed: {failure}" if failure else "unfinished"
        run.problem = f"{state} (last evaluation at iteration {records[-1]['iteration']} of --max-iter {max_iter})"
        return run
    try:
        scores = [selection_score(r, opts["protocol"]) for r in records]
    except (PECRError, KeyError, TypeError) as err:
        run.problem = f"metrics.jsonl does not fit the {opts['protocol']} protocol: {err}"
        return run
    run.best, run.last = records[int(np.argmax(scores))], records[-1]  # argmax: the earliest of equal scores
    return run


def _read_error(run_dir: Path) -> str | None:
    path = run_dir / "error.txt"
    if not path.is_file():
        return None
    return path.read_text().strip() or None


def _read_options(run_dir: Path) -> dict:
    path = run_dir / "options.yaml"
    if not path.is_file():
        raise PECRError("no options.yaml (the run did not start)")
    try:
        opts = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        raise PECRError(f"{path} is not valid YAML") from None
    if not isinstance(opts, dict):
        raise PECRError(f"{path} does not hold a mapping of options")
    opts.setdefault("protocol", "thumos")
    resolve_protocol(opts["protocol"], f"protocol in {path}")  # PECRError when it is neither a name nor a mapping
    return opts


def _read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.is_file() else ""
    if not text.strip():
        raise PECRError("no metrics.jsonl yet (the run has not evaluated)")
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            ok = (isinstance(record, dict) and isinstance(record.get("iteration"), int)
                  and len(record["tiou"]) == len(record["mAP"]) > 0 and isinstance(record["average_mAP"], dict))
        except (json.JSONDecodeError, KeyError, TypeError):
            ok = False
        if not ok:
            raise PECRError(f"{path} line {number} is not a metrics record (iteration, tiou, mAP, average_mAP, cmAP)")
        records.append(record)
    return records


# ----------------------------------------------------------------------------- grouping and statistics
def group_runs(runs: Sequence[RunResult]) -> list[Group]:
    """Finished runs grouped by their options minus :data:`NOT_GROUPED`, labelled by the options that
    differ between the groups of one protocol ("all runs" when there is one group)."""
    groups: dict[str, Group] = {}
    for run in runs:
        if run.problem is None:
            opts = {k: v for k, v in run.options.items() if k not in NOT_GROUPED}
            key = json.dumps(opts, sort_keys=True, default=str)
            groups.setdefault(key, Group(key, opts)).runs.append(run)
    for key in _protocol_keys(groups.values()):
        mine = [g for g in groups.values() if g.protocol_key == key]
        keys = sorted({k for g in mine for k in g.options})
        varying = [k for k in keys if len({json.dumps(g.options.get(k), default=str) for g in mine}) > 1]
        for g in mine:
            g.label = ",".join(f"{k}={_text(g.options.get(k))}" for k in varying) or "all runs"
            g.runs.sort(key=lambda r: (str(r.seed), str(r.dir)))
    order = _protocol_keys(groups.values())
    return sorted(groups.values(), key=lambda g: (order.index(g.protocol_key), g.label))


def _protocol_keys(groups) -> list[str]:
    """The protocols of ``groups``, built-in ones first (in PROTOCOLS order), then declared ones."""
    keys = {g.protocol_key for g in groups}
    return [k for k in PROTOCOLS if k in keys] + sorted(keys - set(PROTOCOLS))


def _text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return " ".join(map(_text, value))
    return "none" if value is None else str(value)


def record_values(record: dict, protocol) -> dict[str, float | None]:
    """Column (:func:`eval.report.columns`) -> value in percent (None: not in the record)."""
    p = resolve_protocol(protocol)
    tiou = np.asarray(record["tiou"], dtype=np.float64)
    out = {}
    for t in p.reported:
        hit = np.flatnonzero(np.abs(tiou - t) < 1e-9)
        out[f"{t:g}"] = 100 * float(record["mAP"][hit[0]]) if hit.size else None
    for name in p.averages:
        value = record["average_mAP"].get(name)
        out[f"avg {name}"] = None if value is None else 100 * float(value)
    out["cmAP"] = None if record.get("cmAP") is None else 100 * float(record["cmAP"])
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN when n = 1) and n."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, 0
    return float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan, int(x.size)


def group_stats(group: Group, evaluation: str) -> dict[str, tuple[float, float, int]]:
    """Column -> (mean, sample std, n) over the group's runs, for ``evaluation`` "best" or "last"."""
    per_run = [record_values(getattr(run, evaluation), group.protocol) for run in group.runs]
    return {c: mean_std([v[c] for v in per_run if v[c] is not None]) for c in columns(group.protocol)}


# ----------------------------------------------------------------------------- output
def _cell(mean: float, std: float, n: int, runs: int) -> str:
    if n == 0:
        return DASH
    text = f"{mean:.2f} ± {DASH if math.isnan(std) else f'{std:.2f}'}"
    return text if n == runs else f"{text} ({n})"


def format_markdown(groups: Sequence[Group], excluded: Sequence[RunResult], title: str) -> str:
    """The Markdown report: per protocol, a table of the best and one of the last evaluations (one row
    per group), then the runs of each group and the runs left out."""
    lines = [f"# {title}", "",
             "mAP in percent: mean ± sample standard deviation over the runs of a group (seeds); "
             f"n = number of runs; \"{DASH}\" = no deviation with one run. *best*: the evaluation each run's "
             "selection criterion keeps (best.pt); *last*: its final evaluation.", ""]
    for key in _protocol_keys(groups):
        mine = [g for g in groups if g.protocol_key == key]
        heads, name = columns(mine[0].protocol), resolve_protocol(mine[0].protocol).name
        for evaluation in EVALUATIONS:
            lines += [f"## {name} protocol, {evaluation} evaluation", "",
                      "| group | n | " + " | ".join(heads) + " |", "|---|---:|" + "---:|" * len(heads)]
            for g in mine:
                stats = group_stats(g, evaluation)
                cells = [_cell(*stats[c], len(g.runs)) for c in heads]
                lines.append(f"| {g.label} | {len(g.runs)} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## Runs", ""]
    for g in groups:
        runs = ", ".join(f"seed {r.seed} ({r.dir.name}: best at {r.best['iteration']})" for r in g.runs)
        lines.append(f"- **{g.label}** ({resolve_protocol(g.protocol).name}): {runs}")
    if excluded:
        lines += ["", "## Not in the tables", ""]
        lines += [f"- {r.dir}: {r.problem}" for r in excluded]
    return "\n".join(lines) + "\n"


def format_csv(groups: Sequence[Group]) -> str:
    """One row per group and evaluation: protocol, group, evaluation, n, seeds, iterations, then
    ``<column> mean`` and ``<column> std`` (percent; std empty when n = 1) for every column of every
    protocol present (empty where a protocol has no such column)."""
    heads = list(dict.fromkeys(c for g in groups for c in columns(g.protocol)))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["protocol", "group", "evaluation", "n", "seeds", "iterations"]
                    + [f"{c} {s}" for c in heads for s in ("mean", "std")])
    for g in groups:
        for evaluation in EVALUATIONS:
            stats = group_stats(g, evaluation)
            row = [resolve_protocol(g.protocol).name, g.label, evaluation, len(g.runs), " ".join(str(r.seed) for r in g.runs),
                   " ".join(str(getattr(r, evaluation)["iteration"]) for r in g.runs)]
            for c in heads:
                mean, std, n = stats.get(c, (math.nan, math.nan, 0))
                row += ["" if math.isnan(mean) else f"{mean:.6f}", "" if math.isnan(std) else f"{std:.6f}"]
            writer.writerow(row)
    return out.getvalue()


def plot(groups: Sequence[Group], path: Path, title: str) -> None:
    """mAP of the best evaluation against tIoU, one line per group (mean, error bars = sample std),
    one panel per protocol; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = _protocol_keys(groups)
    fig, axes = plt.subplots(1, len(protocols), figsize=(6.4 * len(protocols), 4.4), squeeze=False)
    for ax, key in zip(axes[0], protocols):
        mine = [g for g in groups if g.protocol_key == key]
        for g in mine:
            tiou = np.asarray(g.runs[0].best["tiou"], dtype=np.float64)
            maps = 100 * np.array([r.best["mAP"] for r in g.runs], dtype=np.float64)  # runs x thresholds
            std = maps.std(axis=0, ddof=1) if len(g.runs) > 1 else None
            ax.errorbar(tiou, maps.mean(axis=0), yerr=std, marker="o", capsize=3, label=f"{g.label} (n={len(g.runs)})")
        ax.set(xlabel="tIoU threshold", ylabel="mAP (%)",
               title=f"{resolve_protocol(mine[0].protocol).name} protocol, best evaluation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_save(path, lambda f: fig.savefig(f, format="png", dpi=120))
    finally:
        plt.close(fig)


def summarize(patterns: Sequence[str | Path], out_dir: str | Path | None = None, write: bool = True) -> Summary:
    """Read the runs named by ``patterns`` (see :func:`find_runs`), group them and, with ``write``, write
    ``summary.md``, ``summary.csv`` and ``summary.png`` atomically into ``out_dir`` (default: the folder
    holding all the runs, e.g. outputs/<sweep>). PECRError when no run has a finished evaluation."""
    dirs = find_runs(patterns)
    runs = [read_run(d) for d in dirs]
    groups = group_runs(runs)
    excluded = [r for r in runs if r.problem is not None]
    if not groups:
        reasons = "; ".join(f"{r.dir.name}: {r.problem}" for r in excluded[:3])
        raise PECRError(f"{' '.join(map(str, patterns))}: no finished run with metrics to summarize ({reasons}"
                        f"{'; ...' if len(excluded) > 3 else ''})")
    if out_dir is None:
        out_dir = _common_parent(dirs)
    out_dir = Path(out_dir)
    title = f"Summary of {len(runs)} run{'s' * (len(runs) != 1)} in {out_dir}"
    summary = Summary(groups, excluded, format_markdown(groups, excluded, title), format_csv(groups))
    if write:
        summary.paths = {"markdown": out_dir / "summary.md", "csv": out_dir / "summary.csv", "png": out_dir / "summary.png"}
        atomic_write_text(summary.paths["markdown"], summary.markdown)
        atomic_write_text(summary.paths["csv"], summary.csv)
        plot(groups, summary.paths["png"], title)
    return summary


def _common_parent(dirs: Sequence[Path]) -> Path:
    """The deepest folder holding all of ``dirs`` (relative to the working folder when inside it)."""
    common = os.path.commonpath([os.path.abspath(d.parent) for d in dirs])
    relative = os.path.relpath(common)
    return Path(common if relative.startswith("..") else relative)
