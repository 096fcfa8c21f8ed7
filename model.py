"""PECR model (docs/method.md §2): CO2-Net cross-modal consensus head, probabilistic adapter, CLIP prompt
text features and the class activation sequence (CAS).

    model = build_model(opts, dataset.class_phrases, device)
    out = model(features)                    # features (B, T, F) -> PECROutput

Layouts: the convolutions run on (B, channels, T); every tensor of :class:`PECROutput` is
time-major (B, T, ·). All internal widths scale with the I3D feature size F (docs/method.md §2.1 is
F = 2048): streams S = F/2 (RGB | flow), hidden H = F/4, fusion F. D is the CLIP embedding width.

The text side is injected: ``text_encoder()`` must return the (C+1, D) text features (a
``clip.PromptLearner`` in production, any module in tests). Only its trainable parameters are
trained; the frozen CLIP inside it gets no gradient.

The reconstruction branch r of docs/method.md §2.1 is kept as a layer (``decoder``, for checkpoint
compatibility) but ``forward`` does not compute it: no loss uses it, so skipping it changes no
number and saves one convolution per module. Its parameters therefore never receive a gradient.

Same numbers, less memory (the training step at the THUMOS14 shapes keeps ~0.4 GB of activations):
Drop(LReLU(x)) is computed as LReLU(Drop(x)) in place, dropout keeps a bool mask, [x'_V; x'_F] is
formed before the attention branches read its halves, F1 is made time-major once. Initialisation:
PyTorch's layer defaults as in the release (``init="pytorch"``), or CO2-Net's Xavier-uniform
weights with zero biases (``init="xavier"``).

Mixed precision (``amp="bf16"``, ``--amp bf16``): the head (consensus modules, fusion layers,
adapter: every convolution and linear layer with the element-wise ops between them; the input is
cast once) and the linear layers and attention of the frozen CLIP text transformer run under
``torch.autocast`` in bfloat16. Their outputs are cast back to float32 (the text transformer keeps
its LayerNorms, residual stream, pooling and projection in float32), so the CAS (its temperature
division included), the test-time sampling and normalisation, and everything in losses.py run in
float32 as in the default. Parameters, gradients, the optimizer and checkpoints stay float32.
``amp="off"`` (default) never enters autocast: bit-for-bit the float32 model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.errors import PECRError

SLOPE = 0.2  # LeakyReLU slope everywhere (docs/method.md §2.1)
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16}  # --amp: autocast dtype of the head and text transformer


def lrelu(x: Tensor) -> Tensor:
    """In place: applied only to fresh convolution / dropout outputs, which their own backward does
    not need (LeakyReLU's backward needs only its output's sign)."""
    return F.leaky_relu(x, SLOPE, inplace=True)


class Dropout(nn.Dropout):
    """Inverted dropout (zero with probability p, scale the rest by 1/(1-p)) that keeps a bool mask
    for backward: F.dropout on the CPU keeps a float32 mask, 4x the memory (~100 MB at the THUMOS14
    shapes). The mask is drawn as ``rand >= p``, 4x faster on the CPU than the Bernoulli sampler
    behind nn.Dropout / torch.native_dropout (~0.2 s of every THUMOS14 training step), and applied
    by a product with the bool mask (5x faster than masked_fill on the CPU)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        if self.p == 1:
            return x * 0
        # uniforms drawn in float32 (or x's wider dtype): a bfloat16 x under --amp gets the masks of float32
        keep = torch.rand(x.shape, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32)) >= self.p
        return (x * keep).mul_(1 / (1 - self.p))


def drop_lrelu(x: Tensor, drop: nn.Dropout) -> Tensor:
    """Drop(LReLU(x)) of docs/method.md §2.1, computed as LReLU(Drop(x)): equal (up to float rounding) because
    LReLU is positively homogeneous and dropout multiplies by 0 or 1/(1-p) >= 0, with the same mask.
    This order keeps one activation per layer alive for backward instead of two (-100 MB at the
    THUMOS14 shapes)."""
    return lrelu(drop(x))


@dataclass
class PECROutput:
    """What :meth:`PECR.forward` returns (B batch, T snippets, C classes, F features, D CLIP width).

    cas            (B, T, C+1)  class activation sequence; last column = background
    attention      (B, T)       actionness A = (A_V + A_F) / 2
    attention_v    (B, T)       A_V of the RGB-main consensus module
    attention_f    (B, T)       A_F of the flow-main consensus module
    f0, f1         (B, T, F)    fusion features (F0 feeds the co-activity loss, F1 the adapter)
    mu             (B, T, D)    mean of the snippet embedding
    var            (B, T, D)    v = ReLU(Linear(F1)) (log-variance when sampling, variance in metrics)
    text_features  (C+1, D)     W, unnormalised text features of the class prompts
    samples        (B, T, K, D) the K samples z_k, only with ``forward(..., return_samples=True)``
    """

    cas: Tensor
    attention: Tensor
    attention_v: Tensor
    attention_f: Tensor
    f0: Tensor
    f1: Tensor
    mu: Tensor
    var: Tensor
    text_features: Tensor
    samples: Tensor | None = None


def xavier_init_(module: nn.Module) -> None:
    """CO2-Net's initialisation: Xavier-uniform weights, zero biases (convolutions and linears)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class CrossModalConsensus(nn.Module):
    """One cross-modal consensus module (docs/method.md §2.1): main x filtered by a consensus with auxiliary y.

    forward(x (B, S, T), y (B, S, T)) -> attention (B, T), filtered x' (B, S, T).
    """

    def __init__(self, stream: int, hidden: int, dropout: float = 0.5):
        super().__init__()
        conv3 = lambda cin, cout: nn.Conv1d(cin, cout, 3, padding=1)
        self.encoder = conv3(stream, hidden)      # e from the auxiliary stream
        self.decoder = conv3(hidden, stream)      # r, reconstruction of y (kept for checkpoints, not run)
        self.global_conv = conv3(stream, stream)  # g from the time-averaged main stream
        self.local_conv = conv3(hidden, stream)   # l from e
        self.attn_conv1 = conv3(stream, hidden)
        self.attn_conv2 = conv3(hidden, hidden)
        self.attn_conv3 = nn.Conv1d(hidden, 1, 1)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x_f = self.filter(x, y)
        return self.attend(x_f), x_f

    def filter(self, x: Tensor, y: Tensor) -> Tensor:
        """x' = sigmoid(l * a) * x: (B, S, T), (B, S, T) -> (B, S, T)."""
        e = drop_lrelu(self.encoder(y), self.drop)
        g = drop_lrelu(self.global_conv(x.mean(-1, keepdim=True)), self.drop)  # (B, S, 1)
        l = drop_lrelu(self.local_conv(e), self.drop)                          # (B, S, T)
        # a(t) = <g/|g|, l(t)/|l(t)|>: one (1 x S) @ (S x T) product per video, then the norm of l
        a = (F.normalize(g, dim=1).transpose(1, 2) @ l) / l.norm(dim=1, keepdim=True).clamp_min(1e-12)  # (B, 1, T)
        return torch.sigmoid(l * a) * x

    def attend(self, x_f: Tensor) -> Tensor:
        """Attention A from the filtered feature: (B, S, T) -> (B, T)."""
        h = drop_lrelu(self.attn_conv1(x_f), self.drop)
        h = lrelu(self.attn_conv2(h))
        return torch.sigmoid(self.drop(self.attn_conv3(h))).squeeze(1)


class ProbabilisticAdapter(nn.Module):
    """docs/method.md §2.3: (B, T, F) -> mu (B, T, D), v = ReLU(Linear) (B, T, D)."""

    def __init__(self, feature_size: int, clip_dim: int):
        super().__init__()
        self.fc_mean = nn.Linear(feature_size, clip_dim)
        self.fc_var = nn.Linear(feature_size, clip_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.fc_mean(x), F.relu(self.fc_var(x), inplace=True)  # in place on the fresh linear output


def train_cas(mu: Tensor, var: Tensor, text: Tensor, noise_mean: Tensor, temperature: float) -> Tensor:
    """Training CAS through the exact shortcut of docs/method.md §2.3.

    mean_k <z_k, W> = <mu + exp(v/2) * eps_bar, W> with eps_bar = mean_k eps_k ~ N(0, I/K).
    mu, var, noise_mean (B, T, D), text (C+1, D) -> (B, T, C+1).
    """
    return (mu + torch.exp(var / 2) * noise_mean) @ text.t() / temperature


def sample(mu: Tensor, var: Tensor, eps: Tensor) -> Tensor:
    """Reparameterised samples z_k = mu + eps_k * exp(v/2): mu, var (B, T, D), eps (B, T, K, D) -> (B, T, K, D)."""
    return mu.unsqueeze(-2) + eps * torch.exp(var / 2).unsqueeze(-2)


class PECR(nn.Module):
    """PECR: CO2-Net head + probabilistic adapter + prompt text features (docs/method.md §2).

    forward(features (B, T, F), text_features=None, generator=None, return_samples=False) -> PECROutput,
    float32 whatever ``amp`` (see the module docstring).
    The CAS form follows ``self.training``: training = unnormalised dot products / tau_train with
    ``train_sampling`` "shortcut" (mean noise drawn directly, default) or "full" (K samples);
    eval = mean over K samples of the cosine with the text features / tau_test (``test_sampling``
    "sample", as released) or the cosine of mu alone ("mean"). Noise comes from ``generator``
    (a torch.Generator on the model's device) when given, else from the global RNG.
    """

    def __init__(self, num_classes: int, feature_size: int, clip_dim: int, text_encoder: nn.Module, *,
                 dropout: float = 0.5, fusion_dropout: float = 0.7, num_samples: int = 20,
                 train_temperature: float = 8.0, test_temperature: float = 0.03,
                 train_sampling: str = "shortcut", test_sampling: str = "sample", init: str = "pytorch",
                 amp: str = "off"):
        super().__init__()
        if feature_size <= 0 or feature_size % 4:
            raise PECRError(f"feature size {feature_size} must be a positive multiple of 4 (RGB | flow halves, "
                            "hidden width F/4); check --feature-size")
        if train_sampling not in ("shortcut", "full") or test_sampling not in ("sample", "mean"):
            raise PECRError(f"unknown sampling mode train={train_sampling!r} test={test_sampling!r}; "
                            "use --train-sampling shortcut|full and --test-sampling sample|mean")
        if init not in ("xavier", "pytorch"):
            raise PECRError(f"unknown --init {init!r}; use xavier or pytorch")
        if amp not in AMP_DTYPES:
            raise PECRError(f"unknown --amp {amp!r}; use {' or '.join(AMP_DTYPES)}")
        if num_samples < 1:
            raise PECRError(f"--num-prob-v must be >= 1, got {num_samples}")
        self.num_classes, self.feature_size, self.clip_dim = num_classes, feature_size, clip_dim
        self.num_samples = num_samples
        self.train_temperature, self.test_temperature = train_temperature, test_temperature
        self.train_sampling, self.test_sampling = train_sampling, test_sampling
        self.amp = amp  # a plain attribute, not state: switching it changes no weight
        stream, hidden = feature_size // 2, feature_size // 4
        self.consensus_v = CrossModalConsensus(stream, hidden, dropout)  # RGB main, flow auxiliary
        self.consensus_f = CrossModalConsensus(stream, hidden, dropout)  # flow main, RGB auxiliary
        self.fusion1 = nn.Conv1d(feature_size, feature_size, 3, padding=1)
        self.fusion2 = nn.Conv1d(feature_size, feature_size, 3, padding=1)
        self.fusion_drop = Dropout(fusion_dropout)
        self.adapter = ProbabilisticAdapter(feature_size, clip_dim)
        if init == "xavier":
            for part in (self.consensus_v, self.consensus_f, self.fusion1, self.fusion2, self.adapter):
                xavier_init_(part)
        self.text_encoder = text_encoder
        self.clip_backbone: str | None = None  # name/path of the frozen CLIP (set by build_model)

    @classmethod
    def from_options(cls, opts, num_classes: int, clip_dim: int, text_encoder: nn.Module) -> "PECR":
        return cls(num_classes, opts.feature_size, clip_dim, text_encoder, dropout=opts.dropout,
                   fusion_dropout=opts.fusion_dropout, num_samples=opts.num_prob_v,
                   train_temperature=opts.train_temperature, test_temperature=opts.test_temperature,
                   train_sampling=opts.train_sampling, test_sampling=opts.test_sampling, init=opts.init,
                   amp=opts.amp)

    def config(self) -> dict:
        """Shape-defining settings (stored in checkpoints to detect mismatches)."""
        return {"num_classes": self.num_classes, "feature_size": self.feature_size, "clip_dim": self.clip_dim}

    def encode_text(self) -> Tensor:
        """Text features W (C+1, D) in float32, recomputed from the prompts (gradient flows into the
        prompt table). Under ``amp`` the text transformer's linear layers and attention run in the amp
        dtype (its LayerNorms, residual stream, pooling and projection stay float32, see clip.model)."""
        if self.amp == "off":
            text = self.text_encoder()
        else:
            with torch.autocast(self.fusion1.weight.device.type, dtype=AMP_DTYPES[self.amp]):
                text = self.text_encoder()
            text = text.float()
        if text.shape != (self.num_classes + 1, self.clip_dim):
            raise PECRError(f"text encoder returned {tuple(text.shape)}, expected ({self.num_classes + 1}, "
                            f"{self.clip_dim}) = (classes + background, CLIP width): class list and CLIP model disagree")
        return text

    def forward(self, features: Tensor, text_features: Tensor | None = None,
                generator: torch.Generator | None = None, return_samples: bool = False) -> PECROutput:
        if features.dim() != 3 or features.shape[-1] != self.feature_size:
            raise PECRError(f"features of shape {tuple(features.shape)} given, the model expects (B, T, "
                            f"{self.feature_size}); check --feature-size against the feature file")
        if self.amp == "off":
            att_v, att_f, f0, f1, mu, var = self.head(features)
        else:  # the input cast once: the whole head then runs in the amp dtype, without per-layer casts
            dtype = AMP_DTYPES[self.amp]
            with torch.autocast(features.device.type, dtype=dtype):
                head = self.head(features.to(dtype))
            att_v, att_f, f0, f1, mu, var = (t.float() for t in head)
        text = self.encode_text() if text_features is None else text_features
        cas, samples = self._cas(mu, var, text, generator, return_samples)
        return PECROutput(cas, (att_v + att_f) / 2, att_v, att_f, f0, f1, mu, var, text, samples)

    def head(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The CO2-Net head and the adapter (docs/method.md §2.1, §2.3): features (B, T, F) -> attention A_V, A_F
        (B, T), fusion features F0, F1 (B, T, F), mu, v (B, T, D)."""
        S = self.feature_size // 2
        x = features.transpose(1, 2)                                  # (B, F, T)
        rgb, flow = x.split(S, dim=1)
        # [x'_V; x'_F] is built first and the attention branches read its halves, so one (B, F, T)
        # tensor (not three) stays alive for backward
        filtered = torch.cat([self.consensus_v.filter(rgb, flow), self.consensus_f.filter(flow, rgb)], dim=1)
        att_v, att_f = self.consensus_v.attend(filtered[:, :S]), self.consensus_f.attend(filtered[:, S:])
        f0 = drop_lrelu(self.fusion1(filtered), self.fusion_drop)
        # F1 is made time-major (one copy) before its LReLU, so that a single (B, T, F) tensor serves the
        # LReLU's and both adapter linears' backward (F.linear would copy a transposed view each time).
        f1 = lrelu(self.fusion_drop(self.fusion2(f0)).transpose(1, 2).contiguous())   # (B, T, F)
        f0 = f0.transpose(1, 2)                                                          # (B, T, F) view
        mu, var = self.adapter(f1)
        return att_v, att_f, f0, f1, mu, var

    def _noise(self, shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
        return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)

    def _cas(self, mu: Tensor, var: Tensor, text: Tensor, generator, return_samples: bool):
        K = self.num_samples
        if self.training:
            if self.train_sampling == "shortcut" and not return_samples:
                noise = self._noise(mu.shape, mu, generator) / math.sqrt(K)
                return train_cas(mu, var, text, noise, self.train_temperature), None
            z = sample(mu, var, self._noise((*mu.shape[:-1], K, mu.shape[-1]), mu, generator))
            return (z @ text.t()).mean(-2) / self.train_temperature, z
        text_hat = F.normalize(text, dim=-1)
        if self.test_sampling == "mean" and not return_samples:
            return F.normalize(mu, dim=-1) @ text_hat.t() / self.test_temperature, None
        # mean_k <z_k/|z_k|, W_hat> = <mean_k z_k/|z_k|, W_hat>: one sample at a time keeps memory at
        # (B, T, D) for long test videos; each draw is vectorised over all snippets.
        std, acc, zs = torch.exp(var / 2), torch.zeros_like(mu), []
        for _ in range(K):
            z = mu + std * self._noise(mu.shape, mu, generator)
            acc = acc + F.normalize(z, dim=-1)
            if return_samples:
                zs.append(z)
        if self.test_sampling == "mean":
            cas = F.normalize(mu, dim=-1) @ text_hat.t() / self.test_temperature
        else:
            cas = (acc / K) @ text_hat.t() / self.test_temperature
        return cas, torch.stack(zs, dim=-2) if return_samples else None


def load_clip(opts, device: str | torch.device = "cpu"):
    """The frozen CLIP named by ``opts.clip_backbone`` (name, file or random-*) on ``device``, eval mode."""
    import clip

    return clip.load(opts.clip_backbone, device=device, download_root=opts.clip_download_root)


def build_model(opts, class_phrases: list[str], device: str | torch.device = "cpu", clip_model=None,
                full_clip: bool = False) -> PECR:
    """The production model: frozen CLIP (``opts.clip_backbone``) + ``clip.PromptLearner`` text side.

    ``clip_model``: an already loaded CLIP (from :func:`load_clip`; the model takes it over), else
    it is loaded here. Unless ``full_clip``, the CLIP parts PECR never runs are dropped once the
    prompt learner is built: the image tower (PECR reads precomputed CLIP image features) and the
    token-embedding table (the prompt learner keeps the embeddings of its fixed tokens as buffers)
    -- 250 MB for RN50. The tokenizer's vocabulary: ``opts.clip_vocab``, else $PECR_CLIP_VOCAB, else
    ``opts.clip_download_root`` (the CLIP cache), else one verified download.
    """
    import clip
    from utils.device import resolve_device

    device = resolve_device(device)
    clip_model = load_clip(opts, device) if clip_model is None else clip_model.to(device)
    tokenizer = clip.get_tokenizer(opts.clip_vocab, opts.clip_download_root)
    prompts = clip.PromptLearner(clip_model, class_phrases, opts.prompt_prefix, opts.prompt_postfix,
                                 opts.prompt_init_std, tokenizer=tokenizer)
    if not full_clip:
        clip_model.visual = None
        clip_model.token_embedding = None
    model = PECR.from_options(opts, len(class_phrases), clip_model.embed_dim, prompts)
    model.clip_backbone = opts.clip_backbone
    return model.to(device)
