"""Every loss term and metric against a straightforward loop implementation written here (float64
numpy), on random inputs of several shapes; mining against scipy's binary erosion/dilation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

import losses as L
from model import PECROutput
from options import parse_args
from utils.errors import PECRError

SHAPES = [(1, 37), (10, 53), (4, 101)]  # (B, T): T not a multiple of anything, batch of 1 and 10
RTOL = 1e-5


def close(actual, expected, rtol=RTOL, atol=0.0):
    actual = actual.detach().double().numpy() if torch.is_tensor(actual) else np.asarray(actual, float)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


def rand_labels(g: torch.Generator, B: int, C: int) -> torch.Tensor:
    y = (torch.rand(B, C, generator=g) < 0.3).float()
    y[torch.arange(B), torch.randint(C, (B,), generator=g)] = 1
    for i in range(0, B - 1, 2):        # similar pairs share a class, as the sampler guarantees
        c = int(torch.randint(C, (1,), generator=g))
        y[i, c] = y[i + 1, c] = 1
    return y


# ----------------------------------------------------------------------------- loop references

def ref_log_softmax(x):
    m = max(x)
    return [v - m - math.log(sum(math.exp(u - m) for u in x)) for v in x]


def ref_mil(cas, labels, topk, background):
    B, T, C1 = cas.shape
    k = max(1, T // topk)
    total = 0.0
    for b in range(B):
        logits = [float(np.mean(sorted(cas[b, :, c], reverse=True)[:k])) for c in range(C1)]
        target = list(labels[b]) + [background]
        s = sum(target) + 1e-4
        ls = ref_log_softmax(logits)
        total += -sum(t / s * l for t, l in zip(target, ls))
    return total / B


def ref_suppressed(cas, att, over="class"):
    out = np.empty_like(cas)
    B, T, C1 = cas.shape
    for b in range(B):
        for c in range(C1):
            for t in range(T):
                low = min(cas[b, :, c]) if over == "time" else min(cas[b, t, :])
                out[b, t, c] = att[b, t] * (cas[b, t, c] - low) + low
    return out


def ref_coactivity(f0, scores, labels, num_similar, margin):
    B, T, _ = f0.shape
    C1 = scores.shape[2]
    y = np.concatenate([labels, np.zeros((B, 1))], axis=1)
    def cos(u, v):  # a zero vector (L when T = 1) has cosine 0 with anything (the implementation's guard)
        nu = np.linalg.norm(u) * np.linalg.norm(v)
        return float(np.dot(u, v) / nu) if nu > 0 else 0.0
    loss, count = 0.0, 0.0
    for i in range(0, 2 * num_similar, 2):
        if i + 1 >= B:
            break
        H, Lo = [], []
        for j in (i, i + 1):
            e = np.exp(scores[j] - scores[j].max(0))
            h = e / e.sum(0)                                    # softmax over time
            H.append([sum(f0[j, t] * h[t, c] for t in range(T)) for c in range(C1)])
            Lo.append([sum(f0[j, t] * (1 - h[t, c]) for t in range(T)) / max(T - 1, 1) for c in range(C1)])
        for c in range(C1):
            yy = y[i, c] * y[i + 1, c]
            d1 = 1 - cos(H[0][c], H[1][c])
            d2 = 1 - cos(H[0][c], Lo[1][c])
            d3 = 1 - cos(H[1][c], Lo[0][c])
            loss += 0.5 * max(d1 - d2 + margin, 0) * yy + 0.5 * max(d1 - d3 + margin, 0) * yy
            count += yy
    return loss / count if count else 0.0


def ref_kl(mq, sq, mk, sk):
    return 0.5 * (np.sum((mk - mq) ** 2 / sk) + np.sum(np.log(sk)) - np.sum(np.log(sq)) + np.sum(sq / sk) - len(mq))


def ref_bhattacharyya(mq, sq, mk, sk):
    return (np.sum((mq - mk) ** 2 * 2 / (sq + sk)) / 8
            + 0.5 * (np.sum(np.log((sq + sk) / 2)) - np.sum(np.log(sq)) - np.sum(np.log(sk))))


def ref_pairwise(mu_q, v_q, mu_k, v_k, metric, eps=1e-5):
    B, nq, _ = mu_q.shape
    nk = mu_k.shape[1]
    d = np.zeros((B, nq, nk))
    for b in range(B):
        for i in range(nq):
            for j in range(nk):
                mq, mk = mu_q[b, i], mu_k[b, j]
                if metric == "kl":
                    d[b, i, j] = ref_kl(mq, v_q[b, i] + eps, mk, v_k[b, j] + eps)
                elif metric == "bhattacharyya":
                    d[b, i, j] = ref_bhattacharyya(mq, v_q[b, i] + eps, mk, v_k[b, j] + eps)
                else:
                    d[b, i, j] = np.sum((mq - mk) ** 2 * 2 / (v_q[b, i] + v_k[b, j] + eps))
    return d


def ref_similarity(mu_q, v_q, mu_k, v_k, metric, eps=1e-5):
    B, nq, _ = mu_q.shape
    nk = mu_k.shape[1]
    sims = []
    for b in range(B):
        if metric == "euclidean":
            dm = np.mean([np.linalg.norm(mu_q[b, i] - mu_k[b, j]) for i in range(nq) for j in range(nk)])
            dv = np.mean([np.linalg.norm(v_q[b, i] - v_k[b, j]) for i in range(nq) for j in range(nk)])
            sims.append(1 / (1 + dm + dv))
        else:
            d = ref_pairwise(mu_q[b:b + 1], v_q[b:b + 1], mu_k[b:b + 1], v_k[b:b + 1], metric, eps)[0]
            sims.append(np.mean(1 / (1 + d)))
    return np.array(sims)


def ref_metric_loss(q, p, n, metric, eps=1e-5):
    pos = ref_similarity(*q, *p, metric, eps)
    neg = ref_similarity(*q, *n, metric, eps)
    return float(np.mean(-(np.log(pos) + np.log(1 - neg))))


def ref_mining(att, mask, k_easy, k_hard, M, m, mode):
    """Brute force with numpy/scipy on the median-binarised attention."""
    A = att.astype(np.float32)
    order = lambda s, k: np.argsort(-s, axis=1, kind="stable")[:, :k]
    easy_a = order(A * mask, k_easy)
    easy_b = order((A.max(1, keepdims=True) - A) * mask, k_easy)
    binary = A > np.median(A, axis=1, keepdims=True)
    ero = lambda w: ndimage.binary_erosion(binary, structure=np.ones((1, w))).astype(np.float32)
    dil = lambda w: ndimage.binary_dilation(binary, structure=np.ones((1, w))).astype(np.float32)
    if mode == "reference":
        inner, outer = ero(m) - ero(M), dil(M) - dil(m)
    else:
        lo, hi = sorted((M, m))
        inner, outer = ero(lo) - ero(hi), dil(hi) - dil(lo)
    return easy_a, easy_b, order(A * inner, k_hard), order(A * outer, k_hard)


# ----------------------------------------------------------------------------- video loss

@pytest.mark.parametrize("B,T", SHAPES)
@pytest.mark.parametrize("background", [1.0, 0.0])
def test_mil_loss_matches_loop(B, T, background):
    g = torch.Generator().manual_seed(B * T)
    C = 6
    cas, labels = torch.randn(B, T, C + 1, generator=g) * 3, rand_labels(g, B, C)
    for topk in (7, 5, 1000):
        close(L.mil_loss(cas, labels, topk, background), ref_mil(cas.numpy(), labels.numpy(), topk, background))


@pytest.mark.parametrize("B,T", SHAPES)
def test_suppressed_cas_matches_loop(B, T):
    g = torch.Generator().manual_seed(T)
    cas, att = torch.randn(B, T, 5, generator=g), torch.rand(B, T, generator=g)
    close(L.suppressed_cas(cas, att), ref_suppressed(cas.numpy().astype(float), att.numpy().astype(float)),
          atol=1e-6)
    close(L.suppressed_cas(cas, att, "time"),
          ref_suppressed(cas.numpy().astype(float), att.numpy().astype(float), "time"), atol=1e-6)
    assert not torch.allclose(L.suppressed_cas(cas, att), L.suppressed_cas(cas, att, "time"))


@pytest.mark.parametrize("B,T", SHAPES + [(7, 1)])
def test_coactivity_matches_loop(B, T):
    g = torch.Generator().manual_seed(B + T)
    C, Fw = 5, 24
    f0 = torch.randn(B, T, Fw, generator=g)
    scores = torch.randn(B, T, C + 1, generator=g) * 2
    labels = rand_labels(g, B, C)
    for margin in (0.5, 2.0):
        close(L.coactivity_loss(f0, scores, labels, 3, margin),
              ref_coactivity(f0.double().numpy(), scores.double().numpy(), labels.numpy(), 3, margin), atol=1e-7)


def test_coactivity_without_shared_class_is_zero():
    f0, scores = torch.randn(4, 9, 8), torch.randn(4, 9, 4)
    labels = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]])
    assert L.coactivity_loss(f0, scores, labels, 3).item() == 0.0


@pytest.mark.parametrize("B,T", SHAPES)
def test_norm_and_guide_match_loop(B, T):
    g = torch.Generator().manual_seed(3 * T)
    att, av, af = (torch.rand(B, T, generator=g) for _ in range(3))
    cas = torch.randn(B, T, 8, generator=g)
    close(L.norm_loss(att, av, af), sum(float(np.mean(a.numpy())) for a in (att, av, af)) / 3)
    c = cas.double().numpy()
    total = 0.0
    for a in (att, av, af):
        vals = []
        for b in range(B):
            for t in range(T):
                e = np.exp(c[b, t] - c[b, t].max())
                vals.append(abs(1 - float(a[b, t]) - e[-1] / e.sum()))
        total += np.mean(vals)
    close(L.guide_loss(att, av, af, cas), total / 3)


# ----------------------------------------------------------------------------- probabilistic loss

@pytest.mark.parametrize("B,T", SHAPES)
def test_distillation_matches_loop(B, T):
    g = torch.Generator().manual_seed(5 * T)
    mu, c = torch.randn(B, T, 32, generator=g), torch.randn(B, T, 32, generator=g)
    m, cc = mu.double().numpy(), c.double().numpy()
    s = [(np.dot(m[b, t], cc[b, t]) / np.linalg.norm(m[b, t]) / np.linalg.norm(cc[b, t]) + 1) / 2
         for b in range(B) for t in range(T)]
    close(L.distillation_loss(mu, c), -math.log(np.mean(s)))


@pytest.mark.parametrize("rows", [2, 21, 101])
def test_orthogonality_matches_loop(rows):
    text = torch.randn(rows, 48, generator=torch.Generator().manual_seed(rows)).requires_grad_()
    w = text.detach().double().numpy()
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    total = sum((np.dot(w[i], w[j]) - (i == j)) ** 2 for i in range(rows) for j in range(rows))
    loss = L.orthogonality_loss(text)
    close(loss, math.sqrt(total))
    loss.backward()  # stop-gradient on the right factor: gradient equals d/dW of <W_hat, const>
    wh = torch.nn.functional.normalize(text.detach(), dim=-1).requires_grad_()
    const = wh.detach() @ wh.detach().t() - torch.eye(rows)
    # d||G||/dG = G/||G||, G = W_hat S^T - I  ->  dL/dW_hat = (G/||G||) S
    grad_what = (const / const.norm()) @ wh.detach()
    t2 = text.detach().clone().requires_grad_()
    torch.nn.functional.normalize(t2, dim=-1).backward(grad_what)
    torch.testing.assert_close(text.grad, t2.grad, rtol=1e-4, atol=1e-6)


def _gaussians(g, B, n, D, zeros=True):
    mu = torch.randn(B, n, D, generator=g)
    v = torch.randn(B, n, D, generator=g).abs() * 0.5 + 0.05
    if zeros:  # ReLU outputs: many exact zeros, sigma^2 = 1e-5
        v = v * (torch.rand(B, n, D, generator=g) > 0.3)
    return mu, v


@pytest.mark.parametrize("metric", ["kl", "bhattacharyya", "mahalanobis"])
@pytest.mark.parametrize("B,nq,nk,D", [(1, 5, 20, 16), (10, 3, 7, 33), (2, 1, 1, 128)])
@pytest.mark.parametrize("zeros", [False, True])
def test_pairwise_distance_matches_loop(metric, B, nq, nk, D, zeros):
    g = torch.Generator().manual_seed(B * nq * nk + D)
    (mq, vq), (mk, vk) = _gaussians(g, B, nq, D, zeros), _gaussians(g, B, nk, D, zeros)
    ref = ref_pairwise(*(x.double().numpy() for x in (mq, vq, mk, vk)), metric)
    close(L.pairwise_distance(mq, vq, mk, vk, metric), ref)                    # float32
    close(L.pairwise_distance(*(x.double() for x in (mq, vq, mk, vk)), metric), ref, rtol=1e-10)


@pytest.mark.parametrize("metric", L.METRICS)
@pytest.mark.parametrize("B,nq,nk,D", [(1, 5, 20, 16), (10, 5, 20, 64), (3, 2, 9, 7)])
def test_similarity_and_metric_loss_match_loop(metric, B, nq, nk, D):
    g = torch.Generator().manual_seed(B + nq + nk + D)
    q, p, n = (_gaussians(g, B, k, D, zeros=False) for k in (nq, nk, nk))
    # near-identical sets keep the similarities away from 0 so the test is informative
    p = (q[0].mean(1, keepdim=True) + 0.1 * p[0], p[1])
    npy = lambda s: tuple(x.double().numpy() for x in s)
    close(L.distribution_similarity(*q, *p, metric=metric), ref_similarity(*npy(q), *npy(p), metric))
    close(L.metric_learning_loss(q, p, n, metric), ref_metric_loss(npy(q), npy(p), npy(n), metric))


def test_kl_is_zero_for_identical_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    mu, v = _gaussians(g, 2, 4, 10)
    d = L.pairwise_distance(mu, v, mu, v, "kl")
    assert torch.allclose(torch.diagonal(d, dim1=1, dim2=2), torch.zeros(2, 4), atol=1e-5)
    assert (d + 1e-3 >= 0).all() and d.max() > 1


def test_euclidean_gradient_is_finite_for_identical_sets():
    mu = torch.randn(2, 3, 8, requires_grad=True)
    v = torch.rand(2, 3, 8, requires_grad=True)
    L.distribution_similarity(mu, v, mu, v, "euclidean").sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(v.grad).all()


def test_unknown_metric_raises():
    with pytest.raises(PECRError):
        L.pairwise_distance(torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2),
                            "cosine")


# ----------------------------------------------------------------------------- mining

@pytest.mark.parametrize("T", [1, 2, 7, 24, 37, 64, 320])
def test_numpy_median(T):
    x = torch.rand(5, T, generator=torch.Generator().manual_seed(T))
    np.testing.assert_array_equal(L.numpy_median(x, dim=1).numpy(), np.median(x.numpy(), axis=1))


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 8, 12, 24, 60])
def test_erode_dilate_match_scipy(width):
    g = torch.Generator().manual_seed(width)
    for T in (5, 37, 101):
        for density in (0.3, 0.5, 0.8):
            mask = (torch.rand(6, T, generator=g) < density).float()
            b = mask.numpy().astype(bool)
            st = np.ones((1, width))
            np.testing.assert_array_equal(L.erode(mask, width).numpy(), ndimage.binary_erosion(b, structure=st))
            np.testing.assert_array_equal(L.dilate(mask, width).numpy(), ndimage.binary_dilation(b, structure=st))


def test_topk_indices_ties_lowest_index_first():
    s = torch.tensor([[0.0, 0.5, 0.0, 0.5, -1.0, 0.0, 0.0]])
    assert L.topk_indices(s, 4).tolist() == [[1, 3, 0, 2]]
    assert L.topk_indices(s, 100).shape == (1, 7)


@pytest.mark.parametrize("mode", ["reference", "ring"])
@pytest.mark.parametrize("B,T,M,m", [(1, 37, 3, 24), (10, 320, 3, 24), (4, 60, 3, 12), (3, 53, 8, 4), (2, 101, 2, 5)])
def test_mining_matches_scipy_brute_force(mode, B, T, M, m):
    g = torch.Generator().manual_seed(B * T + M)
    # smooth-ish attention with plateaus: long above/below-median runs, plus exact ties
    att = torch.sigmoid(torch.randn(B, T, generator=g).cumsum(1) / 3)
    att = (att * 64).round() / 64
    mask = L.mining_mask((B, T), 0.6, generator=g)
    mined = L.mine_snippets(att, 20, 5, M, m, mode, mask=mask)
    ref = ref_mining(att.numpy(), mask.numpy(), 20, 5, M, m, mode)
    for got, exp in zip((mined.easy_action, mined.easy_background, mined.hard_action, mined.hard_background), ref):
        np.testing.assert_array_equal(got.numpy(), exp)


def test_reference_masks_are_nonpositive_and_ring_masks_binary():
    att = torch.sigmoid(torch.randn(3, 80, generator=torch.Generator().manual_seed(1)).cumsum(1))
    b = (att > L.numpy_median(att, 1, keepdim=True)).float()
    inner_ref = L.erode(b, 24) - L.erode(b, 3)
    assert set(inner_ref.unique().tolist()) <= {0.0, -1.0} and (inner_ref == -1).any()
    ring = L.erode(b, 3) - L.erode(b, 24)
    assert set(ring.unique().tolist()) <= {0.0, 1.0}


def test_mining_mask_values_and_generator():
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    m1, m2 = L.mining_mask((10, 320), 0.6, generator=g1), L.mining_mask((10, 320), 0.6, generator=g2)
    assert torch.equal(m1, m2)
    assert m1.unique().tolist() == pytest.approx([0.0, 1 / 0.4])
    assert abs((m1 > 0).float().mean().item() - 0.4) < 0.03
    a = torch.rand(10, 320)
    r1 = L.mine_snippets(a, 20, 5, 3, 24, generator=torch.Generator().manual_seed(3))
    r2 = L.mine_snippets(a, 20, 5, 3, 24, mask=L.mining_mask((10, 320), 0.6, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(r1.easy_action, r2.easy_action)


def test_mining_carries_no_gradient_to_attention():
    att = torch.rand(2, 40, requires_grad=True)
    mined = L.mine_snippets(att, 5, 3, 3, 8, generator=torch.Generator().manual_seed(0))
    assert not mined.easy_action.requires_grad and mined.hard_action.dtype == torch.long


# ----------------------------------------------------------------------------- total loss

def _fake_output(g, B, T, C, Fw, D, requires_grad=False):
    t = lambda *s: torch.randn(*s, generator=g)
    out = PECROutput(cas=t(B, T, C + 1) * 2, attention=torch.rand(B, T, generator=g),
                     attention_v=torch.rand(B, T, generator=g), attention_f=torch.rand(B, T, generator=g),
                     f0=t(B, T, Fw), f1=t(B, T, Fw), mu=t(B, T, D), var=torch.relu(t(B, T, D)) * 0.3,
                     text_features=t(C + 1, D))
    if requires_grad:
        for name in ("cas", "mu", "var", "f0", "text_features", "attention"):
            getattr(out, name).requires_grad_()
    return out


@pytest.mark.parametrize("B,T", [(1, 37), (10, 53)])
@pytest.mark.parametrize("metric,mode", [("kl", "reference"), ("bhattacharyya", "ring"), ("euclidean", "ring"),
                                         ("mahalanobis", "reference")])
def test_total_loss_matches_loop(B, T, metric, mode):
    opts = parse_args(["--metric", metric, "--hard-mining", mode, "--k-easy", "6", "--k-hard", "3",
                       "--mining-m", "9"])
    g = torch.Generator().manual_seed(B * T)
    C, Fw, D = 4, 16, 12
    out, labels = _fake_output(g, B, T, C, Fw, D), rand_labels(g, B, C)
    clip = torch.randn(B, T, D, generator=g)
    mask = L.mining_mask((B, T), opts.mining_dropout, generator=g)
    total, terms = L.PECRLoss(opts)(out, labels, clip, mining_mask=mask)
    assert set(terms) == set(L.TERMS)

    n = lambda x: x.double().numpy()
    cas, att = n(out.cas), n(out.attention)
    supp = ref_suppressed(cas, att)
    y = labels.numpy()
    expected = {
        "cls": opts.alpha0 * (ref_mil(cas, y, opts.train_topk, 1.0) + ref_mil(supp, y, opts.train_topk, 0.0)),
        "coactivity": opts.alpha3 * ref_coactivity(n(out.f0), supp, y, opts.num_similar, opts.coactivity_margin),
        "norm": opts.alpha1 * float(np.mean([att.mean(), n(out.attention_v).mean(), n(out.attention_f).mean()])),
    }
    ea, eb, ha, hb = ref_mining(out.attention.numpy(), mask.numpy(), 6, 3, opts.mining_M, 9, mode)
    pick = lambda idx: (np.take_along_axis(n(out.mu), idx[..., None], 1), np.take_along_axis(n(out.var), idx[..., None], 1))
    expected["metric_action"] = opts.alpha5 * ref_metric_loss(pick(ha), pick(ea), pick(eb), metric)
    expected["metric_background"] = opts.alpha6 * ref_metric_loss(pick(hb), pick(eb), pick(ea), metric)
    p_bg = np.exp(cas - cas.max(-1, keepdims=True))
    p_bg = p_bg[..., -1] / p_bg.sum(-1)
    expected["guide"] = opts.alpha2 * np.mean([np.abs(1 - a - p_bg).mean() for a in (att, n(out.attention_v), n(out.attention_f))])
    mu, c = n(out.mu), clip.double().numpy()
    cos = (mu * c).sum(-1) / np.linalg.norm(mu, axis=-1) / np.linalg.norm(c, axis=-1)
    expected["distill"] = -opts.alpha4 * math.log(((cos + 1) / 2).mean())
    w = n(out.text_features)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    expected["orthogonality"] = opts.alpha7 * np.linalg.norm(w @ w.T - np.eye(len(w)))
    assert set(expected) == set(L.TERMS)
    for name, value in expected.items():
        close(terms[name], value, atol=1e-7)
    close(total, sum(expected.values()), rtol=1e-6)


def test_suppress_min_default_is_release_class_min_and_time_is_an_option():
    assert parse_args([]).suppress_min == "class"
    opts = parse_args(["--suppress-min", "time", "--k-easy", "6", "--k-hard", "3", "--mining-m", "9"])
    g = torch.Generator().manual_seed(11)
    B, T, C = 6, 41, 4
    out, labels = _fake_output(g, B, T, C, 16, 12), rand_labels(g, B, C)
    _, terms = L.PECRLoss(opts)(out, labels, torch.randn(B, T, 12, generator=g))
    cas, att, y = out.cas.double().numpy(), out.attention.double().numpy(), labels.numpy()
    supp = ref_suppressed(cas, att, "time")
    close(terms["cls"], opts.alpha0 * (ref_mil(cas, y, opts.train_topk, 1.0) + ref_mil(supp, y, opts.train_topk, 0.0)),
          atol=1e-7)
    close(terms["coactivity"], opts.alpha3 * ref_coactivity(out.f0.double().numpy(), supp, y, opts.num_similar,
                                                            opts.coactivity_margin), atol=1e-7)


def test_zero_weight_terms_are_skipped_and_gradients_flow():
    opts = parse_args(["--alpha3", "0", "--k-easy", "4", "--k-hard", "2", "--mining-m", "6"])
    g = torch.Generator().manual_seed(0)
    out = _fake_output(g, 6, 30, 3, 8, 10, requires_grad=True)
    total, terms = L.PECRLoss(opts)(out, rand_labels(g, 6, 3), torch.randn(6, 30, 10, generator=g), generator=g)
    assert terms["coactivity"].item() == 0.0
    total.backward()
    for name in ("cas", "mu", "var", "text_features", "attention"):
        assert getattr(out, name).grad is not None and getattr(out, name).grad.abs().sum() > 0, name
    assert out.f0.grad is None  # only the co-activity loss uses F0


def test_clip_feature_shape_mismatch_raises():
    g = torch.Generator().manual_seed(0)
    out = _fake_output(g, 2, 10, 3, 8, 10)
    with pytest.raises(PECRError, match="CLIP features"):
        L.PECRLoss(parse_args([]))(out, rand_labels(g, 2, 3), torch.randn(2, 10, 11))
