"""Prompt learner (docs/method.md §2.2): prompt positions, background row, truncated run, gradients, frozen CLIP."""
from __future__ import annotations

import pytest
import torch

import clip
from clip.model import random_model, tiny_config
from utils.errors import PECRError

PHRASES = ["clean and jerk", "long jump", "basketball dunk", "cricket bowling", "diving"]


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=11)


@pytest.fixture()
def learner(model, clip_vocab):
    return clip.PromptLearner(model, PHRASES, prefix=4, postfix=4, init_std=0.01,
                              generator=torch.Generator().manual_seed(0))


def spec_prompts(model, table, phrases, prefix, postfix):
    """docs/method.md §2.2 written out position by position over the full 77-token context:
    (C+1, 77, W) embeddings and (C+1, 77) ids whose argmax is each row's pooling position."""
    tokenizer = clip.get_tokenizer()
    emb = model.token_embedding.weight
    rows, ids = [], []
    for phrase in phrases:
        words = tokenizer.encode(phrase)
        n = len(words)
        x = table.clone()
        t = torch.zeros(77, dtype=torch.long)
        x[0] = emb[49406]
        for i, w in enumerate(words):
            x[prefix + 1 + i] = emb[w]
        x[prefix + n + 1 + postfix] = emb[49407]
        t[prefix + n + 1 + postfix] = 49407
        rows.append(x)
        ids.append(t)
    rows.append(table.clone())                          # background: the table, pooled at position 0
    ids.append(torch.zeros(77, dtype=torch.long))
    return torch.stack(rows), torch.stack(ids)


def test_positions_hold_the_spec_embeddings(learner, model):
    tokenizer = clip.get_tokenizer()
    prompts = learner.prompts()
    table, emb = learner.prompt_table, model.token_embedding.weight
    assert prompts.shape == (len(PHRASES) + 1, learner.length, 64)
    for c, phrase in enumerate(PHRASES):
        words = tokenizer.encode(phrase)
        n, eot = len(words), 4 + len(words) + 1 + 4
        assert learner.eot_positions[c].item() == eot and learner.token_ids[c].argmax().item() == eot
        assert torch.equal(prompts[c, 0], emb[49406])
        for i, w in enumerate(words):
            assert torch.equal(prompts[c, 5 + i], emb[w])
        assert torch.equal(prompts[c, eot], emb[49407])
        learnable = [*range(1, 5), *range(5 + n, eot), *range(eot + 1, learner.length)]
        assert torch.equal(prompts[c, learnable], table[learnable])
    assert torch.equal(prompts[-1], table[:learner.length])                     # background row
    assert learner.token_ids[-1].argmax().item() == 0 and learner.eot_positions[-1].item() == 0
    # "clean and jerk": 3 words -> EOT at 4+3+1+4 = 12, the longest prompt here, so 13 positions run
    assert learner.length == 13


def test_forward_equals_full_context_run(learner, model):
    with torch.no_grad():
        embeddings, ids = spec_prompts(model, learner.prompt_table, PHRASES, 4, 4)
        full = model.encode_text_from_embeddings(embeddings, ids)
        got = learner()
    assert got.shape == (len(PHRASES) + 1, 64)
    torch.testing.assert_close(got, full, atol=1e-6, rtol=1e-5)


def test_background_depends_only_on_position_zero(learner):
    with torch.no_grad():
        before = learner()
        learner.prompt_table[1:] += 1.0
        after = learner()
        assert torch.allclose(after[-1], before[-1], atol=1e-6)          # pooled at position 0
        assert not torch.allclose(after[:-1], before[:-1])
        learner.prompt_table[0] += 1.0
        assert not torch.allclose(learner()[-1], after[-1])


def test_gradients_reach_only_the_table(learner, model):
    assert [name for name, p in learner.named_parameters() if p.requires_grad] == ["prompt_table"]
    learner.train()
    learner().pow(2).sum().backward()
    grad = learner.prompt_table.grad
    assert grad is not None and grad[:learner.length].abs().sum() > 0
    assert grad[learner.length:].abs().sum() == 0                   # never reached: beyond every pooling position
    assert all(p.grad is None for p in model.parameters())


def test_clip_stays_frozen_and_in_eval(learner, model):
    learner.train()
    assert learner.training and not learner.clip_model.training
    assert not any(m.training for m in learner.clip_model.modules())
    learner.requires_grad_(True)
    assert not any(p.requires_grad for p in learner.clip_model.parameters())
    learner.eval()
    assert not learner.training
    extra = [k for k in learner.state_dict() if not k.startswith("clip_model.")]
    assert extra == ["prompt_table"]                                  # derived buffers are not persistent


def test_initialisation(model, clip_vocab):
    a = clip.PromptLearner(model, PHRASES, generator=torch.Generator().manual_seed(3))
    b = clip.PromptLearner(model, PHRASES, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.prompt_table, b.prompt_table) and a.prompt_table.shape == (77, 64)
    big = clip.PromptLearner(model, PHRASES, init_std=0.01, generator=torch.Generator().manual_seed(0))
    table = torch.cat([big.prompt_table] + [clip.PromptLearner(model, PHRASES, generator=torch.Generator().manual_seed(s)).prompt_table
                                            for s in range(1, 20)])
    assert table.mean().abs() < 1e-3 and abs(table.std().item() - 0.01) < 5e-4


def test_other_prefix_postfix(model, clip_vocab):
    for prefix, postfix in [(0, 0), (2, 7)]:
        learner = clip.PromptLearner(model, PHRASES, prefix=prefix, postfix=postfix)
        with torch.no_grad():
            embeddings, ids = spec_prompts(model, learner.prompt_table, PHRASES, prefix, postfix)
            torch.testing.assert_close(learner(), model.encode_text_from_embeddings(embeddings, ids), atol=1e-6, rtol=1e-5)


def test_bad_phrases(model, clip_vocab):
    with pytest.raises(PECRError, match="prompt"):
        clip.PromptLearner(model, ["word " * 70])
    with pytest.raises(PECRError):
        clip.PromptLearner(model, ["   "])
    with pytest.raises(PECRError):
        clip.PromptLearner(model, ["a <|endoftext|> b"])
    with pytest.raises(PECRError):
        clip.PromptLearner(model, [])
