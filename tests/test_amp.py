"""--amp bf16 (mixed precision) against the float32 default, on the CPU.

Tolerances, on a fixed batch with identical dropout masks, noise and easy-mining mask (seeded alike):
every loss term within 1% relative of float32 (bf16 keeps 8 significant bits, 0.4% per rounding;
observed <= 0.3%), and the gradient of all trainable parameters together within 10% in norm with a
cosine >= 0.99 (observed ~4% and 0.999: the weight gradients are sums over every snippet of terms
of both signs, so their bf16 rounding errors do not shrink with them; single small gradients, a
scalar bias's say, can differ by more and are not compared one by one). The hard/easy snippet
selections are discrete: a bf16 rounding can swap two snippets of near-equal attention, so the
metric terms are compared on the same selected snippets. The float32 default stays bit for bit
what it was: it never enters autocast and equals the pre-amp forward written out below.
"""
from __future__ import annotations

import json

import pytest

from utils.errors import PECRError
import torch
import torch.nn.functional as F
from torch import nn

import losses
import main as train_main
import options
import test as test_cli
from model import PECROutput, build_model, drop_lrelu, lrelu
from utils.checkpoint import load_checkpoint

PHRASES = ["baseball pitch", "clean and jerk", "diving"]
B, T, FEAT = 6, 40, 64
LOSS_RTOL, GRAD_RTOL, GRAD_COS = 1e-2, 0.1, 0.99


@pytest.fixture(autouse=True)
def _vocab(clip_vocab):
    """The prompt learner tokenises class names with CLIP's vocabulary (../shared)."""


def make(*extra: str):
    opts = options.parse_args(["--dataset", "synthetic", "--device", "cpu", "--feature-size", str(FEAT),
                               "--k-easy", "5", "--k-hard", "3", *extra])
    torch.manual_seed(0)
    return build_model(opts, PHRASES, "cpu").train(), opts


def batch():
    g = torch.Generator().manual_seed(1)
    labels = torch.zeros(B, len(PHRASES))
    labels[torch.arange(B), torch.arange(B) // 2 % len(PHRASES)] = 1
    return torch.randn(B, T, FEAT, generator=g), labels, torch.randn(B, T, 64, generator=g)


def step(model, opts, amp: str, mining_mask=None):
    """One forward + loss + backward at precision ``amp`` with the global RNG seeded alike (dropout
    masks, CAS noise): (output, {term: value}, {parameter: gradient})."""
    model.amp = amp
    model.zero_grad(set_to_none=True)
    features, labels, clip_features = batch()
    torch.manual_seed(5)
    out = model(features)
    mask = losses.mining_mask((B, T), opts.mining_dropout, generator=torch.Generator().manual_seed(2)) \
        if mining_mask is None else mining_mask
    total, terms = losses.PECRLoss(opts)(out, labels, clip_features, mining_mask=mask)
    total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, {"total": total.detach(), **{k: v.detach() for k, v in terms.items()}}, grads


def pre_amp_forward(model, features):
    """PECR.forward as it was before --amp (float32 training form, shortcut sampling), written out."""
    S = model.feature_size // 2
    x = features.transpose(1, 2)
    rgb, flow = x.split(S, dim=1)
    filtered = torch.cat([model.consensus_v.filter(rgb, flow), model.consensus_f.filter(flow, rgb)], dim=1)
    att_v, att_f = model.consensus_v.attend(filtered[:, :S]), model.consensus_f.attend(filtered[:, S:])
    f0 = drop_lrelu(model.fusion1(filtered), model.fusion_drop)
    f1 = lrelu(model.fusion_drop(model.fusion2(f0)).transpose(1, 2).contiguous())
    f0 = f0.transpose(1, 2)
    mu, var = model.adapter(f1)
    text = model.text_encoder()
    noise = torch.randn(mu.shape, dtype=mu.dtype) / model.num_samples ** 0.5
    cas = (mu + torch.exp(var / 2) * noise) @ text.t() / model.train_temperature
    return PECROutput(cas, (att_v + att_f) / 2, att_v, att_f, f0, f1, mu, var, text)


def test_float32_default_is_bit_for_bit_the_pre_amp_model():
    model, opts = make()
    assert opts.amp == "off" and model.amp == "off"
    out, terms, grads = step(model, opts, "off")
    step(model, opts, "bf16")                      # a bf16 step in between leaves nothing behind
    again_out, again_terms, again_grads = step(model, opts, "off")

    model.zero_grad(set_to_none=True)
    features, labels, clip_features = batch()
    torch.manual_seed(5)
    ref = pre_amp_forward(model, features)
    mask = losses.mining_mask((B, T), opts.mining_dropout, generator=torch.Generator().manual_seed(2))
    total, ref_terms = losses.PECRLoss(opts)(ref, labels, clip_features, mining_mask=mask)
    total.backward()
    ref_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    for name in ("cas", "attention", "attention_v", "attention_f", "f0", "f1", "mu", "var", "text_features"):
        assert torch.equal(getattr(out, name), getattr(ref, name)), name
        assert torch.equal(getattr(again_out, name), getattr(ref, name)), name
    assert torch.equal(terms["total"], total)
    for name, value in ref_terms.items():
        assert torch.equal(terms[name], value) and torch.equal(again_terms[name], value), name
    assert grads.keys() == ref_grads.keys() == again_grads.keys()
    for name, g in ref_grads.items():
        assert torch.equal(grads[name], g) and torch.equal(again_grads[name], g), name


def _record_autocast(model):
    """{module name: [autocast enabled at each call]} for every convolution and linear layer."""
    seen: dict[str, list[bool]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Linear)):
            module.register_forward_pre_hook(
                lambda mod, inp, name=name: seen.setdefault(name, []).append(torch.is_autocast_enabled("cpu")))
    return seen


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_autocast_covers_the_layers_and_nothing_after_them(amp):
    model, opts = make("--amp", amp)
    seen = _record_autocast(model)
    out, terms, _ = step(model, opts, amp)
    model.eval()
    with torch.no_grad():
        evaluated = model(batch()[0], generator=torch.Generator().manual_seed(3))
    head = [n for n in seen if not n.startswith("text_encoder.")]
    text = [n for n in seen if n.startswith("text_encoder.")]
    assert len(head) == 16 and text  # 12 consensus convolutions (the decoders never run), 2 fusion ones, 2 linears
    assert all(flags == [amp == "bf16"] * 2 for flags in seen.values()), seen
    # everything returned is float32, and the CAS, sampling and losses ran outside autocast
    # (a matmul of float32 inputs under bf16 autocast returns bfloat16)
    for o in (out, evaluated):
        for name in ("cas", "attention", "attention_v", "attention_f", "f0", "f1", "mu", "var", "text_features"):
            assert getattr(o, name).dtype == torch.float32, name
    assert all(v.dtype == torch.float32 for v in terms.values())
    assert all(p.dtype == torch.float32 and (p.grad is None or p.grad.dtype == torch.float32)
               for p in model.parameters())


def test_text_transformer_keeps_its_residual_stream_pooling_and_projection_float32():
    model, _ = make()
    clip_model, prompts = model.text_encoder.clip_model, model.text_encoder
    embeddings, tokens = prompts.prompts().detach(), prompts.token_ids
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = clip_model.encode_text_from_embeddings(embeddings, tokens)
        hidden = clip_model.transformer(embeddings + clip_model.positional_embedding[:embeddings.shape[1]], causal=True)
        linear = clip_model.transformer.resblocks[0].mlp.c_fc(embeddings)
    assert linear.dtype == torch.bfloat16 and hidden.dtype == torch.float32
    pooled = clip_model.ln_final(hidden[torch.arange(len(hidden)), tokens.argmax(-1)])
    assert got.dtype == torch.float32 and torch.equal(got, pooled @ clip_model.text_projection)


def test_bf16_losses_and_gradients_stay_close_to_float32():
    model, opts = make()
    out32, terms32, grads32 = step(model, opts, "off")
    out16, terms16, grads16 = step(model, opts, "bf16")
    assert not torch.equal(out16.mu, out32.mu)   # bf16 did run
    for name in ("total", "cls", "norm", "guide", "coactivity", "distill", "orthogonality"):
        torch.testing.assert_close(terms16[name], terms32[name], rtol=LOSS_RTOL, atol=0), name
    # the metric terms on the same snippets (those float32 selects)
    mask = losses.mining_mask((B, T), opts.mining_dropout, generator=torch.Generator().manual_seed(2))
    mined = losses.mine_snippets(out32.attention, opts.k_easy, opts.k_hard, opts.mining_M, opts.mining_m,
                                 opts.hard_mining, mask=mask)
    for query, positive, negative in ((mined.hard_action, mined.easy_action, mined.easy_background),
                                      (mined.hard_background, mined.easy_background, mined.easy_action)):
        sets = lambda o: [(losses.gather(o.mu.detach(), i), losses.gather(o.var.detach(), i))
                          for i in (query, positive, negative)]
        torch.testing.assert_close(losses.metric_learning_loss(*sets(out16)),
                                   losses.metric_learning_loss(*sets(out32)), rtol=LOSS_RTOL, atol=0)

    assert grads16.keys() == grads32.keys()
    g32 = torch.cat([g.flatten() for g in grads32.values()])
    g16 = torch.cat([grads16[n].flatten() for n in grads32])
    assert torch.linalg.norm(g16 - g32) <= GRAD_RTOL * torch.linalg.norm(g32)
    assert F.cosine_similarity(g16, g32, dim=0) >= GRAD_COS


def test_bf16_evaluation_is_close_to_float32():
    model, _ = make()
    model.eval()
    features = batch()[0]
    outs = {}
    for amp in ("off", "bf16"):
        model.amp = amp
        with torch.no_grad():
            outs[amp] = model(features, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(outs["bf16"].attention, outs["off"].attention, rtol=0, atol=1e-2)
    # the test CAS is a cosine / tau_test (0.03): within 1% of its range of +-33
    torch.testing.assert_close(outs["bf16"].cas, outs["off"].cas, rtol=0, atol=0.3)


# ----------------------------------------------------------------------------- option

def test_amp_option_from_command_line_and_yaml(tmp_path):
    assert options.parse_args([]).amp == "off"
    assert options.parse_args(["--amp", "bf16"]).amp == "bf16"
    for text, expected in (("amp: off\n", "off"), ("amp: 'off'\n", "off"), ("amp: bf16\n", "bf16")):
        cfg = tmp_path / "exp.yaml"
        cfg.write_text(text)             # YAML 1.1 reads a bare off as false: still "off"
        assert options.parse_args(["--config", str(cfg)]).amp == expected, text
    cfg.write_text("amp: fp16\n")
    with pytest.raises(options.PECRError, match="amp.*fp16.*off, bf16"):
        options.parse_args(["--config", str(cfg)])
    saved = tmp_path / "options.yaml"
    options.save_options(options.parse_args([]), saved)
    assert options.load_options(saved).amp == "off"


# ----------------------------------------------------------------------------- checkpoints and CLIs

def tiny_args(tmp_path, name, *extra):
    data = tmp_path / "data"
    return ["--dataset", "synthetic", "--output-dir", str(tmp_path / "out"), "--model-name", name,
            "--feature-file", str(data / "Syn" / "Syn-I3D-JOINTFeatures.npy"),
            "--annotation-dir", str(data / "Syn-Annotations"), "--clip-feature-dir", str(data / "Syn-CLIP"),
            "--synthetic-videos", "16", "--synthetic-classes", "3", "--feature-size", "32",
            "--max-seqlen", "24", "--batch-size", "4", "--num-similar", "1", "--k-easy", "4", "--k-hard", "2",
            "--mining-m", "6", "--num-prob-v", "3", "--max-iter", "3", "--interval", "100",
            "--eval-at-start", "false", "--checkpoint-every", "1", "--seed", "7", "--device", "cpu", *extra]


def train(args) -> train_main.Run:
    run = train_main.Run(options.parse_args(args))
    run.train()
    return run


def last_record(run_dir):
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def test_checkpoints_are_float32_and_interchangeable(tmp_path):
    """Train with --amp bf16, evaluate and resume without it, and the other way round."""
    runs = {amp: train(tiny_args(tmp_path, amp, "--amp", amp)) for amp in ("off", "bf16")}
    for amp, run in runs.items():
        run_dir = tmp_path / "out" / amp
        for name in ("best.pt", "last.pt"):
            state = load_checkpoint(run_dir / name)["model"]["state_dict"]
            assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point()), (amp, name)
        trained = last_record(run_dir)   # the end-of-run evaluation, at the run's precision
        # test.py does not inherit --amp: float32 unless asked; asked for the run's own, it repeats the run's figures
        for test_amp in ("off", "bf16"):
            out_dir = tmp_path / f"test_{amp}_{test_amp}"
            extra = [] if test_amp == "off" else ["--amp", "bf16"]
            assert test_cli.main(["--ckpt", str(run_dir / "best.pt"), "--out-dir", str(out_dir), *extra]) == 0
            tested = json.loads((out_dir / "metrics.json").read_text())
            if test_amp == amp:
                assert tested["mAP"] == pytest.approx(trained["mAP"], abs=1e-12)
            else:
                assert tested["mAP"] == pytest.approx(trained["mAP"], abs=0.05)
    # --amp is part of the run: a resume at the other precision is refused (options.yaml stays true)
    for amp, other in (("off", "bf16"), ("bf16", "off")):
        with pytest.raises(PECRError, match="--resume: --amp"):
            train(tiny_args(tmp_path, amp, "--amp", other, "--resume"))
    # the losses of the two precisions' runs stay close (same seed, data and initialisation)
    for a, b in zip(runs["off"].history, runs["bf16"].history):
        assert b["total"] == pytest.approx(a["total"], rel=0.02)
