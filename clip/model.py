"""CLIP (Radford et al. 2021): image tower, causal text transformer, and building from a state dict.

Parameter names follow OpenAI's release exactly (``visual.attnpool.q_proj.weight``,
``transformer.resblocks.0.attn.in_proj_weight``, ``ln_final.weight``, ...), so the released
checkpoints load unchanged. Visual towers: a modified ResNet (RN50, RN101, RN50x4/16/64: three-conv
stem, anti-aliased strides by average pooling, attention pooling) or a Vision Transformer
(ViT-B/32, ViT-B/16, ViT-L/14). Every module computes batch-first (N, L, W); the attention layers
use ``F.scaled_dot_product_attention`` with a causal flag for text, so a text run over the first
L <= 77 positions gives the same features as the full 77-token run at the positions it covers.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import PECRError

# Keys that some released state dicts carry next to the weights (plain integers, not weights).
EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def default_heads(width: int) -> int:
    """Attention heads of a layer of width ``width``: OpenAI's ``build_model`` rule, 64-wide heads
    (``width // 64``) for every width, so a small OpenAI-format checkpoint (width 64: one head) gives
    the features OpenAI's code gives. Widths below 64, which OpenAI's code cannot build, get one head."""
    return max(1, width // 64)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (fp16 weights stay usable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the GELU approximation CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names
    (``in_proj_weight`` (3W, W) stacking q, k, v; ``in_proj_bias`` (3W); ``out_proj``)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise PECRError(f"CLIP attention width {width} is not divisible by {heads} heads; use a width that is a multiple of {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """x (N, L, W) -> (N, L, W); ``causal``: position i attends to positions <= i only."""
        n, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).split(width, dim=-1)
        q, k, v = (t.view(n, length, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(y.transpose(1, 2).reshape(n, length, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)) with a 4x QuickGELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = SelfAttention(width, heads)
        self.ln_1 = LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width)),
        ]))
        self.ln_2 = LayerNorm(width)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), causal=causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """``layers`` residual attention blocks of width ``width``; input and output (N, L, W)."""

    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.width, self.layers = width, layers
        self.resblocks = nn.ModuleList([ResidualAttentionBlock(width, heads) for _ in range(layers)])

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, causal=causal)
        return x


class Bottleneck(nn.Module):
    """ResNet bottleneck (1x1, 3x3, 1x1 -> 4x planes). A stride > 1 is an average pool after the 3x3
    conv (and before the 1x1 projection of the shortcut) instead of a strided convolution."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = None
        if stride > 1 or inplanes != planes * self.expansion:
            self.downsample = nn.Sequential(OrderedDict([
                ("-1", nn.AvgPool2d(stride) if stride > 1 else nn.Identity()),
                ("0", nn.Conv2d(inplanes, planes * self.expansion, 1, bias=False)),
                ("1", nn.BatchNorm2d(planes * self.expansion)),
            ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class AttentionPool2d(nn.Module):
    """Pools a (N, C, H, W) map to (N, output_dim): one attention query (the mean of the map plus its
    positional embedding) over the H*W positions and the mean itself."""

    def __init__(self, spatial_dim: int, embed_dim: int, heads: int, output_dim: int):
        super().__init__()
        if embed_dim % heads:
            raise PECRError(f"CLIP attention-pool width {embed_dim} is not divisible by {heads} heads")
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.empty(spatial_dim ** 2 + 1, embed_dim))
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.c_proj = nn.Linear(embed_dim, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(2).transpose(1, 2)                                  # (N, HW, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)            # (N, HW+1, C)
        x = x + self.positional_embedding.to(x.dtype)
        n, length, width = x.shape
        q = self.q_proj(x[:, :1]).view(n, 1, self.heads, -1).transpose(1, 2)
        k = self.k_proj(x).view(n, length, self.heads, -1).transpose(1, 2)
        v = self.v_proj(x).view(n, length, self.heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v)                       # (N, heads, 1, C/heads)
        return self.c_proj(y.transpose(1, 2).reshape(n, width))


class ModifiedResNet(nn.Module):
    """CLIP's ResNet: 3-conv stem + avgpool, four bottleneck stages, attention pooling.

    images (N, 3, R, R) -> (N, output_dim); R = ``input_resolution`` (the map is R/32 wide at the pool).
    """

    def __init__(self, layers: Sequence[int], output_dim: int, heads: int, input_resolution: int = 224, width: int = 64):
        super().__init__()
        self.input_resolution, self.output_dim = input_resolution, output_dim
        self.conv1 = nn.Conv2d(3, width // 2, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        self._inplanes = width
        self.layer1 = self._make_layer(width, layers[0])
        self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
        self.attnpool = AttentionPool2d(input_resolution // 32, width * 32, heads, output_dim)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        modules = [Bottleneck(self._inplanes, planes, stride)]
        self._inplanes = planes * Bottleneck.expansion
        modules += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.type(self.conv1.weight.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = F.relu(bn(conv(x)))
        x = self.avgpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.attnpool(x)


class VisionTransformer(nn.Module):
    """ViT: patch embedding, class token, pre-LN transformer, projection of the class token.

    images (N, 3, R, R) -> (N, output_dim); R = ``input_resolution``, a multiple of ``patch_size``.
    """

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int, output_dim: int):
        super().__init__()
        self.input_resolution, self.output_dim = input_resolution, output_dim
        self.conv1 = nn.Conv2d(3, width, patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x.type(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)    # (N, grid², W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    """Image and text towers projected into a joint ``embed_dim``-wide space.

    ``vision_layers`` a 4-tuple selects the modified ResNet, an int the ViT (with ``vision_patch_size``).
    Attention heads follow :func:`default_heads`.
    """

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int | Sequence[int],
                 vision_width: int, vision_patch_size: int | None, context_length: int, vocab_size: int,
                 transformer_width: int, transformer_layers: int):
        super().__init__()
        self.embed_dim, self.context_length, self.vocab_size = embed_dim, context_length, vocab_size
        self.transformer_width = transformer_width
        self.transformer_heads = default_heads(transformer_width)
        if isinstance(vision_layers, (tuple, list)):
            self.visual = ModifiedResNet(vision_layers, embed_dim, default_heads(vision_width * 32), image_resolution, vision_width)
        else:
            self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                            default_heads(vision_width), embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, self.transformer_heads)
        # Given storage: skips nn.Embedding's normal init (slow on the meta device, overwritten anyway).
        self.token_embedding = nn.Embedding(vocab_size, transformer_width, _weight=torch.empty(vocab_size, transformer_width))
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.empty(()))

    @property
    def dtype(self) -> torch.dtype:
        return self.text_projection.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, R, R), normalised with CLIP's mean/std -> (N, embed_dim)."""
        return self.visual(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (N, L<=77) int ids (EOT has the largest id) -> (N, embed_dim)."""
        return self.encode_text_from_embeddings(self.token_embedding(tokens), tokens)

    def encode_text_from_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """embeddings (N, L, W) in place of token embeddings, tokens (N, L) -> (N, embed_dim).

        Adds the first L positional embeddings, runs the causal transformer, and projects the
        final-LayerNorm output at each row's pooling position ``tokens.argmax(-1)`` (the EOT token).
        Under ``torch.autocast`` (PECR's ``--amp``) the transformer's linear layers and attention run
        in the autocast dtype; its LayerNorms and residual stream, the pooling and the projection
        stay float32.
        """
        length = embeddings.shape[1]
        if length > self.context_length or tokens.shape != embeddings.shape[:2]:
            raise PECRError(f"CLIP text input of shape {tuple(embeddings.shape)} with tokens {tuple(tokens.shape)}: "
                            f"need (N, L, {self.transformer_width}) and (N, L) with L <= {self.context_length}")
        x = embeddings.type(self.dtype) + self.positional_embedding[:length]
        x = self.transformer(x, causal=True)
        x = self.ln_final(x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)])  # (N, W)
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return x.float() @ self.text_projection.float()
        return x @ self.text_projection

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (logits_per_image (N_img, N_txt), logits_per_text (N_txt, N_img)): scaled cosine similarities."""
        image_features = F.normalize(self.encode_image(images), dim=-1)
        text_features = F.normalize(self.encode_text(tokens), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


# ---------------------------------------------------------------------------------------------
# Configurations, random initialisation, building from a state dict


def _text(width: int = 512, layers: int = 12) -> dict:
    return dict(context_length=77, vocab_size=49408, transformer_width=width, transformer_layers=layers)


CONFIGS: dict[str, dict] = {
    "RN50": dict(embed_dim=1024, image_resolution=224, vision_layers=(3, 4, 6, 3), vision_width=64,
                 vision_patch_size=None, **_text()),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                     vision_patch_size=16, **_text()),
}


def tiny_config() -> dict:
    """A small CLIP for tests and the synthetic demo: embed_dim 64, text width 64 (1 head, 2 layers,
    full 49408 vocabulary and 77-token context so the real tokenizer works), ViT tower 32 px,
    patch 8, width 64, 2 layers. About 3.4 M parameters (3.2 M in the token embedding)."""
    return dict(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=64, vision_patch_size=8,
                **_text(width=64, layers=2))


def config_from_state_dict(state_dict: dict[str, torch.Tensor]) -> dict:
    """Infer the :class:`CLIP` constructor arguments from a state dict with OpenAI's key names."""
    try:
        sd = state_dict
        if "visual.proj" in sd:
            vision_width = sd["visual.conv1.weight"].shape[0]
            vision_layers: int | tuple = sum(1 for k in sd if k.startswith("visual.") and k.endswith(".attn.in_proj_weight"))
            vision_patch_size = sd["visual.conv1.weight"].shape[-1]
            grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            image_resolution = vision_patch_size * grid
        else:
            vision_layers = tuple(len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4))
            vision_width = sd["visual.layer1.0.conv1.weight"].shape[0]
            vision_patch_size = None
            image_resolution = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5) * 32
        return dict(
            embed_dim=sd["text_projection"].shape[1],
            image_resolution=image_resolution,
            vision_layers=vision_layers,
            vision_width=vision_width,
            vision_patch_size=vision_patch_size,
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            transformer_width=sd["ln_final.weight"].shape[0],
            transformer_layers=len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
        )
    except (KeyError, IndexError, AttributeError) as err:
        raise PECRError(f"not a CLIP state dict (missing or malformed entry {err}); expected OpenAI's key names "
                        "such as 'visual.conv1.weight', 'token_embedding.weight', 'text_projection'") from None


def _empty_model(config: dict) -> CLIP:
    """The architecture with uninitialised storage (built on the meta device: no wasted init)."""
    with torch.device("meta"):
        model = CLIP(**config)
    model.to_empty(device="cpu")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()              # defined values for buffers a state dict may omit
    return model


def build_model(state_dict: dict[str, torch.Tensor], copy: bool = True) -> CLIP:
    """The CLIP described by ``state_dict`` (OpenAI's key names), weights in float32, eval mode.

    The extra keys ``input_resolution``, ``context_length``, ``vocab_size`` are ignored.
    ``copy=False`` lets the model take over float32 tensors of ``state_dict`` instead of copying
    them (for a state dict read from a file and not used elsewhere).
    """
    state_dict = {k: v for k, v in state_dict.items() if k not in EXTRA_KEYS}
    model = _empty_model(config_from_state_dict(state_dict))
    floats = {k: v.to(torch.float32, copy=copy) if v.is_floating_point() else v for k, v in state_dict.items()}
    try:
        model.load_state_dict(floats, assign=True)
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in lines[:3])
        raise PECRError(f"CLIP state dict does not match the architecture inferred from it ({detail[:300]}); "
                        "is it an unmodified OpenAI CLIP checkpoint?") from None
    return model.eval()


@torch.no_grad()
def init_parameters(model: CLIP, generator: torch.Generator) -> CLIP:
    """Fill every parameter and buffer, drawing from ``generator`` only: normal weights with OpenAI's
    standard deviations (fan-in scaled convs/linears, depth-scaled transformer projections), zero
    biases, BatchNorm/LayerNorm at identity, logit scale log(1/0.07)."""
    def normal(t: torch.Tensor, std: float) -> None:
        t.normal_(0.0, std, generator=generator)

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            if "resblocks." not in name:                 # transformer weights: drawn below
                normal(module.weight, module.weight[0].numel() ** -0.5)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            module.weight.fill_(1.0)
            module.bias.zero_()
    # Transformer blocks (text and ViT): OpenAI's depth-scaled standard deviations.
    for transformer in (model.transformer, getattr(model.visual, "transformer", None)):
        if transformer is None:
            continue
        width, layers = transformer.width, transformer.layers
        proj_std, attn_std, fc_std = width ** -0.5 * (2 * layers) ** -0.5, width ** -0.5, (2 * width) ** -0.5
        for block in transformer.resblocks:
            normal(block.attn.in_proj_weight, attn_std)
            block.attn.in_proj_bias.zero_()
            normal(block.attn.out_proj.weight, proj_std)
            normal(block.mlp.c_fc.weight, fc_std)
            normal(block.mlp.c_proj.weight, proj_std)
    visual = model.visual
    if isinstance(visual, VisionTransformer):
        scale = visual.conv1.out_channels ** -0.5
        normal(visual.class_embedding, scale)
        normal(visual.positional_embedding, scale)
        normal(visual.proj, scale)
    else:
        normal(visual.attnpool.positional_embedding, visual.attnpool.positional_embedding.shape[1] ** -0.5)
    normal(model.token_embedding.weight, 0.02)
    normal(model.positional_embedding, 0.01)
    normal(model.text_projection, model.transformer_width ** -0.5)
    model.logit_scale.fill_(math.log(1 / 0.07))
    return model


def random_model(config: dict, seed: int = 0) -> CLIP:
    """A CLIP of architecture ``config`` with deterministic random weights (float32, CPU, eval).

    Draws from a local ``torch.Generator(seed)``; the global RNG is left untouched.
    """
    generator = torch.Generator().manual_seed(seed)
    return init_parameters(_empty_model(config), generator).eval()
