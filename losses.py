"""PECR training losses (docs/method.md §3): video loss (CO2-Net) + probabilistic loss.

    criterion = PECRLoss(opts)
    total, terms = criterion(out, labels, clip_features)   # terms: weighted scalars for logging

Term names (each already multiplied by its weight, total = their sum):
``cls`` (α0), ``norm`` (α1), ``guide`` (α2), ``coactivity`` (α3), ``distill`` (α4),
``metric_action`` (α5), ``metric_background`` (α6), ``orthogonality`` (α7).
A term whose weight is 0 is not computed (reported as 0).

Snippet mining (docs/method.md §3.2) works on the attention A detached: the masks, medians and
selections carry no gradient (as in the release); gradients reach the model through the
(mu, v) of the selected snippets. Top-k selections use a stable descending sort, so among
equal scores the lowest snippet index wins (torch.topk's tie order is unspecified; this
matters for ``hard_mining=reference`` where most scores are exactly 0).
Everything is vectorised over videos, snippets and distribution pairs; nothing leaves the device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.errors import PECRError

METRICS = ("kl", "bhattacharyya", "mahalanobis", "euclidean")
TERMS = ("cls", "norm", "guide", "coactivity", "distill", "metric_action", "metric_background", "orthogonality")


# ----------------------------------------------------------------------------- video loss (§3.1)

def suppressed_cas(cas: Tensor, attention: Tensor, over: str = "class") -> Tensor:
    """S = A * (CAS - min CAS) + min CAS: cas (B, T, C+1), attention (B, T) -> (B, T, C+1).

    ``over="class"`` (default): the min over the C+1 classes of each snippet, what the release
    (and CO2-Net) computes. ``over="time"``: the min over time per video and class.
    """
    low = cas.min(dim=1 if over == "time" else 2, keepdim=True).values
    return attention.unsqueeze(-1) * (cas - low) + low


def mil_loss(cas: Tensor, labels: Tensor, topk: int, background: float) -> Tensor:
    """MIL top-k loss averaged over the batch.

    cas (B, T, C+1), labels (B, C); video logits = mean of the top max(1, T // topk) values over
    time; target = [labels, background] / (sum + 1e-4); loss = -sum target * log_softmax(logits).
    """
    k = max(1, cas.shape[1] // topk)
    logits = cas.topk(k, dim=1).values.mean(dim=1)
    target = torch.cat([labels, labels.new_full((labels.shape[0], 1), background)], dim=1)
    target = target / (target.sum(dim=1, keepdim=True) + 1e-4)
    return -(target * F.log_softmax(logits, dim=-1)).sum(dim=-1).mean()


def coactivity_loss(f0: Tensor, scores: Tensor, labels: Tensor, num_similar: int, margin: float = 0.5) -> Tensor:
    """Co-activity similarity loss over the pairs (2i, 2i+1), i < num_similar (docs/method.md §3.1).

    f0 (B, T, F), scores (B, T, C+1) (the suppressed CAS), labels (B, C) -> scalar.
    Pairs beyond the batch are skipped; when no pair shares a class (denominator 0) the loss is 0;
    a zero feature vector (L when T = 1) has cosine 0 (the release would give NaN).
    """
    B, T, _ = f0.shape
    n = min(num_similar, B // 2)
    if n == 0:
        return f0.sum() * 0
    h = torch.softmax(scores[: 2 * n], dim=1)                     # softmax over time, per class
    feats = f0[: 2 * n].transpose(1, 2)                           # (2n, F, T)
    high = feats @ h                                              # (2n, F, C+1)
    low = feats @ (1 - h) / max(T - 1, 1)
    y = torch.cat([labels[: 2 * n], labels.new_zeros(2 * n, 1)], dim=1)
    y_ab = y[0::2] * y[1::2]                                      # (n, C+1)
    cos = lambda u, v: (u * v).sum(1) / (u.norm(dim=1) * v.norm(dim=1)).clamp_min(1e-12)
    d1 = 1 - cos(high[0::2], high[1::2])
    d2 = 1 - cos(high[0::2], low[1::2])
    d3 = 1 - cos(high[1::2], low[0::2])
    total = (0.5 * F.relu(d1 - d2 + margin) * y_ab + 0.5 * F.relu(d1 - d3 + margin) * y_ab).sum()
    denom = y_ab.sum()
    return total / torch.where(denom > 0, denom, torch.ones_like(denom))


def norm_loss(att: Tensor, att_v: Tensor, att_f: Tensor) -> Tensor:
    """(mean A + mean A_V + mean A_F) / 3."""
    return (att.mean() + att_v.mean() + att_f.mean()) / 3


def guide_loss(att: Tensor, att_v: Tensor, att_f: Tensor, cas: Tensor) -> Tensor:
    """mean |1 - A - p_bg| averaged over the three attentions; p_bg = softmax over classes, last column."""
    p_bg = torch.softmax(cas, dim=-1)[..., -1]
    return sum((1 - a - p_bg).abs().mean() for a in (att, att_v, att_f)) / 3


# ----------------------------------------------------------------------------- probabilistic loss (§3.2)

def distillation_loss(mu: Tensor, clip_features: Tensor) -> Tensor:
    """-log mean_{b,t} (cos(mu, c) + 1) / 2: mu, clip_features (B, T, D)."""
    c = clip_features.detach()                                   # saved for backward as is: no copy
    cos = (mu * c).sum(-1) / (mu.norm(dim=-1) * c.norm(dim=-1)).clamp_min(1e-8)
    s = (cos + 1) / 2
    return -torch.log(s.mean())


def orthogonality_loss(text: Tensor) -> Tensor:
    """|| W_hat stopgrad(W_hat)^T - I ||_F (Frobenius norm, not squared): text (C+1, D)."""
    w = F.normalize(text, dim=-1)
    gram = w @ w.detach().t()
    return torch.linalg.norm(gram - torch.eye(len(w), device=w.device, dtype=w.dtype))


def numpy_median(x: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """np.median: the mean of the two middle values for an even count (torch.median takes the lower)."""
    s = x.sort(dim=dim).values
    n = x.shape[dim]
    med = s.narrow(dim, (n - 1) // 2, 1)
    if n % 2 == 0:
        med = (med + s.narrow(dim, n // 2, 1)) / 2
    return med if keepdim else med.squeeze(dim)


def dilate(mask: Tensor, width: int) -> Tensor:
    """scipy.ndimage.binary_dilation(mask, structure=np.ones((1, width))) on a (B, T) {0,1} float mask.

    scipy reflects the structure for dilation: out[t] = max(mask[t - (width-1-width//2) .. t + width//2]),
    zeros outside.
    """
    left, right = width - 1 - width // 2, width // 2
    padded = F.pad(mask.unsqueeze(1), (left, right), value=0.0)
    return F.max_pool1d(padded, width, stride=1).squeeze(1)


def erode(mask: Tensor, width: int) -> Tensor:
    """scipy.ndimage.binary_erosion(mask, structure=np.ones((1, width))), border_value=0.

    out[t] = min(mask[t - width//2 .. t + width-1-width//2]), zeros outside (so the ends erode).
    """
    left, right = width // 2, width - 1 - width // 2
    padded = F.pad(1 - mask.unsqueeze(1), (left, right), value=1.0)
    return 1 - F.max_pool1d(padded, width, stride=1).squeeze(1)


def topk_indices(scores: Tensor, k: int) -> Tensor:
    """Indices (B, k) of the k largest scores per row; ties -> lowest index first (stable sort)."""
    return scores.sort(dim=-1, descending=True, stable=True).indices[..., : min(k, scores.shape[-1])]


@dataclass
class Mined:
    """Snippet indices (B, k) selected by :func:`mine_snippets`."""

    easy_action: Tensor
    easy_background: Tensor
    hard_action: Tensor
    hard_background: Tensor


def mining_mask(shape: tuple[int, int], p: float, device=None, generator: torch.Generator | None = None) -> Tensor:
    """The easy-mining dropout mask: dropout(ones) in train mode, values 0 or 1/(1-p)."""
    if p >= 1:
        return torch.zeros(shape, device=device)
    keep = torch.empty(shape, device=device).bernoulli_(1 - p, generator=generator)
    return keep / (1 - p)


def mine_snippets(attention: Tensor, k_easy: int, k_hard: int, width_M: int, width_m: int,
                  mode: str = "reference", dropout: float = 0.6, mask: Tensor | None = None,
                  generator: torch.Generator | None = None) -> Mined:
    """Easy / hard action and background snippets from the attention A (B, T) (docs/method.md §3.2, after CoLA).

    easy: one dropout ``mask`` (B, T) (drawn from ``generator`` when not given) shared by
    easy action = top k_easy of A*mask and easy background = top k_easy of (max_t A - A)*mask.
    hard: bin = A > per-video median (numpy's); reference: inner = erode(bin, m) - erode(bin, M),
    outer = dilate(bin, M) - dilate(bin, m) (values in {0, -1} when M < m, as released); ring: the
    larger width minus the smaller, element-wise ({0, 1} masks). hard action = top k_hard of
    A*inner, hard background = top k_hard of A*outer. Ties -> lowest index. No gradient.
    """
    a = attention.detach()
    if mask is None:
        mask = mining_mask(a.shape, dropout, a.device, generator)
    mask = mask.to(a.dtype)
    easy_action = topk_indices(a * mask, k_easy)
    easy_background = topk_indices((a.max(dim=1, keepdim=True).values - a) * mask, k_easy)
    binary = (a > numpy_median(a, dim=1, keepdim=True)).to(a.dtype)
    if mode == "reference":
        inner = erode(binary, width_m) - erode(binary, width_M)
        outer = dilate(binary, width_M) - dilate(binary, width_m)
    elif mode == "ring":
        small, large = sorted((width_M, width_m))
        inner = erode(binary, small) - erode(binary, large)
        outer = dilate(binary, large) - dilate(binary, small)
    else:
        raise PECRError(f"unknown hard mining mode {mode!r}; use --hard-mining reference or ring")
    return Mined(easy_action, easy_background, topk_indices(a * inner, k_hard), topk_indices(a * outer, k_hard))


def gather(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, T, D), idx (B, k) -> (B, k, D)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def pairwise_distance(mu_q: Tensor, var_q: Tensor, mu_k: Tensor, var_k: Tensor, metric: str = "kl",
                      var_eps: float = 1e-5) -> Tensor:
    """d(q, k) for every query/key pair of diagonal Gaussians: (B, q, D) x (B, k, D) -> (B, q, k).

    sigma^2 = v + var_eps; kl = KL(q || k); bhattacharyya as released; mahalanobis uses
    2 / (v_q + v_k + var_eps). The per-dimension pair terms (B, q, k, D) are formed by
    broadcasting (1 M floats at the defaults: 10 x 5 x 20 x 1024) and each dimension's whole
    contribution is summed at once: the matrix-product expansion of KL (sum mu^2/s - 2 mu.mu/s ...)
    and separately summed log-determinants cancel catastrophically in float32 when sigma^2 = 1e-5
    (v = 0 after the ReLU), errors ~1e-4 relative, so they are not used.
    """
    diff2 = (mu_q.unsqueeze(2) - mu_k.unsqueeze(1)) ** 2             # (B, q, k, D)
    if metric == "kl":
        s_q, s_k = (var_q + var_eps).unsqueeze(2), (var_k + var_eps).unsqueeze(1)
        ratio = s_q / s_k
        return 0.5 * (diff2 / s_k + ratio - 1 - ratio.log()).sum(-1)
    if metric == "bhattacharyya":
        s_q, s_k = (var_q + var_eps).unsqueeze(2), (var_k + var_eps).unsqueeze(1)
        s_sum = s_q + s_k
        return (diff2 * 2 / s_sum / 8 + 0.5 * (s_sum / (2 * s_q * s_k)).log()).sum(-1)
    if metric == "mahalanobis":
        return (diff2 * 2 / (var_q.unsqueeze(2) + var_k.unsqueeze(1) + var_eps)).sum(-1)
    raise PECRError(f"unknown metric {metric!r}; use --metric {' | '.join(METRICS)}")


def distribution_similarity(mu_q: Tensor, var_q: Tensor, mu_k: Tensor, var_k: Tensor, metric: str = "kl",
                            var_eps: float = 1e-5) -> Tensor:
    """Set similarity per video (B,): mean over (q, k) pairs of 1 / (1 + d(q, k)).

    euclidean: d = mean pairwise |mu_q - mu_k| + mean pairwise |v_q - v_k| over the whole sets,
    sim = 1 / (1 + d) (the release uses d itself, which makes log(1 - sim) NaN for d > 1).
    """
    if metric == "euclidean":
        dist = lambda a, b: torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").mean(dim=(1, 2))
        return 1 / (1 + dist(mu_q, mu_k) + dist(var_q, var_k))
    return (1 / (1 + pairwise_distance(mu_q, var_q, mu_k, var_k, metric, var_eps))).mean(dim=(1, 2))


def metric_learning_loss(query: tuple[Tensor, Tensor], positive: tuple[Tensor, Tensor],
                         negative: tuple[Tensor, Tensor], metric: str = "kl", var_eps: float = 1e-5) -> Tensor:
    """-[log sim(Q, P) + log(1 - sim(Q, N))] averaged over the batch; each set = (mu, v), (B, k, D)."""
    pos = distribution_similarity(*query, *positive, metric=metric, var_eps=var_eps)
    neg = distribution_similarity(*query, *negative, metric=metric, var_eps=var_eps)
    return -(torch.log(pos) + torch.log(1 - neg)).mean()


# ----------------------------------------------------------------------------- total

class PECRLoss:
    """Total training loss of docs/method.md §3 from a :class:`model.PECROutput` (training form).

    __call__(out, labels (B, C), clip_features (B, T, D), generator=None, mining_mask=None)
    -> (total scalar, {name: weighted scalar}). ``generator`` / ``mining_mask`` fix the easy-mining
    dropout mask (otherwise drawn from the global RNG, like the release's dropout layer).
    """

    def __init__(self, opts):
        if opts.suppress_min not in ("time", "class"):
            raise PECRError(f"unknown --suppress-min {opts.suppress_min!r}; use time or class")
        if opts.metric not in METRICS:
            raise PECRError(f"unknown metric {opts.metric!r}; use --metric {' | '.join(METRICS)}")
        self.weights = {"cls": opts.alpha0, "norm": opts.alpha1, "guide": opts.alpha2, "coactivity": opts.alpha3,
                        "distill": opts.alpha4, "metric_action": opts.alpha5, "metric_background": opts.alpha6,
                        "orthogonality": opts.alpha7}
        self.opts = opts

    def __call__(self, out, labels: Tensor, clip_features: Tensor, generator: torch.Generator | None = None,
                 mining_mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        o, w = self.opts, self.weights
        if clip_features.shape != out.mu.shape:
            raise PECRError(f"CLIP features {tuple(clip_features.shape)} do not match the model's mu "
                            f"{tuple(out.mu.shape)}: check the CLIP feature folder / --clip-backbone")
        zero = out.cas.new_zeros(())
        terms = {name: zero for name in TERMS}
        supp = suppressed_cas(out.cas, out.attention, o.suppress_min)
        if w["cls"]:
            terms["cls"] = w["cls"] * (mil_loss(out.cas, labels, o.train_topk, 1.0)
                                       + mil_loss(supp, labels, o.train_topk, 0.0))
        if w["norm"]:
            terms["norm"] = w["norm"] * norm_loss(out.attention, out.attention_v, out.attention_f)
        if w["guide"]:
            terms["guide"] = w["guide"] * guide_loss(out.attention, out.attention_v, out.attention_f, out.cas)
        if w["coactivity"]:
            terms["coactivity"] = w["coactivity"] * coactivity_loss(out.f0, supp, labels, o.num_similar,
                                                                    o.coactivity_margin)
        if w["distill"]:
            terms["distill"] = w["distill"] * distillation_loss(out.mu, clip_features)
        if w["metric_action"] or w["metric_background"]:
            mined = mine_snippets(out.attention, o.k_easy, o.k_hard, o.mining_M, o.mining_m, o.hard_mining,
                                  o.mining_dropout, mask=mining_mask, generator=generator)
            # one gather per tensor (one scatter-add in backward instead of four)
            sets = (mined.easy_action, mined.easy_background, mined.hard_action, mined.hard_background)
            sizes = [i.shape[1] for i in sets]
            idx = torch.cat(sets, dim=1)
            mus, vs = gather(out.mu, idx).split(sizes, dim=1), gather(out.var, idx).split(sizes, dim=1)
            ea, eb, ha, hb = zip(mus, vs)
            if w["metric_action"]:
                terms["metric_action"] = w["metric_action"] * metric_learning_loss(ha, ea, eb, o.metric, o.var_eps)
            if w["metric_background"]:
                terms["metric_background"] = w["metric_background"] * metric_learning_loss(hb, eb, ea, o.metric,
                                                                                          o.var_eps)
        if w["orthogonality"]:
            terms["orthogonality"] = w["orthogonality"] * orthogonality_loss(out.text_features)
        return sum(terms.values()), terms
