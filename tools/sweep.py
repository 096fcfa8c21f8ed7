"""Sweeps: a grid of training runs over seeds on Ray Tune, and tables of mean ± std over the seeds.

    python tools/sweep.py run configs/sweeps/synthetic_seeds.yaml          # local Ray runtime, started in-process
    python tools/sweep.py run SWEEP.yaml --address HEAD:6379               # an existing Ray cluster (or ray://HEAD:10001)
        [--cpus-per-trial N] [--gpus-per-trial F] [--max-concurrent N] [--retries N] [--output-dir outputs] [--dry-run]
    python tools/sweep.py report outputs/synthetic_seeds [more run folders or globs] [--out-dir DIR]

A sweep file (configs/sweeps/)::

    name: synthetic_seeds            # runs go to <output-dir>/<name>/<trial>/ (default name: the file's stem)
    base:                            # options of every trial; `config` = an experiment file (configs/*.yaml)
      config: configs/synthetic.yaml
    grid:                            # option -> list of values; the trials are their product
      metric: [kl, euclidean]        # (a list of such mappings: the union of their products)
    seeds: [1, 2, 3]                 # every grid point runs once per seed

A trial is one ordinary ``main.Run`` (options: base < grid values < seed, output folder
``<output-dir>/<name>``, run name = its grid values and seed, e.g. ``metric=kl,seed=1``), so its folder
is exactly what main.py writes and ``python main.py --config <trial>/options.yaml`` repeats it in place.
Running a sweep again skips the finished trials (decided from their last.pt before anything starts),
resumes the interrupted ones from last.pt and runs the rest; a failed trial is recorded (its one-line
error in ``<trial>/error.txt``) without stopping the others. Ray Tune's own experiment records go to
``<output-dir>/<name>/_ray_tune/``. The report (``eval/summary.py``, no Ray) is written beside the runs.
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

import options  # noqa: E402
from utils.errors import PECRError, cli  # noqa: E402

SWEEP_KEYS = ("name", "description", "base", "grid", "seeds")
# Options a sweep sets itself: not allowed in base or grid.
SET_BY_SWEEP = {"seed": "list the seeds under `seeds:`", "output_dir": "the runs go to --output-dir/<name>/",
                "model_name": "each trial is named after its grid values and seed", "resume": "a sweep resumes on its own",
                "device": "the device follows --gpus-per-trial"}
TUNE_FOLDER = "_ray_tune"
STATES = ("done", "failed", "skipped")


@dataclass
class Trial:
    """One training run of a sweep: its grid values, seed and fully resolved options."""

    name: str
    overrides: dict[str, Any]
    seed: int
    opts: Any  # argparse.Namespace

    @property
    def dir(self) -> Path:
        return Path(self.opts.output_dir) / self.opts.model_name


@dataclass
class Sweep:
    path: Path
    name: str
    text: str
    trials: list[Trial]
    output_dir: Path


# ----------------------------------------------------------------------------- sweep files
def load_sweep(path: str | Path, output_dir: str | Path = "outputs") -> Sweep:
    """Read and fully validate a sweep file: every trial's options are resolved and checked as
    ``options.parse_args`` checks them. PECRError (one line naming the file and key) on any mistake."""
    path = Path(path)
    if not path.is_file():
        raise PECRError(f"sweep file {path} not found; pass a YAML file such as configs/sweeps/synthetic_seeds.yaml")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PECRError(f"sweep file {path} is not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise PECRError(f"sweep file {path} must hold a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(map(str, data)) - set(SWEEP_KEYS))
    if unknown:
        raise PECRError(f"sweep file {path}: unknown key {unknown[0]!r}; a sweep file has {', '.join(SWEEP_KEYS)}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise PECRError(f"sweep file {path}: name {name!r} must be a folder name (letters, digits, . _ -)")
    valid = {a.dest for a in options.build_parser()._actions if a.dest != "help"}
    base = _option_mapping(data.get("base", {}), f"sweep file {path}: base", valid, allow_config=True)
    grids = _grids(data, path, valid)
    seeds = _seeds(data, path)

    trials, names, runs = [], {}, {}
    out = Path(output_dir) / name
    for grid in grids:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            for seed in seeds:
                trial = _trial(path, base, dict(zip(keys, values)), seed, out)
                if trial.name in names:
                    if names[trial.name] == (trial.overrides, seed):
                        continue  # the same trial listed twice (overlapping grids): run once
                    raise PECRError(f"sweep file {path}: two trials are both named {trial.name!r} "
                                    f"({names[trial.name][0]} and {trial.overrides}); make the grid values distinct")
                run = json.dumps({k: v for k, v in vars(trial.opts).items() if k not in options.SESSION_OPTIONS},
                                 sort_keys=True, default=str)
                if run in runs:
                    raise PECRError(f"sweep file {path}: trials {runs[run]} and {trial.name} are the same run (the same "
                                    "options); drop one of the grid values")
                names[trial.name], runs[run] = (trial.overrides, seed), trial.name
                trials.append(trial)
    return Sweep(path, name, text, trials, Path(output_dir))


def _option_mapping(value, where: str, valid: set[str], allow_config: bool = False) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise PECRError(f"{where} must be a mapping of option names to values")
    out = {}
    for key, v in value.items():
        key = str(key).replace("-", "_")
        if key not in valid:
            raise PECRError(f"{where}: unknown option {key!r}; option names are listed by `python main.py --help`")
        if key in SET_BY_SWEEP:
            raise PECRError(f"{where}: {key} is set by the sweep ({SET_BY_SWEEP[key]})")
        if key == "config" and not allow_config:
            raise PECRError(f"{where}: config (an experiment file) belongs in base")
        out[key] = v
    return out


def _grids(data: dict, path: Path, valid: set[str]) -> list[dict[str, list]]:
    """``grid`` as a list of option -> values mappings (absent: one empty grid, i.e. seeds only)."""
    if "grid" not in data:
        return [{}]
    grid = data["grid"]
    listed = grid if isinstance(grid, list) else [grid]
    if not listed or any(g is None or g == {} for g in listed):
        raise PECRError(f"sweep file {path}: grid is empty; give option -> list of values (grid: {{metric: [kl, euclidean]}}) "
                        "or leave grid out to run the base over the seeds only")
    grids = []
    for i, g in enumerate(listed):
        where = f"sweep file {path}: grid" + (f" entry {i + 1}" if isinstance(grid, list) else "")
        mapping = _option_mapping(g, where, valid)
        for key, values in mapping.items():
            if key in options.SESSION_OPTIONS:
                raise PECRError(f"{where}: {key} does not change a run (a session option); set it in base")
            if not isinstance(values, list) or not values:
                raise PECRError(f"{where}: {key} must be a non-empty list of values, e.g. {key}: [a, b]")
        grids.append(mapping)
    return grids


def _seeds(data: dict, path: Path) -> list[int]:
    seeds = data.get("seeds")
    if not isinstance(seeds, list) or not seeds:
        raise PECRError(f"sweep file {path}: seeds must be a non-empty list of integers, e.g. seeds: [1, 2, 3]")
    low, high, _ = options.RANGES["seed"]
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not low <= s <= high:
            raise PECRError(f"sweep file {path}: seeds: {s!r} is not an integer in [{low}, {high}]")
    if len(set(seeds)) < len(seeds):
        raise PECRError(f"sweep file {path}: seeds lists a seed twice")
    return seeds


def _trial(path: Path, base: dict, overrides: dict, seed: int, out: Path) -> Trial:
    """Options of one trial: the base (its experiment file, then its options) < grid values < seed,
    each value type- and range-checked as ``options.parse_args`` checks the command line."""
    provisional = _trial_name(overrides, seed)
    where = {**{k: f"base {k}" for k in base}, **{k: f"grid {k}" for k in overrides}, "seed": "seeds"}
    try:
        values = {**base, **overrides, "seed": seed}
        argv = ["--config", _text_value(values.pop("config"), "config")] if "config" in values else []
        dataset = values.pop("dataset", None)
        if dataset is not None:
            if dataset not in options.DATASETS:
                raise PECRError(f"{where['dataset']}: {dataset!r} is not one of {', '.join(options.DATASETS)}")
            argv += ["--dataset", dataset]
        opts = options.parse_args(argv)
        for key, value in values.items():
            setattr(opts, key, copy.deepcopy(value))
        source = lambda key: where.get(key, f"--{key.replace('_', '-')}")  # noqa: E731
        options.check_types(options.build_parser(), opts, source)
        options.check_ranges(opts, source)
        options.check_consistency(opts)
    except PECRError as err:
        raise PECRError(f"sweep file {path}, trial {provisional}: {err}") from None
    name = _trial_name({k: getattr(opts, k) for k in overrides}, seed)
    opts.output_dir, opts.model_name, opts.resume, opts.device = str(out), name, False, "cpu"
    return Trial(name, {k: getattr(opts, k) for k in overrides}, seed, opts)


def _text_value(value, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise PECRError(f"base {key}: expected a file path, got {value!r}")
    return value


def _trial_name(overrides: dict, seed: int) -> str:
    """``key=value,...,seed=N``, safe as a folder name on every file system."""
    parts = [f"{k}={_name_value(v)}" for k, v in overrides.items()] + [f"seed={seed}"]
    return re.sub(r"[^A-Za-z0-9._+=,-]", "-", ",".join(parts))


def _name_value(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "-".join(map(_name_value, value))
    return "none" if value is None else str(value)


# ----------------------------------------------------------------------------- planning
@dataclass
class TrialOutcome:
    trial: Trial
    state: str           # done | failed | skipped
    note: str = ""       # the error line of a failed trial, what happened to the others
    metrics: dict = field(default_factory=dict)  # the trial's last report to Tune
    recorded: bool = True  # a failure whose line goes to <trial>/error.txt (not: interrupted, a folder not ours)


def plan(sweep: Sweep) -> tuple[list[tuple[Trial, str]], list[TrialOutcome]]:
    """Decide, from each trial's last.pt, what to do before anything runs: ``(to run, note)`` pairs
    ("new" or "resume from iteration i") and outcomes already known (finished: skipped; a folder
    holding a run with other options: failed, left untouched)."""
    import main

    to_run, known = [], []
    for trial in sweep.trials:
        try:
            saved = main.saved_run(trial.dir)
        except Exception as err:  # noqa: BLE001 - an unreadable checkpoint fails this trial only
            known.append(TrialOutcome(trial, "failed", f"cannot read {trial.dir / 'last.pt'}: {last_line(err)}"))
            continue
        if saved is None:
            to_run.append((trial, "new"))
            continue
        changed = options.changed_run_options(trial.opts, saved["options"])
        if changed:
            k, now = changed[0], options.options_to_dict(trial.opts)
            known.append(TrialOutcome(trial, "failed", f"{trial.dir} holds a run started with other options ({k} "
                                      f"{saved['options'].get(k)!r} there, {now.get(k)!r} in the sweep); move that "
                                      "folder away or give the sweep another name", recorded=False))
        elif saved["iteration"] >= trial.opts.max_iter - 1:
            known.append(TrialOutcome(trial, "skipped", "finished earlier"))
        else:
            to_run.append((trial, f"resume from iteration {saved['iteration'] + 1}"))
    return to_run, known


def prepare_data(trials: Sequence[Trial]) -> None:
    """Generate the synthetic datasets the trials need, once each, before any trial starts (trials
    sharing data must not generate it concurrently). PECRError when two trials want different data
    at the same paths (e.g. a grid over --synthetic-difficulty without per-trial data paths)."""
    wanted: dict[tuple, tuple[dict, Any]] = {}
    for trial in trials:
        o = trial.opts
        if not o.synthetic_generate:
            continue
        paths = (o.feature_file, o.annotation_dir, o.clip_feature_dir)
        request = {k: v for k, v in vars(o).items()
                   if k.startswith("synthetic_") or k in ("feature_size", "clip_backbone", "clip_train_split",
                                                          "clip_test_split", "train_subset", "test_subset")}
        if paths in wanted and wanted[paths][0] != request:
            other = wanted[paths][1]
            k = next(k for k in request if request[k] != wanted[paths][0].get(k))
            raise PECRError(f"trials {other.name} and {trial.name} generate different synthetic data ({k}) at the same "
                            f"paths ({o.annotation_dir}); give each value its own feature_file, annotation_dir and "
                            "clip_feature_dir in the grid")
        wanted[paths] = (request, trial)
    if not wanted:
        return
    from model import load_clip
    from tools.make_synthetic import ensure_synthetic

    for _, trial in wanted.values():
        if ensure_synthetic(trial.opts, load_clip(trial.opts, "cpu").embed_dim):
            print(f"sweep: generated the synthetic dataset at {trial.opts.annotation_dir}", flush=True)


# ----------------------------------------------------------------------------- Ray
def check_address(address: str) -> None:
    """PECRError in one line unless something listens at ``address`` (HOST:PORT or ray://HOST:PORT;
    ``auto`` is left to Ray)."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise PECRError(f"--address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise PECRError(f"--address {address}: no Ray cluster answers there ({err.strerror or err}); start one with "
                        "`ray start --head` on that machine, or leave --address out to run locally") from None


def connect(address: str | None) -> bool:
    """Start a local Ray runtime (no address) or attach to a cluster; True when this call started it
    (and so should shut it down). An already initialised Ray (e.g. in tests) is used as it is. The address is
    checked (:func:`check_address`) by the caller, before anything is written."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        ray.init(address="local", include_dashboard=False, logging_level="warning")
        return True
    env = {k: v for k, v in os.environ.items() if k.startswith("PECR_")}  # the vocabulary and CLIP cache paths
    try:
        ray.init(address=address, logging_level="warning", runtime_env={"env_vars": env} if env else None)
    except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, grpc errors...
        hint = ("" if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" else
                "; a cluster with token authentication (Ray's default) also needs RAY_AUTH_MODE=token here and the "
                "head's token (`ray get-auth-token` there) in ~/.ray/auth_token or $RAY_AUTH_TOKEN")
        raise PECRError(f"--address {address}: cannot attach to the Ray cluster ({last_line(err)}){hint}") from None
    return True


def _check_resources(cpus: int, gpus: float) -> None:
    """PECRError when no node of the cluster can hold one trial (Tune would wait for ever)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
        most = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        count = lambda n, what: f"{n:g} {what}{'s' * (n != 1)}"  # noqa: E731
        raise PECRError(f"no Ray node has {count(cpus, 'CPU')} and {count(gpus, 'GPU')} for a trial (the largest has "
                        f"{count(most.get('CPU', 0), 'CPU')}, {count(most.get('GPU', 0), 'GPU')}); lower --cpus-per-trial / "
                        "--gpus-per-trial or add a node")


def _trial_fn(config: dict, specs: dict) -> None:
    """Ray Tune function trainable: one trial = one ``main.Run`` in this worker process."""
    entered = time.time()
    spec = specs[config["trial"]]
    from ray import tune

    try:
        os.chdir(spec["cwd"])  # the options' relative paths are relative to where the sweep started
    except OSError:
        tune.report({"error": f"the sweep's working folder {spec['cwd']} is not on this node; a cluster needs the "
                              "checkout and outputs at the same path on every node (shared file system)"})
        return
    if spec["root"] not in sys.path:
        sys.path.insert(0, spec["root"])
    import torch

    torch.set_num_threads(spec["threads"])
    import main
    from eval.report import resolve_protocol
    from utils.errors import PECRError as Error  # this process's class (the module may be a copy)

    average = next(iter(resolve_protocol(spec["opts"].protocol).averages))  # its first average: Tune's table shows it
    shown: dict = {}

    class TuneRun(main.Run):
        def evaluate(self, iteration, writer):
            record = super().evaluate(iteration, writer)
            shown.update({"eval_iteration": iteration, f"mAP {average}": 100 * record["average_mAP"][average],
                          "cmAP": None if record["cmAP"] is None else 100 * record["cmAP"]})
            tune.report({k: v for k, v in shown.items() if v is not None})
            return record

    opts = copy.deepcopy(spec["opts"])
    started = time.time()
    try:
        opts.resume = main.saved_run(Path(opts.output_dir) / opts.model_name) is not None  # also on Tune's retries
        TuneRun(opts).train()
    except Error as err:
        tune.report({**{k: v for k, v in shown.items() if v is not None}, "error": str(err)})
        return
    timing = {"process_started": _process_start_time(), "trial_entered": entered, "run_started": started,
              "run_ended": time.time()}  # unix times, read by tools/bench_sweep.py
    tune.report({**{k: v for k, v in shown.items() if v is not None}, "finished": True, "timing": timing})


def _process_start_time() -> float | None:
    """Unix time at which this process started (Linux /proc), None elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def last_line(err: BaseException) -> str:
    """The last non-empty line of an exception's text (a traceback's final ``Type: message``)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


def _describe(err: BaseException, retries: int) -> str:
    """One line for an error Tune recorded: a dead worker process in words, else the error's last line."""
    from ray.exceptions import RayActorError

    if isinstance(err, RayActorError):
        return (f"its Ray worker process died (killed, out of memory or crashed; {retries} restart{'s' * (retries != 1)} "
                "allowed by --retries); run the sweep again to resume from last.pt")
    return last_line(err)


@dataclass
class SweepResult:
    outcomes: list[TrialOutcome]
    ray_start_s: float = 0.0  # ray.init (0 when Ray was already running or nothing ran)
    tune_s: float = 0.0       # Tuner.fit
    tune_ended: float = 0.0   # unix time at which Tuner.fit returned

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)


def run_sweep(sweep: Sweep, address: str | None = None, cpus_per_trial: int = 1, gpus_per_trial: float | None = None,
              max_concurrent: int = 0, retries: int = 1, verbose: int = 1) -> SweepResult:
    """Run the sweep's unfinished trials on Ray Tune (local runtime without ``address``) and return
    every trial's outcome. ``gpus_per_trial`` None: 1 when the cluster has GPUs, else 0 (CPU trials).
    ``retries``: restarts of a trial whose worker crashed (it resumes from last.pt); errors in the
    input (bad data, non-finite loss) are not retried."""
    if address is not None:
        check_address(address)  # before anything is written or generated
    to_run, known = plan(sweep)
    result = SweepResult(known)
    from utils.io import atomic_write_text

    atomic_write_text(sweep.output_dir / sweep.name / "sweep.yaml", sweep.text)  # the sweep these runs belong to
    if not to_run:
        return result
    for trial, note in to_run:
        (trial.dir / "error.txt").unlink(missing_ok=True)
        print(f"sweep: {trial.name}: {note}", flush=True)
    try:
        prepare_data([t for t, _ in to_run])
    except PECRError as err:
        result.outcomes += [TrialOutcome(t, "failed", str(err)) for t, _ in to_run]
        _record_failures(result.outcomes)
        return result

    import ray
    from ray import tune

    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"  # Tune would start each trial in its own folder
    tic = time.perf_counter()
    started = connect(address)
    result.ray_start_s = time.perf_counter() - tic if started else 0.0
    try:
        if gpus_per_trial is None:
            gpus_per_trial = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        _check_resources(cpus_per_trial, gpus_per_trial)
        specs = {}
        for trial, _ in to_run:
            opts = copy.deepcopy(trial.opts)
            opts.device = "cuda" if gpus_per_trial > 0 else "cpu"
            specs[trial.name] = {"opts": opts, "cwd": os.getcwd(), "root": str(ROOT), "threads": max(1, int(cpus_per_trial))}
        trainable = tune.with_resources(tune.with_parameters(_trial_fn, specs=specs),
                                        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
        name_of = lambda t: t.config["trial"]  # noqa: E731
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([t.name for t, _ in to_run])},
            tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or None, trial_name_creator=name_of,
                                        trial_dirname_creator=name_of),
            run_config=tune.RunConfig(name=time.strftime("%Y%m%d-%H%M%S"),
                                      storage_path=str((sweep.output_dir / sweep.name / TUNE_FOLDER).resolve()),
                                      failure_config=tune.FailureConfig(max_failures=retries), verbose=verbose),
        )
        tic = time.perf_counter()
        grid = tuner.fit()
        result.tune_s, result.tune_ended = time.perf_counter() - tic, time.time()
    finally:
        if started:
            ray.shutdown()
    trials = {t.name: t for t, _ in to_run}
    seen = set()
    for res in grid:
        trial = trials[res.config["trial"]]
        seen.add(trial.name)
        metrics = dict(res.metrics or {})
        if res.error is not None:
            result.outcomes.append(TrialOutcome(trial, "failed", _describe(res.error, retries), metrics))
        elif metrics.get("error"):
            result.outcomes.append(TrialOutcome(trial, "failed", metrics["error"], metrics))
        elif metrics.get("finished"):
            result.outcomes.append(TrialOutcome(trial, "done", "", metrics))
        else:
            result.outcomes.append(TrialOutcome(trial, "failed", "stopped before the end (run the sweep again to resume)",
                                                metrics, recorded=False))
    for name in trials.keys() - seen:
        result.outcomes.append(TrialOutcome(trials[name], "failed", "never started (run the sweep again)", recorded=False))
    _record_failures(result.outcomes)
    order = {t.name: i for i, t in enumerate(sweep.trials)}
    result.outcomes.sort(key=lambda o: order[o.trial.name])
    return result


def _record_failures(outcomes: Sequence[TrialOutcome]) -> None:
    """``<trial>/error.txt`` = the one-line error of each failed trial (read by the report); not for an
    interrupted trial, nor into a folder that holds another run (left untouched)."""
    from utils.io import atomic_write_text

    for o in outcomes:
        if o.state == "failed" and o.recorded:
            atomic_write_text(o.trial.dir / "error.txt", o.note + "\n")


def format_outcomes(sweep: Sweep, result: SweepResult) -> str:
    """The final summary: counts, then one line per trial."""
    width = max(len(o.trial.name) for o in result.outcomes)
    lines = [f"sweep {sweep.name}: {result.count('done')} done, {result.count('failed')} failed, "
             f"{result.count('skipped')} skipped ({sweep.output_dir / sweep.name})"]
    lines += [f"  {o.state:<7} {o.trial.name:<{width}}  {o.note}".rstrip() for o in result.outcomes]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(kind):
    def parse(text: str):
        value = kind(text)
        if not value >= 0 or value != value:
            raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Sweeps of PECR training runs over seeds and grids on Ray Tune, and their tables.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run (or continue) a sweep file's trials on Ray, then write its tables",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("sweep_file", help="sweep YAML file (configs/sweeps/)")
    r.add_argument("--output-dir", default="outputs", help="runs go to <output-dir>/<sweep name>/<trial>/")
    r.add_argument("--address", default=None, help="an existing Ray cluster: HOST:PORT (ray start --head), ray://HOST:PORT "
                   "(Ray client) or auto; default: a local Ray runtime started here")
    r.add_argument("--cpus-per-trial", type=_positive_int, default=1, help="CPUs reserved per trial (= its torch threads)")
    r.add_argument("--gpus-per-trial", type=_non_negative(float), default=None,
                   help="GPUs per trial, fractions share a GPU (0.25: four trials per GPU); default 1 when the cluster has GPUs, else 0")
    r.add_argument("--max-concurrent", type=_non_negative(int), default=0, help="at most this many trials at once (0: as resources allow)")
    r.add_argument("--retries", type=_non_negative(int), default=1, help="restarts of a trial whose worker crashed (it resumes from last.pt)")
    r.add_argument("--dry-run", action="store_true", help="validate the sweep file and list what would run, start nothing")
    s = sub.add_parser("report", help="tables of mean ± std over seeds of finished runs (no Ray needed)")
    s.add_argument("runs", nargs="+", help="sweep folders (outputs/<sweep>), run folders or globs")
    s.add_argument("--out-dir", default=None, help="where summary.md/.csv/.png go (default: the folder holding the runs)")
    return p


def report(patterns: Sequence[str], out_dir: str | None = None) -> int:
    from eval.summary import summarize

    summary = summarize(patterns, out_dir)
    print(summary.markdown)
    print("written: " + ", ".join(str(p) for p in summary.paths.values()))
    return 0


@cli
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        return report(args.runs, args.out_dir)
    sweep = load_sweep(args.sweep_file, args.output_dir)
    if args.dry_run:
        to_run, known = plan(sweep)
        print(f"sweep {sweep.name}: {len(sweep.trials)} trials in {sweep.output_dir / sweep.name}")
        for trial, note in to_run:
            print(f"  run     {trial.name}  {note}")
        for o in known:
            print(f"  {o.state:<7} {o.trial.name}  {o.note}")
        return 0
    result = run_sweep(sweep, args.address, args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent, args.retries)
    print("\n" + format_outcomes(sweep, result) + "\n", flush=True)
    try:
        report([str(sweep.output_dir / sweep.name)])
    except PECRError as err:
        print(f"no table yet: {err}")
    return 1 if result.count("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
