"""CLIP model: towers against naive state-dict references, text-encoding identities, building from
state dicts of the released architectures, file round trips (state dict, TorchScript, fp16)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import clip
from clip.model import CLIP, SelfAttention, build_model, config_from_state_dict, random_model, tiny_config
from utils.errors import PECRError

TINY_RN = dict(embed_dim=32, image_resolution=64, vision_layers=(1, 2, 1, 1), vision_width=8, vision_patch_size=None,
               context_length=77, vocab_size=49408, transformer_width=32, transformer_layers=1)


# --- naive references computed straight from a state dict (per-head loops, explicit masks) -------------

def naive_attention(x, sd, p, heads, causal):
    """x (L, W) -> (L, W): multi-head self-attention with nn.MultiheadAttention's packed q,k,v weights."""
    length, width = x.shape
    q, k, v = (x @ sd[p + "in_proj_weight"].t() + sd[p + "in_proj_bias"]).split(width, dim=-1)
    d = width // heads
    out = torch.zeros_like(x)
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        scores = q[:, cols] @ k[:, cols].t() / math.sqrt(d)
        if causal:
            scores = scores + torch.full((length, length), float("-inf")).triu(1)
        out[:, cols] = scores.softmax(dim=-1) @ v[:, cols]
    return out @ sd[p + "out_proj.weight"].t() + sd[p + "out_proj.bias"]


def naive_transformer(x, sd, prefix, heads, causal):
    ln = lambda t, p: F.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-5)
    blocks = sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})
    for b in blocks:
        p = f"{prefix}{b}."
        x = x + naive_attention(ln(x, p + "ln_1"), sd, p + "attn.", heads, causal)
        hidden = ln(x, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].t() + sd[p + "mlp.c_fc.bias"]
        hidden = hidden * torch.sigmoid(1.702 * hidden)
        x = x + hidden @ sd[p + "mlp.c_proj.weight"].t() + sd[p + "mlp.c_proj.bias"]
    return x


def naive_encode_text(sd, tokens, heads):
    out = []
    for row in tokens:
        x = sd["token_embedding.weight"][row] + sd["positional_embedding"][: len(row)]
        x = naive_transformer(x, sd, "transformer.resblocks.", heads, causal=True)
        x = F.layer_norm(x, x.shape[-1:], sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)
        out.append(x[int(row.argmax())] @ sd["text_projection"])
    return torch.stack(out)


def naive_encode_image_vit(sd, images, heads):
    patch = sd["visual.conv1.weight"].shape[-1]
    out = []
    for image in images:
        grid = image.shape[-1] // patch
        tokens = [sd["visual.class_embedding"]]
        for i in range(grid):                                   # row-major patches
            for j in range(grid):
                cell = image[:, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch]
                tokens.append((sd["visual.conv1.weight"] * cell).sum(dim=(1, 2, 3)))
        x = torch.stack(tokens) + sd["visual.positional_embedding"]
        ln = lambda t, p: F.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], 1e-5)
        x = naive_transformer(ln(x, "visual.ln_pre"), sd, "visual.transformer.resblocks.", heads, causal=False)
        out.append(ln(x[0], "visual.ln_post") @ sd["visual.proj"])
    return torch.stack(out)


def naive_encode_image_resnet(sd, images, layers, heads):
    conv = lambda x, p, **kw: F.conv2d(x, sd[p + ".weight"], **kw)
    bn = lambda x, p: (x - sd[p + ".running_mean"][:, None, None]) / torch.sqrt(sd[p + ".running_var"][:, None, None] + 1e-5) \
        * sd[p + ".weight"][:, None, None] + sd[p + ".bias"][:, None, None]
    x = F.relu(bn(conv(images, "visual.conv1", stride=2, padding=1), "visual.bn1"))
    x = F.relu(bn(conv(x, "visual.conv2", padding=1), "visual.bn2"))
    x = F.relu(bn(conv(x, "visual.conv3", padding=1), "visual.bn3"))
    x = F.avg_pool2d(x, 2)
    for stage, blocks in enumerate(layers, start=1):
        for b in range(blocks):
            p, stride = f"visual.layer{stage}.{b}", 2 if stage > 1 and b == 0 else 1
            out = F.relu(bn(conv(x, p + ".conv1"), p + ".bn1"))
            out = F.relu(bn(conv(out, p + ".conv2", padding=1), p + ".bn2"))
            out = bn(conv(F.avg_pool2d(out, stride), p + ".conv3"), p + ".bn3")
            identity = x
            if p + ".downsample.0.weight" in sd:
                identity = bn(conv(F.avg_pool2d(x, stride), p + ".downsample.0"), p + ".downsample.1")
            x = F.relu(out + identity)
    # attention pooling: query = mean of the map, keys/values = mean and every position
    results = []
    for fmap in x:
        seq = fmap.flatten(1).t()                                          # (HW, C)
        seq = torch.cat([seq.mean(0, keepdim=True), seq]) + sd["visual.attnpool.positional_embedding"]
        lin = lambda t, name: t @ sd[f"visual.attnpool.{name}.weight"].t() + sd[f"visual.attnpool.{name}.bias"]
        q, k, v = lin(seq[:1], "q_proj"), lin(seq, "k_proj"), lin(seq, "v_proj")
        d = q.shape[1] // heads
        heads_out = [(q[:, h * d:(h + 1) * d] @ k[:, h * d:(h + 1) * d].t() / math.sqrt(d)).softmax(-1) @ v[:, h * d:(h + 1) * d]
                     for h in range(heads)]
        results.append(lin(torch.cat(heads_out, dim=1), "c_proj")[0])
    return torch.stack(results)


def perturbed(model: CLIP, seed: int = 1) -> CLIP:
    """Non-trivial biases, norms and BatchNorm statistics (the random init leaves them at identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith(("bias", "running_mean")) or (name.endswith("weight") and t.ndim == 1):
                t.add_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                t.mul_(torch.rand(t.shape, generator=g) + 0.5)
    return model


@pytest.fixture(scope="module")
def tiny() -> CLIP:
    return perturbed(random_model(tiny_config(), seed=3))


def some_tokens(lengths=(5, 9, 2), context=77, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(len(lengths), context, dtype=torch.long)
    for i, n in enumerate(lengths):
        tokens[i, 0], tokens[i, n - 1] = 49406, 49407
        tokens[i, 1:n - 1] = torch.randint(0, 49000, (n - 2,), generator=g)
    return tokens


# --- tests ---------------------------------------------------------------------------------------------

def test_tiny_config_attributes(tiny):
    cfg = tiny_config()
    assert cfg["embed_dim"] == 64 and tiny.embed_dim == 64
    assert (tiny.context_length, tiny.vocab_size, tiny.transformer_width, tiny.transformer_heads) == (77, 49408, 64, 1)
    assert tiny.visual.input_resolution == 32 and isinstance(tiny.token_embedding, nn.Embedding)
    assert tiny.dtype == torch.float32 and not tiny.training
    assert config_from_state_dict(tiny.state_dict()) == cfg


def test_self_attention_matches_torch_multihead():
    torch.manual_seed(0)
    ours = SelfAttention(32, 4)
    ref = nn.MultiheadAttention(32, 4, batch_first=True)
    ours.load_state_dict(ref.state_dict())                     # same key names and layout
    x = torch.randn(3, 7, 32)
    mask = torch.full((7, 7), float("-inf")).triu(1)
    torch.testing.assert_close(ours(x, causal=True), ref(x, x, x, attn_mask=mask, need_weights=False)[0])
    torch.testing.assert_close(ours(x), ref(x, x, x, need_weights=False)[0])


def test_text_tower_matches_naive(tiny):
    tokens = some_tokens()
    sd = tiny.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode_text(tokens), naive_encode_text(sd, tokens, heads=1), atol=1e-5, rtol=1e-4)


def test_vit_tower_matches_naive(tiny):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = tiny.encode_image(images)
    assert got.shape == (2, 64)
    torch.testing.assert_close(got, naive_encode_image_vit(tiny.state_dict(), images, heads=1), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("width, heads", [(64, 1), (96, 1), (128, 2), (512, 8), (768, 12), (1024, 16), (2048, 32)])
def test_heads_follow_openai_rule_for_every_width(width, heads):
    """OpenAI's build_model: text and ViT heads = width // 64, ResNet attention pool = vision width * 32 // 64."""
    from clip.model import default_heads

    assert default_heads(width) == heads == width // 64


def test_small_openai_format_checkpoint_uses_one_head_per_64_channels():
    """A width-128 text tower built from a state dict runs 2 heads: its features equal a naive 2-head
    computation and differ from a 4-head one (the rule used before, which gave other features)."""
    cfg = {**tiny_config(), "transformer_width": 128}
    model = perturbed(random_model(cfg, seed=3))
    built = build_model(model.state_dict())
    assert built.transformer_heads == 2 and built.visual.transformer.resblocks[0].attn.heads == 1
    tokens = some_tokens()
    with torch.no_grad():
        got = built.encode_text(tokens)
        torch.testing.assert_close(got, naive_encode_text(built.state_dict(), tokens, heads=2), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(got, naive_encode_text(built.state_dict(), tokens, heads=4), atol=1e-3)


def test_resnet_tower_matches_naive():
    model = perturbed(random_model(TINY_RN, seed=5))
    assert model.visual.attnpool.heads == 4                    # width 8 * 32 = 256 -> 64-wide heads
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = model.encode_image(images)
    assert got.shape == (2, 32)
    want = naive_encode_image_resnet(model.state_dict(), images, TINY_RN["vision_layers"], heads=4)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_encode_from_embeddings_truncation_and_causality(tiny):
    tokens = some_tokens()
    with torch.no_grad():
        full = tiny.encode_text(tokens)
        emb = tiny.token_embedding(tokens)
        assert torch.equal(tiny.encode_text_from_embeddings(emb, tokens), full)
        # Only the first 9 positions matter (largest EOT at index 8): the shortened run agrees.
        torch.testing.assert_close(tiny.encode_text_from_embeddings(emb[:, :9], tokens[:, :9]), full, atol=1e-6, rtol=1e-5)
        # Positions after EOT are masked: changing them changes nothing.
        noisy = emb.clone()
        noisy[:, 9:] += 5.0
        torch.testing.assert_close(tiny.encode_text_from_embeddings(noisy, tokens), full, atol=1e-6, rtol=1e-5)
        noisy[0, 3] += 1.0                                     # inside row 0's prompt: changes row 0 only
        changed = tiny.encode_text_from_embeddings(noisy, tokens)
        assert not torch.allclose(changed[0], full[0]) and torch.allclose(changed[1:], full[1:], atol=1e-6)
    with pytest.raises(PECRError):
        tiny.encode_text_from_embeddings(torch.zeros(1, 78, 64), torch.zeros(1, 78, dtype=torch.long))


def test_forward_logits(tiny):
    images = torch.randn(2, 3, 32, 32)
    tokens = some_tokens()
    with torch.no_grad():
        per_image, per_text = tiny(images, tokens)
        img = F.normalize(tiny.encode_image(images), dim=-1)
        txt = F.normalize(tiny.encode_text(tokens), dim=-1)
    assert per_image.shape == (2, 3) and torch.equal(per_text, per_image.t())
    assert tiny.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    torch.testing.assert_close(per_image, img @ txt.t() / 0.07, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name, expected_params, width, shapes", [
    ("RN50", 102_007_137, 1024, {
        "visual.conv1.weight": (32, 3, 3, 3), "visual.layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "visual.layer4.2.conv3.weight": (2048, 512, 1, 1), "visual.attnpool.positional_embedding": (50, 2048),
        "visual.attnpool.q_proj.weight": (2048, 2048), "visual.attnpool.c_proj.weight": (1024, 2048),
        "text_projection": (512, 1024), "transformer.resblocks.11.attn.in_proj_weight": (1536, 512)}),
    ("ViT-B/16", 149_620_737, 512, {
        "visual.conv1.weight": (768, 3, 16, 16), "visual.class_embedding": (768,),
        "visual.positional_embedding": (197, 768), "visual.proj": (768, 512),
        "visual.transformer.resblocks.11.mlp.c_fc.weight": (3072, 768), "text_projection": (512, 512),
        "positional_embedding": (77, 512), "token_embedding.weight": (49408, 512)}),
])
def test_released_architectures_from_state_dict(name, expected_params, width, shapes):
    """A state dict with OpenAI's shapes (random values) builds the right architecture."""
    sd = clip.load(f"random-{name}").state_dict()
    assert {k: tuple(sd[k].shape) for k in shapes} == shapes
    sd = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}  # released files are fp16
    sd.update(input_resolution=torch.tensor(224), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    model = build_model(sd)
    assert model.dtype == torch.float32 and not model.training
    assert sum(p.numel() for p in model.parameters()) == expected_params
    assert model.embed_dim == width and model.visual.input_resolution == 224 and model.transformer_heads == 8
    with torch.no_grad():
        assert model.encode_text(some_tokens((4,))).shape == (1, width)
        assert model.encode_image(torch.randn(1, 3, 224, 224)).shape == (1, width)


@pytest.mark.parametrize("config", [
    TINY_RN,
    dict(TINY_RN, vision_layers=(2, 1, 3, 1), vision_width=16, image_resolution=96, embed_dim=48, transformer_layers=3),
    dict(tiny_config(), vision_layers=3, vision_patch_size=4, image_resolution=24, transformer_width=128, context_length=20),
])
def test_config_inferred_from_state_dict(config):
    model = random_model(config, seed=0)
    sd = model.state_dict()
    assert config_from_state_dict(sd) == config
    # num_batches_tracked (absent from some exports) is optional and then starts at 0
    built = build_model({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")})
    assert all(torch.equal(v, sd[k]) for k, v in built.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert all(v.item() == 0 for k, v in built.state_dict().items() if k.endswith("num_batches_tracked"))
    assert built.text_projection.data_ptr() != model.text_projection.data_ptr()        # copied by default
    assert build_model(sd, copy=False).text_projection.data_ptr() == model.text_projection.data_ptr()


@pytest.mark.parametrize("config", [tiny_config(), TINY_RN])
def test_random_init_fills_every_tensor(config):
    a, b = random_model(config, seed=0).state_dict(), random_model(config, seed=1).state_dict()
    for name, t in a.items():
        assert torch.isfinite(t.float()).all(), name
        if name == "logit_scale":
            assert t.item() == pytest.approx(math.log(1 / 0.07))
        elif name.endswith(("bias", "running_mean", "num_batches_tracked")):
            assert t.eq(0).all(), name
        elif t.ndim == 1 and name != "visual.class_embedding" or name.endswith("running_var"):   # norms
            assert t.eq(1).all(), name
        else:                                                   # drawn from the generator
            assert not torch.equal(t, b[name]) and t.std() > 0, name


def test_random_models_are_deterministic_and_leave_global_rng():
    state = torch.get_rng_state()
    a, b = clip.load("random-tiny"), clip.load("random-tiny")
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(random_model(tiny_config(), seed=1).text_projection, a.text_projection)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_state_dict_and_torchscript_round_trip(tiny, tmp_path):
    images, tokens = torch.randn(2, 3, 32, 32), some_tokens()
    with torch.no_grad():
        want_img, want_txt = tiny.encode_image(images), tiny.encode_text(tokens)
    torch.save(tiny.state_dict(), tmp_path / "tiny.pt")
    traced = torch.jit.trace(tiny, (images, tokens))           # a TorchScript archive like the released files
    traced.save(str(tmp_path / "tiny_jit.pt"))
    for path in ("tiny.pt", "tiny_jit.pt"):
        model = clip.load(tmp_path / path)
        with torch.no_grad():
            assert torch.equal(model.encode_image(images), want_img), path
            assert torch.equal(model.encode_text(tokens), want_txt), path
    # fp16 TorchScript archive -> float32 model holding the fp16-rounded weights
    traced.half().save(str(tmp_path / "tiny_fp16.pt"))
    model = clip.load(tmp_path / "tiny_fp16.pt")
    assert model.dtype == torch.float32
    rounded = {k: v.half().float() if v.is_floating_point() else v for k, v in tiny.state_dict().items()}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in rounded.items())


def test_bad_files_and_names(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PECRError, match="junk.pt"):
        clip.load(tmp_path / "junk.pt")
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(PECRError, match="not a CLIP state dict"):
        clip.load(tmp_path / "other.pt")
    sd = random_model(tiny_config()).state_dict()
    sd["text_projection"] = sd["text_projection"][:, :10]
    torch.save(sd, tmp_path / "mismatch.pt")
    with pytest.raises(PECRError, match="mismatch.pt"):
        clip.load(tmp_path / "mismatch.pt")
    with pytest.raises(PECRError, match="--clip-backbone"):
        clip.load("ViT-Q/99")
    assert clip.available_models() == ["RN50", "ViT-B/16"]
