"""End to end on a tiny generated dataset: training loop, checkpoints, resume, test.py, errors."""
from __future__ import annotations

import json
import math

import pytest
import torch

import main as train_main
import options
import test as test_cli
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.errors import PECRError


@pytest.fixture(autouse=True)
def _vocab(clip_vocab):
    """The prompt learner tokenises class names with CLIP's vocabulary (../shared)."""


def tiny_args(tmp_path, *extra):
    data = tmp_path / "data"
    return ["--dataset", "synthetic", "--output-dir", str(tmp_path / "out"), "--model-name", "run",
            "--feature-file", str(data / "Syn" / "Syn-I3D-JOINTFeatures.npy"),
            "--annotation-dir", str(data / "Syn-Annotations"), "--clip-feature-dir", str(data / "Syn-CLIP"),
            "--synthetic-videos", "16", "--synthetic-classes", "3", "--feature-size", "32",
            "--max-seqlen", "24", "--batch-size", "4", "--num-similar", "1", "--k-easy", "4", "--k-hard", "2",
            "--mining-m", "6", "--num-prob-v", "3", "--max-iter", "4", "--interval", "3",
            "--checkpoint-every", "1", "--seed", "7", "--device", "cpu", *extra]


def train(args) -> train_main.Run:
    run = train_main.Run(options.parse_args(args))
    run.train()
    return run


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_train_evaluate_and_test_cli_agree(tmp_path, capsys):
    run = train(tiny_args(tmp_path))
    run_dir = tmp_path / "out" / "run"
    records = metrics(run_dir)
    assert [r["iteration"] for r in records] == [0, 3]  # untrained baseline, then the scheduled evaluation
    for r in records:
        assert r["tiou"] == pytest.approx([0.1 * i for i in range(1, 10)])
        assert set(r["average_mAP"]) == {"0.1:0.7", "0.3:0.7"}
        assert all(0 <= m <= 1 for m in r["mAP"]) and 0 <= r["cmAP"] <= 1
    for name in ("options.yaml", "last.pt", "best.pt", "results.txt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").iterdir())
    assert load_checkpoint(run_dir / "last.pt")["iteration"] == 3
    assert len(run.history) == 4 and all(math.isfinite(h["total"]) for h in run.history)

    out_dir = tmp_path / "test_out"
    assert test_cli.main(["--ckpt", str(run_dir / "best.pt"), "--out-dir", str(out_dir)]) == 0
    tested = json.loads((out_dir / "metrics.json").read_text())
    assert tested["mAP"] == pytest.approx(records[-1]["mAP"], abs=1e-12)
    assert tested["cmAP"] == pytest.approx(records[-1]["cmAP"], abs=1e-12)
    assert tested["iteration"] == 3
    detections = json.loads((out_dir / "detections.json").read_text())
    assert set(detections) == {"version", "results", "external_data"}
    segment = next(iter(detections["results"].values()))[0]
    assert segment["segment"][0] <= segment["segment"][1] and isinstance(segment["label"], str)
    assert "avg 0.1:0.7" in capsys.readouterr().out  # the printed table

    # the documented route re-scores detections.json exactly as test.py scored it
    from eval import annotations, detection
    opts = options.parse_args(tiny_args(tmp_path))
    assert annotations.main(["--annotations", opts.annotation_dir, "--subset", opts.test_subset,
                             "--out", str(out_dir / "gt.json")]) == 0
    assert detection.main(["--ground-truth", str(out_dir / "gt.json"), "--predictions", str(out_dir / "detections.json"),
                           "--json-out", str(out_dir / "rescored.json")]) == 0
    rescored = json.loads((out_dir / "rescored.json").read_text())
    assert rescored["tiou"] == tested["tiou"] and rescored["mAP"] == tested["mAP"]


def interrupt_at(run: train_main.Run, iteration: int, monkeypatch) -> None:
    """Make ``run`` receive Ctrl-C when it asks for the batch of ``iteration``."""
    sample = run.dataset.train_batch

    def batch(rng, device):
        if run.iteration == iteration:
            raise KeyboardInterrupt
        return sample(rng, device)

    monkeypatch.setattr(run.dataset, "train_batch", batch)


def test_ctrl_c_keeps_the_last_checkpoint_and_resume_gives_the_same_losses(tmp_path, monkeypatch):
    args = ["--max-iter", "6", "--interval", "100", "--eval-at-start", "false"]
    whole = train(tiny_args(tmp_path / "a", *args))
    first = train_main.Run(options.parse_args(tiny_args(tmp_path / "b", *args)))
    interrupt_at(first, 3, monkeypatch)
    with pytest.raises(train_main.Interrupted, match=r"iteration 3; last.pt \(iteration 2\) is intact") as err:
        first.train()
    assert err.value.exit_code == 130
    second = train(tiny_args(tmp_path / "b", *args, "--resume"))
    assert [h["iteration"] for h in second.history] == [3, 4, 5]
    resumed = first.history + second.history
    assert len(resumed) == len(whole.history) == 6
    for a, b in zip(whole.history, resumed):
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), (a["iteration"], key)


def test_resume_forgets_evaluations_made_after_last_pt(tmp_path, monkeypatch):
    """Evaluated at 2 and 4, last.pt at 2, Ctrl-C at 5: the resumed run evaluates 4 again, once in the logs."""
    args = ["--max-iter", "7", "--interval", "2", "--warmup-iter", "1", "--checkpoint-every", "3"]
    whole = train_main.Run(options.parse_args(tiny_args(tmp_path / "a", *args)))
    whole.train()
    run = train_main.Run(options.parse_args(tiny_args(tmp_path / "b", *args)))
    interrupt_at(run, 5, monkeypatch)
    with pytest.raises(train_main.Interrupted, match=r"last.pt \(iteration 2\)"):
        run.train()
    run_dir = tmp_path / "b" / "out" / "run"
    assert [r["iteration"] for r in metrics(run_dir)] == [0, 2, 4]
    train(tiny_args(tmp_path / "b", *args, "--resume"))
    assert metrics(run_dir) == metrics(tmp_path / "a" / "out" / "run")  # [0, 2, 4, 6], as uninterrupted
    assert (run_dir / "results.txt").read_text() == (tmp_path / "a" / "out" / "run" / "results.txt").read_text()


def test_ctrl_c_before_the_first_checkpoint_says_so(tmp_path, monkeypatch):
    run = train_main.Run(options.parse_args(tiny_args(tmp_path, "--checkpoint-every", "5", "--eval-at-start", "false")))
    interrupt_at(run, 1, monkeypatch)
    with pytest.raises(train_main.Interrupted, match="iteration 1; no checkpoint was written yet"):
        run.train()


def test_resume_refuses_options_that_change_the_run(tmp_path, capsys):
    args = tiny_args(tmp_path, "--max-iter", "2", "--interval", "100", "--eval-at-start", "false")
    train(args)
    capsys.readouterr()
    run_dir = tmp_path / "out" / "run"
    saved = (run_dir / "options.yaml").read_bytes()
    for changed, name in ((["--lr", "0.5"], "--lr"), (["--max-iter", "9"], "--max-iter"), (["--metric", "kl", "--seed", "8"], "--seed")):
        assert train_main.main(args + ["--resume", *changed]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --resume: " + name) and "\n" not in err and "--model-name" in err
    assert (run_dir / "options.yaml").read_bytes() == saved  # still describes the run
    # session options may differ; the run is finished, which the command says
    assert train_main.main(args + ["--resume", "--device", "cpu", "--checkpoint-every", "3"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (run_dir / "options.yaml").read_bytes() == saved


def test_resume_of_a_run_that_never_started_leaves_nothing(tmp_path, capsys):
    assert train_main.main(tiny_args(tmp_path, "--resume")) == 2
    err = capsys.readouterr().err.strip()
    assert "nothing to resume" in err and "drop --resume" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()


def test_unwritable_output_folder_is_refused_before_loading(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert train_main.main(tiny_args(tmp_path, "--output-dir", str(blocker))) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write" in err and "--output-dir" in err and "\n" not in err
    assert not (tmp_path / "data").exists()  # nothing generated


def test_same_seed_same_results(tmp_path):
    a = train(tiny_args(tmp_path / "a"))
    b = train(tiny_args(tmp_path / "b"))
    assert metrics(tmp_path / "a" / "out" / "run") == metrics(tmp_path / "b" / "out" / "run")
    assert a.history == b.history


def test_non_finite_loss_stops_with_the_term_and_iteration(tmp_path, monkeypatch):
    args = tiny_args(tmp_path, "--eval-at-start", "false", "--interval", "100")
    run = train_main.Run(options.parse_args(args))
    criterion = run.criterion

    def poisoned(out, labels, clip_features):
        total, terms = criterion(out, labels, clip_features)
        if len(run.history) == 2:
            terms = {**terms, "guide": terms["guide"] * float("nan")}
            total = total + terms["guide"]
        return total, terms

    run.step_criterion = poisoned
    with pytest.raises(PECRError, match=r"'guide' is nan at iteration 2.*last.pt \(iteration 1\) is intact"):
        run.train()
    assert load_checkpoint(tmp_path / "out" / "run" / "last.pt")["iteration"] == 1  # the last good one


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trained")
    train(tiny_args(tmp_path, "--max-iter", "1", "--eval-at-start", "false", "--interval", "100"))
    return tmp_path


def test_cli_errors_are_one_line(trained, tmp_path, capsys):
    ckpt = trained / "out" / "run" / "last.pt"
    assert test_cli.main(["--ckpt", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not found" in err and "\n" not in err

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(ckpt.read_bytes()[:1000])
    assert test_cli.main(["--ckpt", str(corrupt)]) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt" in err and "\n" not in err

    for name, write in (("notes.txt", lambda p: p.write_text("hello world\n")), ("plain.txt", lambda p: p.write_text("a: 1\n")),
                        ("dict.pt", lambda p: torch.save({"a": 1}, p))):
        write(tmp_path / name)
        assert test_cli.main(["--ckpt", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: ") and name in err and "\n" not in err

    (tmp_path / "file").write_text("")
    assert test_cli.main(["--ckpt", str(ckpt), "--out-dir", str(tmp_path / "file" / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write" in err and "--out-dir" in err and "\n" not in err

    other = tmp_path / "other.pt"  # a checkpoint from a dataset with another class count
    payload = load_checkpoint(ckpt)
    payload["model"]["config"]["num_classes"] = 7
    save_checkpoint(other, {k: v for k, v in payload.items() if k not in ("format", "version")})
    assert test_cli.main(["--ckpt", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "7 classes" in err and "another dataset" in err and "\n" not in err


def test_main_reports_bad_input_in_one_line(tmp_path, capsys):
    assert train_main.main(tiny_args(tmp_path, "--synthetic-generate", "false")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_should_evaluate_schedule():
    opts = options.parse_args([])  # THUMOS14: every 50 once past 3000, and the last iteration
    evaluated = [i for i in range(opts.max_iter) if train_main.should_evaluate(i, opts)]
    assert evaluated[0] == 3050 and evaluated[-1] == 9000 and all(i % 50 == 0 for i in evaluated)
    assert len(evaluated) == (9000 - 3050) // 50 + 1


def test_fresh_run_replaces_results_and_checkpoint_classes_are_checked(tmp_path, capsys):
    args = tiny_args(tmp_path, "--max-iter", "1", "--interval", "100")
    train(args)
    train(args)  # the same run folder again, without --resume
    run_dir = tmp_path / "out" / "run"
    assert [r["iteration"] for r in metrics(run_dir)] == [0, 0]  # before training, and after its only step
    assert len(list((run_dir / "tensorboard").iterdir())) == 1

    ckpt = load_checkpoint(run_dir / "last.pt")  # same class count, other class names
    ckpt["classlist"] = [f"other{i}" for i in range(len(ckpt["classlist"]))]
    save_checkpoint(tmp_path / "renamed.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    capsys.readouterr()  # drop the training runs' progress bars
    assert test_cli.main(["--ckpt", str(tmp_path / "renamed.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "other0" in err and "another dataset" in err and "\n" not in err


def test_ambiguous_file_auto(tmp_path):
    opts = options.parse_args(["--annotation-dir", str(tmp_path)])
    assert opts.ambiguous_file == "auto" and test_cli.ambiguous_file(opts) is None
    (tmp_path / "Ambiguous_test.txt").write_text("video_test_1  1.0 2.0\n")
    assert test_cli.ambiguous_file(opts) == tmp_path / "Ambiguous_test.txt"
    assert test_cli.ambiguous_file(options.parse_args(["--ambiguous-file", "none"])) is None
    assert options.parse_args(["--dataset", "activitynet"]).ambiguous_file is None


def test_test_cli_reads_a_release_named_checkpoint(trained, tmp_path, capsys):
    """The authors' format (bare state dict, release names) scores like our own checkpoint of the same weights."""
    from utils.checkpoint import _release_table
    run_dir = trained / "out" / "run"
    ours = load_checkpoint(run_dir / "last.pt")
    inverse = {v: k for k, v in _release_table().items()}
    torch.save({inverse[k]: v for k, v in ours["model"]["state_dict"].items()}, tmp_path / "release.pkl")
    config = str(run_dir / "options.yaml")
    assert test_cli.main(["--ckpt", str(run_dir / "last.pt"), "--out-dir", str(tmp_path / "a")]) == 0
    assert test_cli.main(["--ckpt", str(tmp_path / "release.pkl"), "--config", config, "--out-dir", str(tmp_path / "b")]) == 0
    assert "mapped" in capsys.readouterr().out
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert a["mAP"] == b["mAP"] and a["cmAP"] == b["cmAP"]


def test_bad_options_never_touch_the_generated_dataset(tmp_path, capsys):
    """The issue's scenario: a failing run used to delete the synthetic annotations first."""
    args = tiny_args(tmp_path, "--max-iter", "1", "--eval-at-start", "false")
    assert train_main.main(args) == 0
    data = {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()}
    for bad in (["--feature-size", "0"], ["--synthetic-videos", "0"], ["--synthetic-classes", "0"],
                ["--synthetic-difficulty", "5"], ["--feature-file", str(tmp_path / "x" / "feat.npy")]):
        capsys.readouterr()
        assert train_main.main(args + bad) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err
    assert {p: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()} == data
    assert train_main.main(args) == 0  # the plain run still works


def test_compile_wraps_the_training_step_only_and_tf32_sets_the_backends(tmp_path):
    """--compile: the step calls torch.compile forms of the model and the loss (compiled lazily, at the
    first step; the step itself is checked against eager on CUDA in tests/test_cuda.py), while
    evaluation and checkpoints use the plain model. --tf32 flips PyTorch's two TF32 switches."""
    from utils.device import set_float32_precision

    run = train_main.Run(options.parse_args(tiny_args(tmp_path, "--compile", "true")))
    assert isinstance(run.step_model, torch._dynamo.eval_frame.OptimizedModule)
    assert run.step_model._orig_mod is run.model and run.step_criterion is not run.criterion
    plain = train_main.Run(options.parse_args(tiny_args(tmp_path / "b")))
    assert plain.step_model is plain.model and plain.step_criterion is plain.criterion
    try:
        set_float32_precision(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_float32_precision(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        set_float32_precision(False)
