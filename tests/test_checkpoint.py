"""Checkpoints: model state without frozen CLIP, atomic round trip, clear errors, release-name mapping."""
from __future__ import annotations

import argparse
import random

import numpy as np
import pytest
import torch

from model import PECR
from tests.test_model import FakeText
from utils import checkpoint as ck
from utils.errors import PECRError
from utils.seed import rng_state

C, FEAT, D = 5, 64, 16


def make(seed=0, classes=C, feat=FEAT, dim=D) -> PECR:
    torch.manual_seed(seed)
    m = PECR(classes, feat, dim, FakeText(rows=classes + 1, dim=dim), test_sampling="mean")
    with torch.no_grad():  # make the text side differ between seeds too
        m.text_encoder.prompt_table.normal_()
    return m.eval()


def assert_same_params(a: PECR, b: PECR, skip_clip=True):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if not (skip_clip and k.startswith(ck.CLIP_PREFIX)):
            assert torch.equal(sa[k], sb[k]), k


def test_model_state_leaves_out_frozen_clip():
    m = make()
    state = ck.model_state(m)
    keys = set(state["state_dict"])
    assert "text_encoder.prompt_table" in keys and "adapter.fc_var.weight" in keys
    assert not any(k.startswith(ck.CLIP_PREFIX) for k in keys)
    assert keys == {k for k in m.state_dict() if not k.startswith(ck.CLIP_PREFIX)}
    assert state["config"] == {"num_classes": C, "feature_size": FEAT, "clip_dim": D, "clip_backbone": None,
                               "includes_clip": False}
    full = ck.model_state(m, include_clip=True)
    assert set(full["state_dict"]) == set(m.state_dict())


def test_round_trip_restores_model(tmp_path):
    a, b = make(0), make(1)
    x = torch.randn(2, 11, FEAT)
    path = tmp_path / "run" / "best.pt"
    random.seed(1), np.random.seed(1)
    ck.save_checkpoint(path, {"model": ck.model_state(a), "iteration": 42, "rng": rng_state(),
                              "optimizer": torch.optim.Adam(a.parameters()).state_dict()})
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]   # no temp files left
    data = ck.load_checkpoint(path)
    assert data["iteration"] == 42 and data["format"] == ck.FORMAT
    assert isinstance(data["rng"]["numpy"][1], np.ndarray)                # RNG states load safely
    assert ck.load_model_state(b, data["model"]) == {"missing": [], "unexpected": []}
    assert_same_params(a, b)
    with torch.no_grad():
        assert torch.equal(a(x).cas, b(x).cas)


def test_save_is_atomic(tmp_path):
    path = tmp_path / "ckpt.pt"
    ck.save_checkpoint(path, {"model": ck.model_state(make()), "iteration": 1})
    before = path.read_bytes()
    with pytest.raises(Exception):
        ck.save_checkpoint(path, {"iteration": 2, "bad": lambda: None})     # not picklable: fails mid-write
    assert path.read_bytes() == before and len(list(tmp_path.iterdir())) == 1


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(PECRError, match="not found"):
        ck.load_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(PECRError, match="corrupt"):
        ck.load_checkpoint(junk)
    good = tmp_path / "good.pt"
    ck.save_checkpoint(good, {"model": ck.model_state(make())})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(PECRError, match="corrupt"):
        ck.load_checkpoint(truncated)
    bare = tmp_path / "bare.pt"
    torch.save(make().state_dict(), bare)
    with pytest.raises(PECRError, match="not a PECR checkpoint.*load_release_checkpoint"):
        ck.load_checkpoint(bare)
    pickled = tmp_path / "namespace.pt"
    torch.save({"format": ck.FORMAT, "opts": argparse.Namespace(a=1)}, pickled)
    with pytest.raises(PECRError, match="trusted=True"):
        ck.load_checkpoint(pickled)
    assert ck.load_checkpoint(pickled, trusted=True)["opts"].a == 1
    other = tmp_path / "list.pt"
    torch.save([1, 2, 3], other)
    with pytest.raises(PECRError, match="not a PECR checkpoint"):
        ck.load_checkpoint(other)


def test_load_model_state_mismatches():
    state = ck.model_state(make(classes=20))
    with pytest.raises(PECRError, match="checkpoint has 20 classes, dataset has 100: trained on another dataset"):
        ck.load_model_state(make(classes=100), state)
    with pytest.raises(PECRError, match="128-d features.*--feature-size"):
        ck.load_model_state(make(), ck.model_state(make(feat=128)))
    with pytest.raises(PECRError, match="CLIP width 32.*--clip-backbone"):
        ck.load_model_state(make(), ck.model_state(make(dim=32)))
    bare = ck.model_state(make(feat=128))["state_dict"]                    # no config: shapes still checked
    with pytest.raises(PECRError, match="shape"):
        ck.load_model_state(make(), bare)
    partial = dict(ck.model_state(make())["state_dict"])
    partial.pop("fusion2.bias")
    with pytest.raises(PECRError, match="missing"):
        ck.load_model_state(make(), partial)
    assert ck.load_model_state(make(), partial, strict=False)["missing"] == ["fusion2.bias"]
    with_clip = ck.model_state(make(), include_clip=True)      # a trimmed model skips CLIP keys it lacks
    with_clip["state_dict"][ck.CLIP_PREFIX + "visual.conv1.weight"] = torch.zeros(1)
    assert ck.load_model_state(make(), with_clip) == {"missing": [], "unexpected": []}


# ----------------------------------------------------------------------------- release names

def release_state_dict(m: PECR) -> dict[str, torch.Tensor]:
    """A synthetic checkpoint written with the release's parameter names (inverse of the table)."""
    ours = m.state_dict()
    inverse = {v: k for k, v in ck._release_table().items()}
    sd = {inverse[k]: v.clone() for k, v in ours.items() if k in inverse}
    sd.update({"clipmodel." + k[len(ck.CLIP_PREFIX):]: v.clone() for k, v in ours.items() if k.startswith(ck.CLIP_PREFIX)})
    sd["fc_clip.weight"], sd["fc_clip.bias"] = torch.randn(D, FEAT), torch.randn(D)
    sd["text_prob_encoder.fc_mean.weight"] = torch.randn(D, D)
    sd["snippet_prob_encoder.layer_norm.weight"] = torch.randn(FEAT)
    return sd


def test_release_table_covers_every_trainable_tensor():
    m = make()
    targets = set(ck._release_table().values())
    assert targets == {k for k in m.state_dict() if not k.startswith(ck.CLIP_PREFIX)}
    assert ck._release_table()["snippet_prob_encoder.fc_mean.weight"] == "adapter.fc_mean.weight"
    assert ck._release_table()["embedding.weight"] == "text_encoder.prompt_table"
    assert ck._release_table()["vAttn.attention.5.bias"] == "consensus_v.attn_conv3.bias"
    assert ck._release_table()["fusion2.0.weight"] == "fusion2.weight"
    assert ck._release_table()["fAttn.AE_e.0.weight"] == "consensus_f.encoder.weight"
    assert ck._release_table()["vAttn.AE_d.0.bias"] == "consensus_v.decoder.bias"
    assert ck._release_table()["vAttn.channel_conv.0.weight"] == "consensus_v.global_conv.weight"
    assert ck._release_table()["vAttn.bit_wise_attn.0.weight"] == "consensus_v.local_conv.weight"


def test_release_checkpoint_loads_with_mapping_report(tmp_path):
    src, dst = make(0), make(1)
    dst.text_encoder.clip_model.weight.data += 1
    sd = release_state_dict(src)
    path = tmp_path / "release.pkl"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)            # DataParallel prefix
    report = ck.load_release_checkpoint(dst, path)
    n_clip = sum(k.startswith("clipmodel.") for k in sd)
    assert len(report.mapped) == len(ck._release_table()) == 37
    assert sorted(report.ignored) == sorted([k for k in sd if k.startswith(("clipmodel.", "fc_clip.", "text_prob_encoder.",
                                                                            "snippet_prob_encoder.layer_norm."))])
    assert len(report.ignored) == n_clip + 4
    assert report.unexpected == [] and report.missing == []
    assert "37 mapped" in report.summary()
    assert_same_params(src, dst)
    assert not torch.equal(src.text_encoder.clip_model.weight, dst.text_encoder.clip_model.weight)


def test_release_checkpoint_partial_unknown_and_keep_clip(tmp_path):
    src, dst = make(0), make(1)
    dst.text_encoder.clip_model.weight.data += 1
    sd = release_state_dict(src)
    for key in [k for k in sd if ".AE_e.0." in k or ".AE_d.0." in k]:  # names the table does not know
        sd[key.replace("AE_e.0", "aux_enc.0").replace("AE_d.0", "aux_dec.0")] = sd.pop(key)
    path = tmp_path / "release.pkl"
    torch.save({"state_dict": sd}, path)
    report = ck.load_release_checkpoint(dst, path, keep_clip=True)
    assert len(report.unexpected) == 8 and all(".aux_" in k for k in report.unexpected)
    assert report.missing == sorted(f"consensus_{s}.{n}.{p}" for s in "vf" for n in ("decoder", "encoder")
                                    for p in ("bias", "weight"))
    assert torch.equal(src.text_encoder.clip_model.weight, dst.text_encoder.clip_model.weight)  # kept
    assert torch.equal(src.fusion1.weight, dst.fusion1.weight)
    assert not torch.equal(src.consensus_v.encoder.weight, dst.consensus_v.encoder.weight)


def test_release_checkpoint_errors(tmp_path):
    path = tmp_path / "x.pkl"
    torch.save({"foo.weight": torch.zeros(2)}, path)
    with pytest.raises(PECRError, match="not a PECR release"):
        ck.load_release_checkpoint(make(), path)
    sd = release_state_dict(make(feat=128))
    torch.save(sd, path)
    with pytest.raises(PECRError, match="shape"):
        ck.load_release_checkpoint(make(), path)
    with pytest.raises(PECRError, match="not found"):
        ck.load_release_checkpoint(make(), tmp_path / "missing.pkl")
