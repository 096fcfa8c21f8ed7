"""Proposals (docs/method.md §5): grouping, outer-inner contrast, soft-NMS, the full pipeline against a
naive loop version, and the THUMOS14 ambiguous-region filter on the real file."""
import math

import numpy as np
import pandas as pd
import pytest

from eval.proposals import (ProposalConfig, filter_ambiguous, group_runs, load_ambiguous, minmax_normalise,
                            outer_inner_contrast, predicted_classes, soft_nms, to_seconds, video_class_scores,
                            video_proposals)
from utils.errors import PECRError


# ----------------------------------------------------------------------------- naive reference

def naive_groups(values, thr):
    """Runs of consecutive indices with value > thr, as lists of indices."""
    groups = []
    for t, v in enumerate(values):
        if v > thr:
            if groups and groups[-1][-1] == t - 1:
                groups[-1].append(t)
            else:
                groups.append([t])
    return groups


def naive_oic(values, group, margin):
    T, s, e, n = len(values), group[0], group[-1], len(group)
    inner = np.mean([values[t] for t in group])
    left, right = max(0, int(s - margin * n)), min(T - 1, int(e + margin * n))
    outside = list(range(left, s)) + list(range(e + 1, right + 1))
    outer = np.mean([values[t] for t in outside]) if outside else 0.0
    return inner - outer


def naive_soft_nms(dets, sigma):
    """dets: list of [start, end, score, tag]; the release's loop with swap and drop."""
    dets = [list(d) for d in dets]
    kept = []
    while dets:
        j = max(range(len(dets)), key=lambda i: (dets[i][2], -i))  # first maximum
        dets[0], dets[j] = dets[j], dets[0]
        top = dets.pop(0)
        kept.append(top)
        for d in dets:
            inter = max(min(top[1], d[1]) - max(top[0], d[0]) + 1, 0.0)
            iou = inter / ((top[1] - top[0] + 1) + (d[1] - d[0] + 1) - inter)
            d[2] *= float(np.exp(np.array([-(iou * iou) / sigma]))[0])
    return kept


def naive_video_proposals(cas, att, cfg):
    T, C = cas.shape[0], cas.shape[1] - 1
    E = (cas * att[:, None]).astype(np.float64)
    k = max(1, T // cfg.test_topk)
    pooled = np.array([np.mean(sorted(E[:, c], reverse=True)[:k]) for c in range(C + 1)])
    p = np.exp(pooled - pooled.max())
    p = (p / p.sum())[:C]
    pred = [c for c in range(C) if p[c] >= cfg.vid_thresh] or [int(np.argmax(p))]
    norm = {}
    for c in pred:
        lo, hi = E[:, c].min(), E[:, c].max()
        norm[c] = (E[:, c] - lo) / (hi - lo) if hi > lo else np.zeros(T)
    proposals = {}
    families = [(cfg.cas_thresholds, lambda c: norm[c], lambda c: norm[c]),
                (cfg.act_thresholds, lambda c: att.astype(np.float64), lambda c: E[:, c])]
    for thresholds, group_seq, score_seq in families:
        for thr in thresholds:
            for c in pred:
                indices = np.where(group_seq(c) > thr)[0]
                if cfg.lone_first_snippet == "skip" and not indices.any():  # the release's test: [0] is "empty"
                    continue
                for g in naive_groups(group_seq(c), thr):
                    score = naive_oic(score_seq(c), g, cfg.oic_margin) + cfg.gamma_oic * p[c]
                    proposals.setdefault(c, []).append([g[0], g[-1] + 1, score, c])
    rows = []
    for c, dets in proposals.items():
        rows += [(c, int(s), int(e), score) for s, e, score, _ in naive_soft_nms(dets, cfg.nms_sigma)]
    return rows


def random_video(rng, T, C):
    cas = rng.normal(0, 3, (T, C + 1)).astype(np.float32)
    att = (1 / (1 + np.exp(-rng.normal(0, 2, T)))).astype(np.float32)
    if rng.random() < 0.3:
        cas[:, rng.integers(0, C)] = 1.5  # a constant column (then E is constant where A is)
        att[:] = rng.random() if rng.random() < 0.5 else att
    return cas, att


# ----------------------------------------------------------------------------- tests

def test_config_from_options():
    import options

    opts = options.parse_args(["--cas-num", "7", "--act-s", "0.2", "--nms-sigma", "0.5", "--test-topk", "8"])
    cfg = ProposalConfig.from_options(opts)
    assert (cfg.cas_num, cfg.act_s, cfg.nms_sigma, cfg.test_topk) == (7, 0.2, 0.5, 8)
    assert cfg.gamma_oic == 0.1 and cfg.vid_thresh == 0.2 and cfg.oic_margin == 0.25
    np.testing.assert_allclose(cfg.cas_thresholds, np.linspace(0, 0.95, 7))
    np.testing.assert_allclose(ProposalConfig().act_thresholds, np.linspace(0.1, 0.95, 20))


def test_video_class_scores_by_hand():
    cas = np.array([[1, 0], [3, 0], [2, 1], [0, 0]], dtype=np.float64)
    att = np.array([1, 0.5, 1, 1])
    # E = [[1,0],[1.5,0],[2,1],[0,0]]; k = 4 // 2 = 2: class mean(2, 1.5) = 1.75, background mean(1, 0) = 0.5
    p = video_class_scores(cas, att, test_topk=2)
    assert p.shape == (1,)
    assert p[0] == pytest.approx(1 / (1 + math.exp(-1.25)))
    # k = max(1, 4 // 20) = 1: class 2, background 1
    assert video_class_scores(cas, att, test_topk=20)[0] == pytest.approx(1 / (1 + math.exp(-1.0)))


def test_predicted_classes():
    assert predicted_classes(np.array([0.1, 0.3, 0.2, 0.19]), 0.2).tolist() == [1, 2]
    assert predicted_classes(np.array([0.1, 0.15, 0.05]), 0.2).tolist() == [1]


def test_minmax_normalise_guards_constant_column():
    x = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 2.0]])
    np.testing.assert_array_equal(minmax_normalise(x), [[0, 0], [1, 0], [0.5, 0]])


def test_group_runs_by_hand():
    mask = np.array([[0, 1, 1, 0, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 1]], dtype=bool)
    row, start, end = group_runs(mask)
    assert row.tolist() == [0, 0, 1, 3, 3, 3]
    assert start.tolist() == [1, 4, 0, 0, 2, 4]
    assert end.tolist() == [3, 5, 5, 1, 3, 5]


def test_outer_inner_contrast_by_hand():
    v = np.array([[5, 1, 4, 1, 5, 9, 2, 6, 5, 3]], dtype=np.float64)
    cases = {
        (2, 6): (4 + 1 + 5 + 9) / 4 - (1 + 2) / 2,  # n=4: outside [1,2) and (5,6]
        (3, 6): (1 + 5 + 9) / 3 - 4,  # n=3: left trunc(2.25)=2 -> [2,3); right trunc(5.75)=5 -> empty
        (0, 2): (5 + 1) / 2 - 0.0,  # left max(0, trunc(-0.5)) = 0, right trunc(1.5) = 1: both empty
        (1, 9): np.mean([1, 4, 1, 5, 9, 2, 6, 5]) - (5 + 3) / 2,  # n=8: left clipped to 0, right min(9, 10)
        (9, 10): 3 - 5,  # n=1: left trunc(8.75) = 8 -> [8, 9); right clipped to T-1 = 9 -> empty
    }
    row = np.zeros(len(cases), dtype=np.int64)
    start = np.array([k[0] for k in cases])
    end = np.array([k[1] for k in cases])
    np.testing.assert_allclose(outer_inner_contrast(v, row, start, end, 0.25), list(cases.values()), atol=1e-12)


def test_soft_nms_by_hand():
    # stored boxes [s, e+1): A and B identical, C disjoint, D overlaps A by 6 with "+1" lengths 11
    start, end = np.array([0, 0, 20, 5]), np.array([10, 10, 30, 15])
    score = np.array([0.9, 0.8, 0.5, 0.7])
    order, decayed = soft_nms(start, end, score, sigma=0.3)
    w_ab, w_ad = math.exp(-1 / 0.3), math.exp(-(6 / 16) ** 2 / 0.3)
    # pick A; B -> 0.8 w_ab, D -> 0.7 w_ad = 0.435..., C unchanged 0.5 -> pick C, then D, then B
    assert order.tolist() == [0, 2, 3, 1]
    iou_db = 6 / 16  # D vs B, applied when D is picked
    np.testing.assert_allclose(decayed, [0.9, 0.5, 0.7 * w_ad, 0.8 * w_ab * math.exp(-iou_db ** 2 / 0.3)], rtol=1e-12)


def test_soft_nms_tie_order_follows_the_swap():
    # no overlaps: c (0.9) first; it swaps with a, leaving [b, a]; the tie 0.5/0.5 then picks b
    order, decayed = soft_nms(np.array([0, 10, 20]), np.array([1, 11, 21]), np.array([0.5, 0.5, 0.9]))
    assert order.tolist() == [2, 1, 0]
    np.testing.assert_array_equal(decayed, [0.9, 0.5, 0.5])


def test_soft_nms_matches_naive_loop():
    rng = np.random.default_rng(3)
    for _ in range(60):
        n = int(rng.integers(1, 40))
        s = rng.integers(0, 30, n)
        e = s + rng.integers(1, 10, n)
        score = np.round(rng.normal(0, 1, n), 1)  # ties
        order, decayed = soft_nms(s, e, score, sigma=0.3)
        want = naive_soft_nms([[float(a), float(b), float(c), i] for i, (a, b, c) in enumerate(zip(s, e, score))], 0.3)
        assert order.tolist() == [d[3] for d in want]
        np.testing.assert_allclose(decayed, [d[2] for d in want], rtol=1e-12, atol=1e-15)


def test_video_proposals_match_naive_pipeline():
    rng = np.random.default_rng(11)
    configs = [ProposalConfig(), ProposalConfig(test_topk=4, vid_thresh=0.05, cas_num=6, act_num=5, oic_margin=0.4,
                                                gamma_oic=0.3, nms_sigma=0.5),
               ProposalConfig(lone_first_snippet="keep")]
    for i in range(120):
        T, C = int(rng.integers(1, 50)), int(rng.integers(1, 5))
        cas, att = random_video(rng, T, C)
        if i % 4 == 0:  # snippet 0 stands out: at high thresholds it is the only one above
            cas[0] += 6
            att[0] = max(att[0], 0.99)
        cfg = configs[i % 3]
        got = video_proposals(cas, att, cfg, "vid")
        want = naive_video_proposals(cas, att, cfg)
        assert list(got.columns) == ["video-id", "label", "t-start", "t-end", "score"]
        assert (got["video-id"] == "vid").all()
        assert list(zip(got["label"], got["t-start"], got["t-end"])) == [(c, s, e) for c, s, e, _ in want]
        np.testing.assert_allclose(got["score"], [r[3] for r in want], rtol=1e-9, atol=1e-9)


def test_video_proposals_by_hand():
    # T=6, one class + background, A = 1: E = CAS. Video scores (k=1): softmax(4, 0) -> p = 0.982
    cas = np.array([[0, 0], [4, 0], [4, 0], [0, 0], [2, 0], [0, 0]], dtype=np.float64)
    att = np.ones(6)
    cfg = ProposalConfig(cas_s=0.0, cas_e=0.6, cas_num=2, act_num=0)  # thresholds 0 and 0.6
    df = video_proposals(cas, att, cfg, "v")
    p = 1 / (1 + math.exp(-4))
    # thr 0 (normalised [0,1,1,0,.5,0]): runs [1,3) and [4,5); thr 0.6: run [1,3)
    a = 1 - 0 + 0.1 * p  # [1,3): n=2, outside [0,1) and (2,3] -> mean(0, 0) = 0
    b = 0.5 - 0 + 0.1 * p  # [4,5): n=1, left trunc(3.75)=3 -> [3,4) = 0, right trunc(4.25)=4 -> empty
    # soft-NMS: pick first [1,3) (a); its duplicate decays by exp(-1/0.3); [4,5) is disjoint
    assert list(zip(df["t-start"], df["t-end"])) == [(1, 3), (4, 5), (1, 3)]
    np.testing.assert_allclose(df["score"], [a, b, a * math.exp(-1 / 0.3)])
    assert (df["label"] == 0).all()


def test_lone_first_snippet_quirk_by_hand():
    """Only snippet 0 above a threshold: the release (skip) makes no proposal there, keep makes [0, 1);
    a threshold where snippet 0 and others are above keeps [0, 1) either way. The skipped proposal
    also changes the soft-NMS decay of the others."""
    cas = np.array([[4, 0], [1, 0], [0, 0], [3, 0], [0, 0], [0, 0]], dtype=np.float64)
    att = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    cfg = ProposalConfig(cas_s=0.5, cas_e=0.8, cas_num=2, act_num=0)  # normalised [1, .25, 0, .75, 0, 0]
    skip = video_proposals(cas, att, cfg, "v")
    keep = video_proposals(cas, att, ProposalConfig(cas_s=0.5, cas_e=0.8, cas_num=2, act_num=0,
                                                    lone_first_snippet="keep"), "v")
    # thr 0.5: runs [0,1) and [3,4) (snippet 0 not alone); thr 0.8: only snippet 0 -> skipped / kept
    assert sorted(zip(skip["t-start"], skip["t-end"])) == [(0, 1), (3, 4)]
    assert sorted(zip(keep["t-start"], keep["t-end"])) == [(0, 1), (0, 1), (3, 4)]
    # [0,1) from thr 0.5 is decayed by its duplicate only under keep
    assert skip["score"].min() > keep["score"].min()
    with pytest.raises(PECRError, match="lone-first-snippet"):
        ProposalConfig(lone_first_snippet="maybe")


def test_video_proposals_input_checks():
    with pytest.raises(PECRError, match="CAS"):
        video_proposals(np.zeros((5, 3)), np.zeros(4), ProposalConfig(), "v")
    with pytest.raises(PECRError, match="video v7 holds NaN"):
        video_proposals(np.full((5, 3), np.nan), np.zeros(5), ProposalConfig(), "v7")
    out = video_proposals(np.zeros((1, 5, 3)), np.zeros((5, 1)), ProposalConfig(), "v")  # batch of one accepted
    assert len(out) == 0 or set(out.columns) == {"video-id", "label", "t-start", "t-end", "score"}


def naive_ambiguous_keep(row, regions):
    for a, b in regions.get(row["video-id"], []):
        if set(range(row["t-start"], row["t-end"])) & set(range(round(a * 25 / 16), round(b * 25 / 16))):
            return False
    return True


def test_ambiguous_filter_real_file(thumos_annotations):
    path = thumos_annotations / "Ambiguous_test.txt"
    amb = load_ambiguous(path)
    assert sum(len(v) for v in amb.values()) == 99 and len(amb) == 37
    np.testing.assert_allclose(amb["video_test_0000278"], [[0.0, 1.4], [95.7, 97.2]])
    # by hand: 95.7 s -> round(149.53) = 150, 97.2 s -> round(151.875) = 152, so snippets {150, 151}
    df = pd.DataFrame({"video-id": ["video_test_0000278"] * 3 + ["video_test_0000004"],
                       "label": 0, "t-start": [149, 151, 152, 1], "t-end": [150, 160, 160, 3], "score": 1.0})
    assert filter_ambiguous(df, amb)["t-start"].tolist() == [149, 152, 1]
    # against the naive set intersection on many random predictions over the real regions
    rng = np.random.default_rng(5)
    regions = {v: r.tolist() for v, r in amb.items()}
    vids = list(amb) + ["video_test_0000004"]
    s = rng.integers(0, 2000, 5000)
    df = pd.DataFrame({"video-id": rng.choice(vids, 5000), "label": rng.integers(0, 20, 5000), "t-start": s,
                       "t-end": s + rng.integers(0, 60, 5000), "score": rng.random(5000)})
    keep = [naive_ambiguous_keep(r, regions) for r in df.to_dict("records")]
    got = filter_ambiguous(df, amb)
    pd.testing.assert_frame_equal(got, df[keep].reset_index(drop=True))
    assert 0 < len(got) < len(df)


def test_ambiguous_half_to_even_and_errors(tmp_path):
    # 0.32 s -> 0.5 snippets -> 0 (half to even); 0.96 s -> 1.5 -> 2: region covers snippets {0, 1}
    path = tmp_path / "amb.txt"
    path.write_text("v  0.32 0.96\n\nw Diving 1.0 2.0\n")
    amb = load_ambiguous(path)
    df = pd.DataFrame({"video-id": ["v", "v", "w"], "label": 0, "t-start": [1, 2, 0], "t-end": [2, 3, 1], "score": 1.0})
    assert filter_ambiguous(df, amb)["t-start"].tolist() == [2, 0]
    path.write_text("v 0.32\n")
    with pytest.raises(PECRError, match=":1:"):
        load_ambiguous(path)
    with pytest.raises(PECRError, match="not found"):
        load_ambiguous(tmp_path / "missing.txt")


def test_to_seconds():
    df = pd.DataFrame({"video-id": ["v"], "label": [3], "t-start": [10], "t-end": [25], "score": [0.5]})
    out = to_seconds(df)
    assert out["t-start"].tolist() == [6.4] and out["t-end"].tolist() == [16.0]
    assert df["t-start"].tolist() == [10]  # input untouched
