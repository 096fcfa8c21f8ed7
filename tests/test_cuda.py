"""CUDA checks (docs: tools/gpu_check.py runs them on a GPU machine; skipped without CUDA).

The CPU and the GPU draw different random numbers for the same seed, so the comparisons with the
CPU draw the training randomness (dropout masks, the CAS noise, the easy-mining mask) on the CPU and
move it to the device (:func:`cpu_random`): then both devices compute the same function and agree to
float precision. Test passes are compared with ``--test-sampling mean`` (no test-time draws).
"""
from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import losses
import main as train_main
import options
import test as test_cli
from tests.test_end_to_end import interrupt_at, tiny_args

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tools/gpu_check.py runs these)")]


@pytest.fixture(autouse=True)
def _vocab(clip_vocab):
    """The prompt learner tokenises class names with CLIP's vocabulary (../shared)."""


@pytest.fixture
def cpu_random(monkeypatch):
    """Draw torch.rand / torch.randn and the mining mask on the CPU (from one CPU generator seeded
    with 0), then move them to the requested device: identical random numbers on every device."""
    generator = torch.Generator().manual_seed(0)
    rand, randn = torch.rand, torch.randn

    def moved(draw):
        def draw_on_cpu(*shape, generator=None, device=None, dtype=None, **kwargs):
            values = draw(*shape, generator=gen, dtype=dtype or torch.float32, **kwargs)
            return values.to(device) if device is not None else values
        return draw_on_cpu

    gen = generator
    monkeypatch.setattr(torch, "rand", moved(rand))
    monkeypatch.setattr(torch, "randn", moved(randn))
    mask = losses.mining_mask
    monkeypatch.setattr(losses, "mining_mask", lambda shape, p, device=None, generator=None:
                        mask(shape, p, "cpu", gen).to(device))
    return gen


def run(tmp_path, *extra) -> train_main.Run:
    r = train_main.Run(options.parse_args(tiny_args(tmp_path, *extra)))
    r.train()
    return r


def close_histories(a, b, rel):
    assert [h["iteration"] for h in a] == [h["iteration"] for h in b]
    for x, y in zip(a, b):
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=rel, abs=rel), (x["iteration"], key)


def test_training_losses_on_cuda_match_the_cpu(tmp_path, cpu_random):
    args = ("--max-iter", "4", "--interval", "100", "--eval-at-start", "false")
    cpu_random.manual_seed(0)
    on_cpu = run(tmp_path / "cpu", *args)
    cpu_random.manual_seed(0)
    on_gpu = run(tmp_path / "gpu", *args, "--device", "cuda")
    close_histories(on_cpu.history, on_gpu.history, rel=1e-4)


def test_resume_on_cuda_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    args = ("--max-iter", "6", "--interval", "100", "--eval-at-start", "false", "--device", "cuda",
            "--deterministic", "true")
    whole = run(tmp_path / "a", *args)
    first = train_main.Run(options.parse_args(tiny_args(tmp_path / "b", *args)))
    interrupt_at(first, 3, monkeypatch)
    with pytest.raises(train_main.Interrupted):
        first.train()
    second = run(tmp_path / "b", *args, "--resume")
    close_histories(whole.history, first.history + second.history, rel=1e-6)


def test_test_pass_on_cuda_matches_the_cpu(tmp_path, capsys):
    run(tmp_path, "--max-iter", "3", "--interval", "100", "--eval-at-start", "false", "--device", "cpu")
    ckpt = str(tmp_path / "out" / "run" / "best.pt")
    scores = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        assert test_cli.main(["--ckpt", ckpt, "--out-dir", str(out), "--device", device, "--test-sampling", "mean"]) == 0
        scores[device] = json.loads((out / "metrics.json").read_text())
    assert scores["cuda"]["mAP"] == pytest.approx(scores["cpu"]["mAP"], abs=1e-3)
    assert scores["cuda"]["cmAP"] == pytest.approx(scores["cpu"]["cmAP"], abs=1e-3)


def test_features_resident_on_cuda_give_the_host_batches(tmp_path):
    r = train_main.Run(options.parse_args(tiny_args(tmp_path, "--device", "cuda")))
    assert r.dataset._resident is not None  # --features-on-device auto: the tiny set fits
    host = train_main.Run(options.parse_args(tiny_args(tmp_path / "h", "--device", "cuda", "--features-on-device", "off")))
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    for _ in range(3):
        x, y = r.dataset.train_batch(a, "cuda"), host.dataset.train_batch(b, "cuda")
        assert x.features.is_cuda and torch.equal(x.features, y.features) and torch.equal(x.clip_features, y.clip_features)


def test_compiled_step_matches_eager_on_cuda(tmp_path):
    args = ("--max-iter", "3", "--interval", "100", "--eval-at-start", "false", "--device", "cuda")
    eager = run(tmp_path / "e", *args)
    compiled = run(tmp_path / "c", *args, "--compile", "true")
    close_histories(eager.history, compiled.history, rel=1e-3)


def test_amp_bf16_trains_on_cuda_close_to_float32(tmp_path):
    args = ("--max-iter", "3", "--interval", "100", "--eval-at-start", "false", "--device", "cuda")
    full = run(tmp_path / "f", *args)
    half = run(tmp_path / "h", *args, "--amp", "bf16")
    assert all(math.isfinite(h["total"]) for h in half.history)
    close_histories(full.history[:1], half.history[:1], rel=2e-2)


def test_clip_feature_extraction_on_cuda_matches_the_cpu(tmp_path):
    import tools.extract_clip_features as ex
    from tests.test_extract_clip_features import write_video

    (tmp_path / "v").mkdir()
    write_video(tmp_path / "v" / "a.avi", 90, Fraction(30))
    for device in ("cpu", "cuda"):
        assert ex.main(["--videos", str(tmp_path / "v"), "--out", str(tmp_path / device), "--backbone", "random-tiny",
                        "--device", device, "--no-progress"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "cuda" / "a.npy"), np.load(tmp_path / "cpu" / "a.npy"),
                               rtol=1e-4, atol=1e-5)
