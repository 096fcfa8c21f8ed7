"""Sweep benchmark: ``python tools/bench.py sweep [--sweep FILE] [--concurrent 2] [--max-iter N]``.

Runs the trials of a sweep file (default: the synthetic 3-seed demo) twice, in a temporary folder:
one after another as ``python main.py --config <trial options>`` processes (what one does by hand),
then as a sweep on a local Ray runtime with ``--concurrent`` trials at once, one CPU (and torch
thread) each. Prints the sweep's table and one JSON line: both wall-clock times and their ratio,
Ray's start-up (``ray.init``), and the per-trial overhead: seconds from a free slot (Tuner.fit
starting, or an earlier trial's run ending) to the trial's training run starting (Tune's scheduling,
a Ray worker, imports in it), and Tune's time after the last run. The synthetic data are generated
(once) before any timing. On a loaded machine multi-threaded torch slows down far more than
single-threaded trials: ``--sequential-threads 1`` gives the other baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", default=str(ROOT / "configs" / "sweeps" / "synthetic_seeds.yaml"), help="sweep file")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once in the Ray run")
    p.add_argument("--max-iter", type=int, default=None, help="shorter trials (default: the sweep's own)")
    p.add_argument("--sequential-threads", type=int, default=None,
                   help="torch threads of the one-after-another runs (default: torch's, all cores)")
    p.add_argument("--keep", default=None, help="keep the runs in this folder (default: a temporary one, removed)")
    args = p.parse_args(argv)

    import options
    from eval.summary import summarize
    from tools import sweep as sweeps

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pecr-bench-sweep-"))
    sweep = sweeps.load_sweep(args.sweep, work / "ray")
    for trial in sweep.trials:
        if args.max_iter is not None:
            trial.opts.max_iter = args.max_iter
    sweeps.prepare_data(sweep.trials)  # data generation is not what is measured

    # one after another, as separate main.py processes
    one_by_one = []
    for trial in sweep.trials:
        config = work / "configs" / f"{trial.name}.yaml"
        options.save_options(trial.opts, config)
        tic = time.perf_counter()
        env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.sequential_threads)} if args.sequential_threads else {}))
        subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(config), "--output-dir", str(work / "sequential")],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        one_by_one.append(time.perf_counter() - tic)

    # the same trials as a sweep on a local Ray runtime
    tic = time.perf_counter()
    result = sweeps.run_sweep(sweep, cpus_per_trial=1, max_concurrent=args.concurrent, verbose=0)
    sweep_s = time.perf_counter() - tic
    fit_end = result.tune_ended
    failed = [o for o in result.outcomes if o.state != "done"]
    if failed:
        sys.exit(f"bench sweep: {failed[0].trial.name} {failed[0].state}: {failed[0].note}")
    timing = [o.metrics["timing"] for o in result.outcomes]
    fit_start = fit_end - result.tune_s
    summary = summarize([work / "ray" / sweep.name], write=False)
    print(summary.markdown)

    def mean(values):
        values = [v for v in values if v is not None]
        return round(statistics.fmean(values), 3) if values else None

    # Per-trial overhead: from the moment a slot is free (Tuner.fit starts, or an earlier trial's run
    # ends) to the trial's training run starting: Tune's scheduling, the Ray worker, imports.
    timing.sort(key=lambda t: t["trial_entered"])
    ended = sorted(t["run_ended"] for t in timing)
    free = [fit_start if k < args.concurrent else ended[k - args.concurrent] for k in range(len(timing))]
    figures = {
        "trials": len(sweep.trials), "concurrent": args.concurrent, "cpu_count": os.cpu_count(),
        "max_iter": sweep.trials[0].opts.max_iter, "sequential_threads": args.sequential_threads or "torch default",
        "sequential_s": round(sum(one_by_one), 2), "sequential_per_run_s": [round(t, 2) for t in one_by_one],
        "sweep_s": round(sweep_s, 2), "sweep_over_sequential": round(sweep_s / sum(one_by_one), 3),
        "ray_start_s": round(result.ray_start_s, 2), "tune_fit_s": round(result.tune_s, 2),
        "trial_run_s": mean(t["run_ended"] - t["run_started"] for t in timing),
        "per_trial_overhead_s": mean(t["run_started"] - f for t, f in zip(timing, free)),
        "imports_in_trial_s": mean(t["run_started"] - t["trial_entered"] for t in timing),
        "tune_after_last_trial_s": round(fit_end - ended[-1], 2),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(figures))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return figures


if __name__ == "__main__":
    main()
