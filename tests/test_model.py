"""PECR head, adapter and CAS (docs/method.md §2) on a narrow synthetic configuration with a fake text encoder;
the CLIP-dependent checks (real prompt learner, RN50-sized text tower) at the end."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

import losses
from model import Dropout, PECR, PECROutput, build_model, load_clip, sample, train_cas
from options import parse_args
from utils.device import resolve_device
from utils.errors import PECRError

C, FEAT, D = 5, 256, 32


class FakeText(nn.Module):
    """Stands in for clip.PromptLearner: trainable prompt_table, frozen ``clip_model``."""

    def __init__(self, rows: int = C + 1, width: int = 12, dim: int = D):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.prompt_table = nn.Parameter(torch.randn(rows, width, generator=g))
        self.clip_model = nn.Linear(width, dim)  # deterministic, like clip.load("random-...")
        self.clip_model.weight.data = torch.randn(dim, width, generator=g)
        self.clip_model.bias.data = torch.randn(dim, generator=g)
        self.clip_model.requires_grad_(False)

    def forward(self) -> torch.Tensor:
        return self.clip_model(self.prompt_table)


def make_model(**kw) -> PECR:
    torch.manual_seed(0)
    return PECR(C, FEAT, D, FakeText(), **kw)


def features(B=3, T=37, seed=0):
    return torch.randn(B, T, FEAT, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- reference head

lrelu = lambda x: F.leaky_relu(x, 0.2)


def conv(layer, x):
    return F.conv1d(x, layer.weight.double(), layer.bias.double(), padding=layer.padding)


def ref_consensus(m, x, y):
    """docs/method.md §2.1 formulas without dropout (eval), float64, consensus a(t) by an explicit loop."""
    e = lrelu(conv(m.encoder, y))
    g = lrelu(conv(m.global_conv, x.mean(-1, keepdim=True)))[..., 0]     # (B, S)
    l = lrelu(conv(m.local_conv, e))                                      # (B, S, T)
    B, _, T = l.shape
    a = torch.empty(B, 1, T, dtype=x.dtype)
    for b in range(B):
        for t in range(T):
            a[b, 0, t] = torch.dot(g[b], l[b, :, t]) / (g[b].norm() * l[b, :, t].norm())
    xf = torch.sigmoid(l * a) * x
    att = torch.sigmoid(conv(m.attn_conv3, lrelu(conv(m.attn_conv2, lrelu(conv(m.attn_conv1, xf))))))
    return att[:, 0], xf


def test_widths_scale_with_feature_size():
    m = make_model()
    assert m.consensus_v.encoder.weight.shape == (FEAT // 4, FEAT // 2, 3)
    assert m.consensus_v.local_conv.weight.shape == (FEAT // 2, FEAT // 4, 3)
    assert m.consensus_v.global_conv.weight.shape == (FEAT // 2, FEAT // 2, 3)
    assert m.consensus_v.attn_conv2.weight.shape == (FEAT // 4, FEAT // 4, 3)
    assert m.consensus_v.attn_conv3.weight.shape == (1, FEAT // 4, 1)
    assert m.fusion1.weight.shape == m.fusion2.weight.shape == (FEAT, FEAT, 3)
    assert m.adapter.fc_mean.weight.shape == (D, FEAT)
    big = PECR(C, 2048, 1024, FakeText(dim=1024))
    assert big.consensus_f.encoder.weight.shape == (512, 1024, 3) and big.fusion2.weight.shape == (2048, 2048, 3)


def test_eval_forward_matches_reference_formulas():
    m = make_model(test_sampling="mean").double().eval()
    x = features().double()
    with torch.no_grad():
        out = m(x)
    rgb, flow = x.transpose(1, 2).split(FEAT // 2, dim=1)
    av, xv = ref_consensus(m.consensus_v, rgb, flow)
    af, xf = ref_consensus(m.consensus_f, flow, rgb)
    f0 = lrelu(conv(m.fusion1, torch.cat([xv, xf], 1)))
    f1 = lrelu(conv(m.fusion2, f0)).transpose(1, 2)
    mu = f1 @ m.adapter.fc_mean.weight.t() + m.adapter.fc_mean.bias
    var = torch.relu(f1 @ m.adapter.fc_var.weight.t() + m.adapter.fc_var.bias)
    text = m.text_encoder()
    cas = torch.empty(3, 37, C + 1, dtype=torch.float64)
    for b in range(3):
        for t in range(37):
            for c in range(C + 1):
                cas[b, t, c] = torch.dot(mu[b, t], text[c]) / (mu[b, t].norm() * text[c].norm()) / 0.03
    for got, exp in [(out.attention_v, av), (out.attention_f, af), (out.attention, (av + af) / 2),
                     (out.f0, f0.transpose(1, 2)), (out.f1, f1), (out.mu, mu), (out.var, var), (out.cas, cas),
                     (out.text_features, text)]:
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-10)
    assert (out.var == 0).any() and (out.var > 0).any()


def test_output_shapes_and_layout():
    m = make_model().train()
    out = m(features(B=2, T=41))
    assert isinstance(out, PECROutput) and out.samples is None
    assert out.cas.shape == (2, 41, C + 1)
    assert out.attention.shape == out.attention_v.shape == out.attention_f.shape == (2, 41)
    assert out.f0.shape == out.f1.shape == (2, 41, FEAT)
    assert out.mu.shape == out.var.shape == (2, 41, D) and out.text_features.shape == (C + 1, D)
    out = m(features(B=1, T=1))           # a one-snippet video still runs
    assert out.cas.shape == (1, 1, C + 1)


def test_dropout_placement():
    """p = 1 drops everything: e = l = g = 0 so a = 0, x' = x / 2; the dropout sits before the final
    sigmoid (attention 0.5, not 0); the fusion dropout zeroes F0 and F1, so mu = bias, v = ReLU(bias)."""
    m = make_model(dropout=1.0, fusion_dropout=1.0).train()
    with torch.no_grad():
        out = m(features())
    assert torch.equal(out.attention_v, torch.full((3, 37), 0.5)) and torch.equal(out.attention, out.attention_f)
    x = features().transpose(1, 2)
    _, xf = m.consensus_v(*x.split(FEAT // 2, dim=1))
    torch.testing.assert_close(xf, x[:, : FEAT // 2] / 2)
    assert (out.f0 == 0).all() and (out.f1 == 0).all()
    assert torch.equal(out.mu, m.adapter.fc_mean.bias.expand_as(out.mu))
    assert torch.equal(out.var, torch.relu(m.adapter.fc_var.bias).expand_as(out.var))


def test_training_forward_matches_spec_with_recorded_dropout_masks():
    """Record every dropout mask of a training forward, then rebuild docs/method.md §2.1 with Drop(LReLU(conv))
    at the places docs/method.md §2.1 gives (e, g, l, first attention conv, before the sigmoid; both fusion layers)."""
    m = make_model().double().train()
    scales = []  # output / input of each dropout call, in call order
    hook = lambda mod, inp, out: scales.append(torch.where(inp[0] != 0, out / inp[0], torch.zeros_like(out)))
    for mod in m.modules():
        if isinstance(mod, nn.Dropout):
            mod.register_forward_hook(hook)
    x = features().double()
    with torch.no_grad():
        out = m(x)
    assert len(scales) == 12
    for s, keep_scale in zip(scales, [2.0] * 10 + [1 / 0.3] * 2):                         # p = 0.5, fusion 0.7
        kept = s != 0
        assert kept.any() and (~kept).any()
        torch.testing.assert_close(s[kept], torch.full_like(s[kept], keep_scale))
    masks = iter(scales)

    def filtered(mod, main, aux):
        e = lrelu(conv(mod.encoder, aux)) * next(masks)
        g = lrelu(conv(mod.global_conv, main.mean(-1, keepdim=True))) * next(masks)
        l = lrelu(conv(mod.local_conv, e)) * next(masks)
        a = (F.normalize(g, dim=1) * F.normalize(l, dim=1)).sum(1, keepdim=True)
        return torch.sigmoid(l * a) * main

    def attention(mod, xf):
        h = lrelu(conv(mod.attn_conv1, xf)) * next(masks)
        return torch.sigmoid(conv(mod.attn_conv3, lrelu(conv(mod.attn_conv2, h))) * next(masks))[:, 0]

    rgb, flow = x.transpose(1, 2).split(FEAT // 2, dim=1)
    # the model draws the masks in this order: both filters, then both attention branches, then fusion
    xv, xf = filtered(m.consensus_v, rgb, flow), filtered(m.consensus_f, flow, rgb)
    av, af = attention(m.consensus_v, xv), attention(m.consensus_f, xf)
    f0 = lrelu(conv(m.fusion1, torch.cat([xv, xf], 1))) * next(masks)
    f1 = lrelu(conv(m.fusion2, f0)) * next(masks)
    for got, exp in [(out.attention_v, av), (out.attention_f, af), (out.f0, f0.transpose(1, 2)),
                     (out.f1, f1.transpose(1, 2)), (out.mu, m.adapter.fc_mean(f1.transpose(1, 2)))]:
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("p", [0.5, 0.7])
def test_dropout_is_inverted_dropout_with_rate_p(p):
    drop = Dropout(p).train()
    x = (torch.rand(200, 500) + 0.5).requires_grad_()
    y = drop(x)
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.01)
    assert torch.allclose(y[kept], x[kept] / (1 - p))
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / (1 - p))
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))


def test_wrong_feature_width_and_bad_settings_raise():
    with pytest.raises(PECRError, match="feature-size"):
        make_model()(torch.zeros(1, 5, FEAT + 4))
    with pytest.raises(PECRError):
        PECR(C, 250, D, FakeText())
    with pytest.raises(PECRError):
        PECR(C, FEAT, D, FakeText(), train_sampling="many")
    with pytest.raises(PECRError, match="class list"):
        PECR(C + 2, FEAT, D, FakeText())(features())


# ----------------------------------------------------------------------------- CAS forms

def _mu_var_text(B=2, T=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    var = torch.relu(torch.randn(B, T, D, generator=g, dtype=torch.float64)) * 0.5
    return mu, var, torch.randn(C + 1, D, generator=g, dtype=torch.float64)


def test_training_cas_shortcut_is_exact_for_the_mean_noise():
    mu, var, text = _mu_var_text()
    eps = torch.randn(2, 9, 20, D, dtype=torch.float64)
    full = torch.einsum("btkd,cd->btkc", sample(mu, var, eps), text).mean(2) / 8
    torch.testing.assert_close(train_cas(mu, var, text, eps.mean(2), 8.0), full)


@pytest.mark.parametrize("mode", ["shortcut", "full"])
def test_training_cas_distribution(mode):
    """Mean <mu, W>/tau and variance sum_d exp(v_d) W_cd^2 / (K tau^2) for both modes."""
    m = make_model(train_sampling=mode, num_samples=20).double().train()
    mu, var, text = _mu_var_text(B=1, T=4)
    g = torch.Generator().manual_seed(5)
    draws = torch.stack([m._cas(mu, var, text, g, False)[0] for _ in range(2000)])
    mean = mu @ text.t() / 8
    variance = torch.exp(var) @ (text ** 2).t() / 20 / 64
    torch.testing.assert_close(draws.mean(0), mean, atol=float(4 * (variance / 2000).sqrt().max()), rtol=0)
    ratio = draws.var(0) / variance
    assert ratio.min() > 0.85 and ratio.max() < 1.15, ratio


def test_training_cas_from_returned_samples():
    m = make_model(train_sampling="full").train()
    out = m(features(), generator=torch.Generator().manual_seed(0), return_samples=True)
    assert out.samples.shape == (3, 37, 20, D)
    ref = torch.einsum("btkd,cd->btc", out.samples, out.text_features) / 20 / 8
    torch.testing.assert_close(out.cas, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.samples.mean(2), out.mu, atol=3 * float(torch.exp(out.var / 2).max().detach()), rtol=0)


def test_test_cas_sampling_is_seeded_and_matches_samples():
    m = make_model().eval()
    x = features()
    with torch.no_grad():
        a = m(x, generator=torch.Generator().manual_seed(3), return_samples=True)
        b = m(x, generator=torch.Generator().manual_seed(3))
        c = m(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.cas, b.cas) and not torch.equal(a.cas, c.cas)
    z, w = F.normalize(a.samples, dim=-1), F.normalize(a.text_features, dim=-1)
    ref = torch.stack([z[:, :, k] @ w.t() for k in range(20)]).mean(0) / 0.03
    torch.testing.assert_close(a.cas, ref, rtol=1e-5, atol=1e-4)
    assert a.cas.abs().max() <= 1 / 0.03 + 1e-3


def test_test_cas_mean_option_and_precomputed_text():
    m = make_model(test_sampling="mean").eval()
    x = features()
    with torch.no_grad():
        text = m.encode_text()
        out = m(x, text_features=text)
        again = m(x)
    ref = F.normalize(out.mu, dim=-1) @ F.normalize(text, dim=-1).t() / 0.03
    torch.testing.assert_close(out.cas, ref)
    assert torch.equal(out.cas, again.cas)  # deterministic: no sampling, no dropout


def test_from_options():
    opts = parse_args(["--dataset", "synthetic", "--num-prob-v", "7", "--test-temperature", "0.1",
                       "--test-sampling", "mean"])
    m = PECR.from_options(opts, C, D, FakeText())
    assert (m.feature_size, m.num_samples, m.test_temperature, m.test_sampling) == (256, 7, 0.1, "mean")
    assert m.consensus_v.drop.p == opts.dropout and m.fusion_drop.p == opts.fusion_dropout


def _loss_opts():
    return parse_args(["--dataset", "synthetic", "--k-easy", "5", "--k-hard", "3", "--mining-m", "8"])


def _labels(B, classes=C):
    y = torch.zeros(B, classes)
    y[torch.arange(B), torch.arange(B) // 2 % classes] = 1
    return y


def test_gradients_reach_every_trainable_parameter_but_not_frozen_text_weights():
    dev = resolve_device("auto")
    m = make_model().to(dev).train()
    B, T = 6, 40
    out = m(features(B, T).to(dev))
    total, _ = losses.PECRLoss(_loss_opts())(out, _labels(B).to(dev), torch.randn(B, T, D).to(dev))
    total.backward()
    for name, p in m.named_parameters():
        if not p.requires_grad:
            assert name.startswith("text_encoder.clip_model.") and p.grad is None, name
        elif ".decoder." in name:  # reconstruction branch: kept for checkpoints, not computed
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert m.text_encoder.prompt_table.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- with the real clip/

def test_build_model_random_tiny_trains_prompts_only(clip_vocab):
    import clip
    opts = parse_args(["--dataset", "synthetic", "--device", "auto", "--clip-vocab", str(clip_vocab),
                       "--k-easy", "5", "--k-hard", "3", "--mining-m", "8"])
    phrases = ["baseball pitch", "clean and jerk", "diving"]
    model = build_model(opts, phrases, opts.device)
    assert isinstance(model.text_encoder, clip.PromptLearner) and model.clip_backbone == "random-tiny"
    assert model.clip_dim == model.text_encoder.clip_model.embed_dim
    from utils.checkpoint import CLIP_PREFIX, _release_table
    assert set(_release_table().values()) == {k for k in model.state_dict() if not k.startswith(CLIP_PREFIX)}
    clip_model = model.text_encoder.clip_model   # the parts PECR never runs are dropped ...
    assert clip_model.visual is None and clip_model.token_embedding is None
    dev = next(model.parameters()).device
    full = build_model(opts, phrases, dev, clip_model=load_clip(opts, dev), full_clip=True)  # ... unless asked
    assert full.text_encoder.clip_model.visual is not None and full.text_encoder.clip_model.token_embedding is not None
    full.text_encoder.load_state_dict(model.text_encoder.state_dict(), strict=False)
    full.text_encoder.prompt_table.data.copy_(model.text_encoder.prompt_table.data)
    with torch.no_grad():
        torch.testing.assert_close(full.encode_text(), model.encode_text())
    model.train()
    assert not model.text_encoder.clip_model.training
    B, T = 4, 33
    out = model(features(B, T)[..., : opts.feature_size].to(dev))
    assert out.text_features.shape == (len(phrases) + 1, model.clip_dim)
    total, _ = losses.PECRLoss(opts)(out, _labels(B, 3).to(dev), torch.randn(B, T, model.clip_dim).to(dev))
    total.backward()
    clip_params = dict(model.text_encoder.clip_model.named_parameters())
    assert clip_params and all(p.grad is None and not p.requires_grad for p in clip_params.values())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert [n for n in trainable if n.startswith("text_encoder.")] == ["text_encoder.prompt_table"]
    for name, p in model.named_parameters():
        if p.requires_grad and ".decoder." not in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.slow
def test_full_shape_forward_backward_random_rn50(clip_vocab):
    """THUMOS14 defaults: batch 10, T 320, 2048-d features, RN50-sized CLIP text tower (random)."""
    opts = parse_args(["--clip-backbone", "random-RN50", "--device", "cpu", "--clip-vocab", str(clip_vocab)])
    phrases = ["baseball pitch", "basketball dunk", "billiards", "clean and jerk", "cliff diving",
               "cricket bowling", "cricket shot", "diving", "frisbee catch", "golf swing", "hammer throw",
               "high jump", "javelin throw", "long jump", "pole vault", "shot put", "soccer penalty",
               "tennis swing", "throw discus", "volleyball spiking"]
    model = build_model(opts, phrases, "cpu").train()
    assert model.clip_dim == 1024
    B, T = opts.batch_size, opts.max_seqlen
    g = torch.Generator().manual_seed(0)
    out = model(torch.randn(B, T, 2048, generator=g), generator=g)
    assert out.cas.shape == (10, 320, 21) and out.mu.shape == (10, 320, 1024)
    total, terms = losses.PECRLoss(opts)(out, _labels(B, 20), torch.randn(B, T, 1024, generator=g), generator=g)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in terms.values())
    total.backward()
    assert model.text_encoder.prompt_table.grad.abs().sum() > 0
    assert model.adapter.fc_var.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text_encoder.clip_model.parameters())
