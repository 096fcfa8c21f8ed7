"""Sweeps (tools/sweep.py) on a real local Ray runtime, and the tables over seeds (eval/summary.py).

The Ray part starts Ray once for the module and runs a tiny grid (2 metrics x 2 seeds, 4 iterations
of a 16-video synthetic dataset) end to end, then the same sweep again with a failing grid value.
"""
from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import main as train_main
import options
from eval import summary as summary_mod
from eval.report import selection_score
from tools import sweep as sweep_mod
from utils.errors import PECRError

TINY = {"dataset": "synthetic", "synthetic_videos": 16, "synthetic_classes": 3, "feature_size": 32, "max_seqlen": 24,
        "batch_size": 4, "num_similar": 1, "k_easy": 4, "k_hard": 2, "mining_m": 6, "num_prob_v": 3, "max_iter": 4,
        "interval": 3, "checkpoint_every": 1}


def tiny_base(root) -> dict:
    data = root / "data"
    return {**TINY, "feature_file": str(data / "Syn" / "Syn-I3D-JOINTFeatures.npy"),
            "annotation_dir": str(data / "Syn-Annotations"), "clip_feature_dir": str(data / "Syn-CLIP")}


def write_sweep(path, **content):
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- sweep files
def test_trials_are_the_product_of_the_grid_times_the_seeds_with_the_options_parse_args_gives(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("dataset: synthetic\nlr: 0.002\nalpha5: 0.01\nmax_iter: 50\n")
    path = write_sweep(tmp_path / "s.yaml", name="abl", base={"config": str(config), "lr": 0.003, "k-easy": 5},
                       grid={"metric": ["kl", "euclidean"], "alpha5": [0.1, 1]}, seeds=[4, 9])
    sweep = sweep_mod.load_sweep(path, tmp_path / "out")
    assert sweep.name == "abl"
    assert [t.name for t in sweep.trials] == [f"metric={m},alpha5={a},seed={s}" for m in ("kl", "euclidean")
                                              for a in ("0.1", "1.0") for s in (4, 9)]
    for trial in sweep.trials:
        # the same options as the command line would give: experiment file < base < grid < seed
        expected = options.parse_args(["--config", str(config), "--lr", "0.003", "--k-easy", "5", "--metric",
                                       trial.overrides["metric"], "--alpha5", str(trial.overrides["alpha5"]),
                                       "--seed", str(trial.seed), "--device", "cpu", "--output-dir", str(tmp_path / "out" / "abl"),
                                       "--model-name", trial.name])
        assert options.options_to_dict(trial.opts) == options.options_to_dict(expected)
        assert trial.dir == tmp_path / "out" / "abl" / trial.name
        assert isinstance(trial.opts.alpha5, float)


def test_a_seeds_only_sweep_and_a_union_of_grids(tmp_path):
    path = write_sweep(tmp_path / "seeds_only.yaml", base={"dataset": "synthetic"}, seeds=[0, 1, 2])
    sweep = sweep_mod.load_sweep(path)
    assert sweep.name == "seeds_only" and [t.name for t in sweep.trials] == ["seed=0", "seed=1", "seed=2"]
    path = write_sweep(tmp_path / "u.yaml", base={"dataset": "synthetic"},
                       grid=[{"metric": ["kl", "euclidean"]}, {"metric": ["kl"]}, {"clip_backbone": ["random-ViT-B/16"]}],
                       seeds=[1])
    names = [t.name for t in sweep_mod.load_sweep(path).trials]
    assert names == ["metric=kl,seed=1", "metric=euclidean,seed=1", "clip_backbone=random-ViT-B-16,seed=1"]


@pytest.mark.parametrize("content, message", [
    ({"base": {"dataset": "synthetic"}, "grid": {"lrr": [1.0e-3]}, "seeds": [1]},
     "grid: unknown option 'lrr'; option names are listed by `python main.py --help`"),
    ({"base": {"dataset": "synthetic", "bogus": 1}, "seeds": [1]}, "base: unknown option 'bogus'"),
    ({"grid": {}, "seeds": [1]}, "grid is empty"),
    ({"grid": None, "seeds": [1]}, "grid is empty"),
    ({"grid": {"metric": []}, "seeds": [1]}, "grid: metric must be a non-empty list of values"),
    ({"grid": {"metric": "kl"}, "seeds": [1]}, "grid: metric must be a non-empty list of values"),
    ({"grid": {"metric": ["kl"]}, "seeds": []}, "seeds must be a non-empty list of integers"),
    ({"grid": {"metric": ["kl"]}}, "seeds must be a non-empty list of integers"),
    ({"seeds": [1, 1]}, "seeds lists a seed twice"),
    ({"seeds": [1.5]}, "seeds: 1.5 is not an integer"),
    ({"grid": {"seed": [1, 2]}, "seeds": [1]}, "grid: seed is set by the sweep (list the seeds under `seeds:`)"),
    ({"base": {"output_dir": "x"}, "seeds": [1]}, "base: output_dir is set by the sweep"),
    ({"grid": {"checkpoint_every": [1, 2]}, "seeds": [1]}, "checkpoint_every does not change a run (a session option)"),
    ({"grid": {"lr": ["fast"]}, "seeds": [1]}, "trial lr=fast,seed=1: grid lr: expected a number, got 'fast'"),
    ({"grid": {"lr": [-1.0]}, "seeds": [1]}, "grid lr -1.0 is out of range: it must be > 0"),
    ({"base": {"config": "no/such.yaml"}, "seeds": [1]}, "config file no/such.yaml not found"),
    ({"base": {"dataset": "kinetics"}, "seeds": [1]}, "base dataset: 'kinetics' is not one of"),
    ({"grid": {"clip_backbone": ["a/b", "a-b"]}, "seeds": [1]}, "two trials are both named 'clip_backbone=a-b,seed=1'"),
    ({"name": "../up", "seeds": [1]}, "name '../up' must be a folder name"),
    ({"base": {"dataset": "synthetic", "lr": 0.002}, "grid": [{"metric": ["kl"]}, {"lr": [0.002]}], "seeds": [1]},
     "trials metric=kl,seed=1 and lr=0.002,seed=1 are the same run (the same options)"),
    ({"seed": [1]}, "unknown key 'seed'; a sweep file has name, description, base, grid, seeds"),
])
def test_bad_sweep_files_end_in_one_line_naming_the_file_and_key(tmp_path, content, message):
    path = write_sweep(tmp_path / "bad.yaml", **content)
    with pytest.raises(PECRError) as err:
        sweep_mod.load_sweep(path)
    text = str(err.value)
    assert message in text and f"sweep file {path}" in text and "\n" not in text


def test_malformed_or_missing_sweep_file_and_the_cli_exit_status(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: {metric: [kl\n")
    with pytest.raises(PECRError, match=r"sweep file .*bad.yaml is not valid YAML"):
        sweep_mod.load_sweep(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(PECRError, match="must hold a mapping"):
        sweep_mod.load_sweep(bad)
    assert sweep_mod.main(["run", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sweep file") and "not found" in err and err.count("\n") == 1


def test_unreachable_address_is_one_line_and_writes_nothing(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_sweep(tmp_path / "s.yaml", base=tiny_base(tmp_path), seeds=[1])
    for address in (f"127.0.0.1:{port}", f"ray://127.0.0.1:{port}"):
        code = sweep_mod.main(["run", str(path), "--address", address, "--output-dir", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1
        assert err.startswith(f"error: --address {address}: no Ray cluster answers there") and "ray start --head" in err
    assert sweep_mod.main(["run", str(path), "--address", "nohost"]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_the_report_and_main_start_without_ray_torch_or_matplotlib():
    code = ("import sys, tools.sweep, eval.summary; heavy = {'ray', 'torch', 'matplotlib'} & set(sys.modules); "
            "assert not heavy, heavy; import main; assert 'ray' not in sys.modules and 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ----------------------------------------------------------------------------- tables over seeds
def fake_run(root, name, *, seed, records, protocol="thumos", error=None, **extra):
    """A run folder as main.py writes it, with hand-written metrics records (fractions)."""
    args = ["--dataset", "synthetic", "--seed", str(seed), "--output-dir", str(root), "--model-name", name,
            "--protocol", protocol]
    if protocol == "activitynet":
        args += ["--tiou-thresholds", *map(str, options.ANET_TIOU)]
    for key, value in extra.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    opts = options.parse_args(args)
    run_dir = root / name
    options.save_options(opts, run_dir / "options.yaml")
    if records:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if error:
        (run_dir / "error.txt").write_text(error + "\n")
    return run_dir


def thumos_record(iteration, maps, cmap=0.5):
    tiou = [0.1 * i for i in range(1, 10)]
    maps = list(maps) + [0.01, 0.005]
    return {"iteration": iteration, "tiou": tiou, "mAP": maps,
            "average_mAP": {"0.1:0.7": float(np.mean(maps[:7])), "0.3:0.7": float(np.mean(maps[2:7]))}, "cmAP": cmap}


def anet_record(iteration, maps, cmap=None):
    return {"iteration": iteration, "tiou": list(options.ANET_TIOU), "mAP": list(maps),
            "average_mAP": {"0.5:0.95": float(np.mean(maps))}, "cmAP": cmap}


def test_summary_matches_means_and_sample_stds_computed_by_hand(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "runs"
    expected = {}
    for metric in ("kl", "euclidean"):
        for seed in (1, 2, 3):
            start = thumos_record(0, [0.9] * 7)  # the untrained baseline: never the best, whatever its score
            mid = thumos_record(500, rng.uniform(0.2, 0.6, 7), rng.uniform())
            end = thumos_record(1000, rng.uniform(0.2, 0.6, 7), rng.uniform())
            fake_run(root, f"{metric}-{seed}", seed=seed, records=[start, mid, end], metric=metric, max_iter=1001,
                     eval_at_start="true")
            best = max([mid, end], key=lambda r: selection_score(r, "thumos"))
            expected.setdefault(metric, []).append({"best": best, "last": end})
    # one ActivityNet-protocol run with a single evaluation (n = 1); iterations evaluated twice after a resume
    # are covered by test_best_is_the_selection_criterion_and_duplicate_iterations_count_once
    anet = anet_record(200, rng.uniform(0.1, 0.5, 10), 0.7)
    fake_run(root, "anet", seed=5, records=[anet], protocol="activitynet", max_iter=201, eval_at_start="false")
    # runs that are listed, not counted
    fake_run(root, "baseline-only", seed=1, records=[thumos_record(0, [0.3] * 7)], max_iter=1001, eval_at_start="true")
    fake_run(root, "unfinished", seed=1, records=[thumos_record(500, [0.3] * 7)], max_iter=1001)
    fake_run(root, "nan", seed=1, records=[], max_iter=4, lr=1e30, error="loss term 'cls' is nan at iteration 1")
    fake_run(root, "not-started", seed=1, records=[])
    (root / "_ray_tune" / "trial").mkdir(parents=True)  # Ray's records are not runs
    (root / "broken").mkdir()
    (root / "broken" / "options.yaml").write_text((root / "anet" / "options.yaml").read_text())
    (root / "broken" / "metrics.jsonl").write_text('{"iteration": 3}\n')

    summary = summary_mod.summarize([root])
    assert {p.name for p in summary.paths.values()} == {"summary.md", "summary.csv", "summary.png"}
    assert all(p.parent == root for p in summary.paths.values())
    labels = [(g.protocol, g.label, len(g.runs)) for g in summary.groups]
    assert labels == [("thumos", "metric=euclidean", 3), ("thumos", "metric=kl", 3), ("activitynet", "all runs", 1)]
    problems = {r.dir.name: r.problem for r in summary.excluded}
    assert problems == {
        "baseline-only": "no evaluation after training yet",
        "unfinished": "unfinished (last evaluation at iteration 500 of --max-iter 1001)",
        "nan": "failed: loss term 'cls' is nan at iteration 1",
        "not-started": "no metrics.jsonl yet (the run has not evaluated)",
        "broken": f"{root / 'broken' / 'metrics.jsonl'} line 1 is not a metrics record (iteration, tiou, mAP, average_mAP, cmAP)",
    }

    rows = {(r["group"], r["evaluation"]): r for r in __import__("csv").DictReader(summary.paths["csv"].open())}
    md = summary.paths["markdown"].read_text()
    for metric, runs in expected.items():
        for evaluation in ("best", "last"):
            row = rows[(f"metric={metric}", evaluation)]
            assert row["n"] == "3" and row["seeds"] == "1 2 3" and row["protocol"] == "thumos"
            assert row["iterations"] == " ".join(str(r[evaluation]["iteration"]) for r in runs)
            columns = {f"{t:g}": [100 * r[evaluation]["mAP"][i] for r in runs] for i, t in enumerate([0.1 * k for k in range(1, 8)])}
            columns["avg 0.1:0.7"] = [100 * np.mean(r[evaluation]["mAP"][:7]) for r in runs]
            columns["avg 0.3:0.7"] = [100 * np.mean(r[evaluation]["mAP"][2:7]) for r in runs]
            columns["cmAP"] = [100 * r[evaluation]["cmAP"] for r in runs]
            cells = []
            for column, values in columns.items():
                mean = sum(values) / 3
                std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)  # sample std, by hand
                assert float(row[f"{column} mean"]) == pytest.approx(mean, abs=1e-6)
                assert float(row[f"{column} std"]) == pytest.approx(std, abs=1e-6)
                cells.append(f"{mean:.2f} ± {std:.2f}")
            section = md.split(f"## thumos protocol, {evaluation} evaluation")[1].split("##")[0]
            assert f"| metric={metric} | 3 | " + " | ".join(cells) + " |" in section
    anet_row = rows[("all runs", "best")]
    assert anet_row["protocol"] == "activitynet" and anet_row["n"] == "1"
    assert float(anet_row["0.5 mean"]) == pytest.approx(100 * anet["mAP"][0], abs=1e-6) and anet_row["0.5 std"] == ""
    assert float(anet_row["avg 0.5:0.95 mean"]) == pytest.approx(100 * np.mean(anet["mAP"]), abs=1e-6)
    assert anet_row["0.1 mean"] == "" and rows[("metric=kl", "best")]["0.95 mean"] == ""  # never mixed
    section = md.split("## activitynet protocol, best evaluation")[1]
    assert f"| all runs | 1 | {100 * anet['mAP'][0]:.2f} ± – |" in section
    assert summary.paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(summary.paths["png"]).shape[0] > 100


def test_best_is_the_selection_criterion_and_duplicate_iterations_count_once(tmp_path):
    # ActivityNet keeps the largest mean mAP@0.5:0.95 (not mAP@0.5); a resumed run evaluated 100 twice
    high_05 = anet_record(100, [0.9] + [0.0] * 9)
    high_avg = anet_record(200, [0.5] * 10)
    run = fake_run(tmp_path, "a", seed=1, records=[high_05, high_avg, high_05, anet_record(300, [0.1] * 10)],
                   protocol="activitynet", max_iter=301)
    result = summary_mod.read_run(run)
    assert result.best["iteration"] == 200 and result.last["iteration"] == 300
    # THUMOS keeps the largest sum of mAP@0.1:0.7; the earliest of equal scores
    run = fake_run(tmp_path, "t", seed=1, records=[thumos_record(10, [0.2] * 7), thumos_record(20, [0.2] * 7),
                                                   thumos_record(30, [0.1] * 7)], max_iter=31)
    assert summary_mod.read_run(run).best["iteration"] == 10


def test_runs_of_a_declared_protocol_get_their_own_table(tmp_path):
    """A dataset's own protocol (a mapping in options.yaml) is grouped, tabulated and plotted apart
    from the built-in ones; its criterion picks the best evaluation."""
    declared = {"name": "mine", "reported": [0.3, 0.5], "averages": {"0.3:0.5": [0.3, 0.4, 0.5]}, "criterion": "mean 0.3:0.5"}
    cfg = tmp_path / "protocol.yaml"
    cfg.write_text(yaml.safe_dump({"protocol": declared, "tiou_thresholds": [0.3, 0.4, 0.5]}))

    def record(iteration, maps):
        return {"iteration": iteration, "tiou": [0.3, 0.4, 0.5], "mAP": maps,
                "average_mAP": {"0.3:0.5": float(np.mean(maps))}, "cmAP": 0.5}

    root = tmp_path / "runs"
    for seed, maps in ((1, [0.6, 0.4, 0.2]), (2, [0.8, 0.6, 0.4])):
        opts = options.parse_args(["--dataset", "synthetic", "--config", str(cfg), "--seed", str(seed), "--max-iter", "10",
                                   "--output-dir", str(root), "--model-name", f"mine{seed}"])
        options.save_options(opts, root / f"mine{seed}" / "options.yaml")
        (root / f"mine{seed}" / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in (record(5, [0.9] * 3), record(9, maps))))
    fake_run(root, "t", seed=1, records=[thumos_record(30, [0.2] * 7)], max_iter=31)
    result = summary_mod.summarize([root])
    assert [(resolve(g), len(g.runs)) for g in result.groups] == [("thumos", 1), ("mine", 2)]
    assert "## mine protocol, best evaluation" in result.markdown and "| avg 0.3:0.5 |" in result.markdown
    mine = result.groups[1]
    assert [r.best["iteration"] for r in mine.runs] == [5, 5] and [r.last["iteration"] for r in mine.runs] == [9, 9]
    assert summary_mod.group_stats(mine, "last")["0.3"][:2] == pytest.approx((70.0, np.std([60, 80], ddof=1)))
    assert result.paths["png"].is_file()


def resolve(group):
    from eval.report import resolve_protocol
    return resolve_protocol(group.protocol).name


def test_report_without_finished_runs_or_runs_is_one_line(tmp_path, capsys):
    root = tmp_path / "sweep"
    fake_run(root, "x", seed=1, records=[])
    assert sweep_mod.main(["report", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {root}: no finished run with metrics to summarize (x: no metrics.jsonl yet") and err.count("\n") == 1
    assert not (root / "summary.md").exists()
    (tmp_path / "empty").mkdir()
    for target, message in ((tmp_path / "empty", "holds no run folder"), (tmp_path / "nope", "is not a folder"),
                            (str(tmp_path / "nope*"), "matches no folder")):
        assert sweep_mod.main(["report", str(target)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_report_cli_on_a_glob_writes_beside_the_runs(tmp_path, capsys):
    for seed in (1, 2):
        fake_run(tmp_path / "s", f"seed={seed}", seed=seed, records=[thumos_record(3, [0.1 * seed] * 7)], max_iter=4)
    assert sweep_mod.main(["report", str(tmp_path / "s" / "seed=*")]) == 0
    out = capsys.readouterr().out
    assert "| all runs | 2 | 15.00 ± 7.07 |" in out and (tmp_path / "s" / "summary.csv").is_file()


# ----------------------------------------------------------------------------- on Ray
@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="warning")
    yield ray
    ray.shutdown()


def test_a_trial_no_node_can_hold_is_refused_before_it_waits_for_ever(ray_runtime):
    with pytest.raises(PECRError, match=r"no Ray node has 1 CPU and 0.5 GPUs for a trial \(the largest has 2 CPUs, 0 GPUs\)"):
        sweep_mod._check_resources(1, 0.5)
    with pytest.raises(PECRError, match="no Ray node has 3 CPUs and 0 GPUs"):
        sweep_mod._check_resources(3, 0.0)
    sweep_mod._check_resources(2, 0.0)


@pytest.fixture(scope="module")
def tiny_sweep(ray_runtime, tmp_path_factory, clip_vocab):
    """The 2 x 2 sweep after one run, one trial having been interrupted (by Ctrl-C) before the sweep."""
    root = tmp_path_factory.mktemp("sweep")
    path = write_sweep(root / "tiny.yaml", name="tiny", base=tiny_base(root), grid={"metric": ["kl", "euclidean"]}, seeds=[1, 2])
    sweep = sweep_mod.load_sweep(path, root / "out")
    interrupted = sweep.trials[1]
    run = train_main.Run(interrupted.opts)  # by hand, as main.py would, stopped by Ctrl-C at iteration 2
    sample = run.dataset.train_batch

    def batch(rng, device):
        if run.iteration == 2:
            raise KeyboardInterrupt
        return sample(rng, device)

    run.dataset.train_batch = batch
    with pytest.raises(train_main.Interrupted):
        run.train()
    assert train_main.saved_run(interrupted.dir)["iteration"] == 1
    notes = {trial.name: note for trial, note in sweep_mod.plan(sweep)[0]}  # what the sweep decides to do
    result = sweep_mod.run_sweep(sweep, cpus_per_trial=1, max_concurrent=2, verbose=0)
    summary = summary_mod.summarize([root / "out" / "tiny"])
    return {"root": root, "path": path, "sweep": sweep, "result": result, "summary": summary,
            "interrupted": interrupted, "notes": notes, "metrics": {t.name: read_metrics(t.dir) for t in sweep.trials},
            "summary_csv": summary.paths["csv"].read_text()}


def test_sweep_runs_every_trial_into_its_own_run_folder(tiny_sweep):
    sweep, result = tiny_sweep["sweep"], tiny_sweep["result"]
    out = tiny_sweep["root"] / "out" / "tiny"
    assert [(o.trial.name, o.state) for o in result.outcomes] == [
        ("metric=kl,seed=1", "done"), ("metric=kl,seed=2", "done"), ("metric=euclidean,seed=1", "done"),
        ("metric=euclidean,seed=2", "done")]
    assert sweep_mod.format_outcomes(sweep, result).splitlines()[0] == f"sweep tiny: 4 done, 0 failed, 0 skipped ({out})"
    for trial in sweep.trials:
        run_dir = out / trial.name
        for name in ("options.yaml", "metrics.jsonl", "results.txt", "best.pt", "last.pt"):
            assert (run_dir / name).is_file(), (trial.name, name)
        assert list((run_dir / "tensorboard").iterdir())
        saved = options.load_options(run_dir / "options.yaml")
        assert saved.metric == trial.overrides["metric"] and saved.seed == trial.seed
        assert saved.model_name == trial.name and saved.output_dir == str(out) and saved.device == "cpu"
        assert options.options_to_dict(saved) == options.options_to_dict(trial.opts)
        assert [r["iteration"] for r in tiny_sweep["metrics"][trial.name]] == [0, 3]
        assert train_main.saved_run(run_dir)["iteration"] == 3
    assert (out / "sweep.yaml").read_text() == tiny_sweep["path"].read_text()
    assert list((out / sweep_mod.TUNE_FOLDER).iterdir())  # Ray Tune's own records, beside the runs
    # seeds differ, so do the runs
    assert tiny_sweep["metrics"]["metric=kl,seed=1"][-1]["mAP"] != tiny_sweep["metrics"]["metric=kl,seed=2"][-1]["mAP"]


def test_sweep_table_equals_means_and_stds_of_the_runs_metrics(tiny_sweep):
    import csv

    rows = {(r["group"], r["evaluation"]): r for r in csv.DictReader(tiny_sweep["summary_csv"].splitlines())}
    assert set(rows) == {(f"metric={m}", e) for m in ("kl", "euclidean") for e in ("best", "last")}
    for metric in ("kl", "euclidean"):
        records = [tiny_sweep["metrics"][f"metric={metric},seed={s}"] for s in (1, 2)]
        last = [r[-1] for r in records]  # both the last and the only evaluation after training (iteration 3)
        for evaluation in ("best", "last"):
            row = rows[(f"metric={metric}", evaluation)]
            assert row["n"] == "2" and row["iterations"] == "3 3" and row["seeds"] == "1 2"
            for i, t in enumerate(("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7")):
                a, b = 100 * last[0]["mAP"][i], 100 * last[1]["mAP"][i]
                assert float(row[f"{t} mean"]) == pytest.approx((a + b) / 2, abs=1e-6)
                assert float(row[f"{t} std"]) == pytest.approx(abs(a - b) / math.sqrt(2), abs=1e-6)
            a, b = (100 * r["cmAP"] for r in last)
            assert float(row["cmAP mean"]) == pytest.approx((a + b) / 2, abs=1e-6)


def test_an_interrupted_trial_is_resumed_and_a_trials_options_yaml_reproduces_it(tiny_sweep, capsys):
    trial = tiny_sweep["interrupted"]
    assert tiny_sweep["notes"][trial.name] == "resume from iteration 2"  # resumed, not restarted
    assert {note for name, note in tiny_sweep["notes"].items() if name != trial.name} == {"new"}
    resumed = tiny_sweep["metrics"][trial.name]
    # the same run started afresh from its options.yaml alone, in place (as the README says)
    assert train_main.main(["--config", str(trial.dir / "options.yaml")]) == 0
    again = read_metrics(trial.dir)
    assert [r["iteration"] for r in again] == [r["iteration"] for r in resumed] == [0, 3]
    for a, b in zip(resumed, again):
        assert a["mAP"] == pytest.approx(b["mAP"], abs=1e-9) and a["cmAP"] == pytest.approx(b["cmAP"], abs=1e-9)
    capsys.readouterr()


def test_running_the_sweep_again_skips_finished_trials_and_isolates_a_failing_one(tiny_sweep):
    root = tiny_sweep["root"]
    before = {t.name: ((t.dir / "metrics.jsonl").read_bytes(), (t.dir / "last.pt").stat().st_mtime_ns)
              for t in tiny_sweep["sweep"].trials}
    # the same sweep, plus a grid value whose loss is not finite at iteration 1
    path = write_sweep(root / "tiny2.yaml", name="tiny", base=tiny_base(root),
                       grid=[{"metric": ["kl", "euclidean"]}, {"lr": [1.0e+30]}], seeds=[1, 2])
    sweep = sweep_mod.load_sweep(path, root / "out")
    result = sweep_mod.run_sweep(sweep, cpus_per_trial=1, verbose=0)
    states = {o.trial.name: (o.state, o.note) for o in result.outcomes}
    for name in before:
        assert states[name] == ("skipped", "finished earlier")
        trial_dir = root / "out" / "tiny" / name
        assert ((trial_dir / "metrics.jsonl").read_bytes(), (trial_dir / "last.pt").stat().st_mtime_ns) == before[name]
    for seed in (1, 2):
        state, note = states[f"lr=1e+30,seed={seed}"]
        assert state == "failed" and note.startswith("loss term") and "is nan at iteration 1" in note and "\n" not in note
        assert (root / "out" / "tiny" / f"lr=1e+30,seed={seed}" / "error.txt").read_text() == note + "\n"
    lines = sweep_mod.format_outcomes(sweep, result).splitlines()
    assert lines[0].startswith("sweep tiny: 0 done, 2 failed, 4 skipped")
    summary = summary_mod.summarize([root / "out" / "tiny"])
    assert [(g.label, len(g.runs)) for g in summary.groups] == [("metric=euclidean", 2), ("metric=kl", 2)]
    assert sorted(r.dir.name for r in summary.excluded) == ["lr=1e+30,seed=1", "lr=1e+30,seed=2"]
    assert all(r.problem.startswith("failed: loss term") for r in summary.excluded)
    # a folder holding a run with other options is refused, not touched
    shutil.copytree(root / "out" / "tiny" / "metric=kl,seed=1", root / "other" / "tiny" / "metric=kl,seed=1")
    path = write_sweep(root / "tiny3.yaml", name="tiny", base={**tiny_base(root), "alpha7": 0.25}, grid={"metric": ["kl"]}, seeds=[1])
    to_run, known = sweep_mod.plan(sweep_mod.load_sweep(path, root / "other"))
    assert to_run == [] and known[0].state == "failed"
    assert "holds a run started with other options (alpha7 0.5 there, 0.25 in the sweep)" in known[0].note
