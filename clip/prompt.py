"""Learnable text prompts on a frozen CLIP (docs/method.md §2.2).

One table P (77 x W, N(0, init_std²)) is shared by all classes. The prompt of class c with BPE
words w_1..w_n is P with position 0 = SOT embedding, positions prefix+1..prefix+n = the word
embeddings and position prefix+n+1+postfix = EOT embedding (pooled there); the other positions
are P's learnable vectors. A last, background prompt is P itself, pooled at position 0.

Causal attention makes position i depend only on positions <= i, so the text transformer runs on
the first (largest pooling position + 1) positions only: the same features as the 77-token run.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from clip.model import CLIP
from clip.tokenizer import SimpleTokenizer, get_tokenizer
from utils.errors import PECRError


class PromptLearner(nn.Module):
    """``forward() -> (C+1, embed_dim)`` text features of C class prompts and the background prompt.

    ``prompt_table`` (context_length, W) is the only trainable parameter; ``clip_model`` is frozen
    and stays in eval mode. The fixed token embeddings are non-persistent buffers, so a checkpoint
    needs only the ``state_dict()`` entries outside ``clip_model.``.
    """

    def __init__(self, clip_model: CLIP, class_phrases: Sequence[str], prefix: int = 4, postfix: int = 4,
                 init_std: float = 0.01, tokenizer: SimpleTokenizer | None = None,
                 generator: torch.Generator | None = None):
        super().__init__()
        tokenizer = tokenizer or get_tokenizer()
        if prefix < 0 or postfix < 0 or not class_phrases:
            raise PECRError(f"prompt learner needs class phrases and prefix/postfix >= 0 (got {len(class_phrases)} "
                            f"phrases, prefix {prefix}, postfix {postfix}); fix --prompt-prefix/--prompt-postfix")
        self.clip_model = clip_model.requires_grad_(False).eval()
        self.prefix, self.postfix = prefix, postfix
        context, width = clip_model.context_length, clip_model.transformer_width
        table = torch.randn(context, width, generator=generator) * init_std
        weight = clip_model.token_embedding.weight
        self.prompt_table = nn.Parameter(table.to(device=weight.device, dtype=weight.dtype))

        rows = len(class_phrases) + 1
        words = [tokenizer.encode(phrase) for phrase in class_phrases]
        eot_positions = [prefix + len(w) + 1 + postfix for w in words] + [0]
        for phrase, w, eot in zip(class_phrases, words, eot_positions):
            if not w or eot >= context or max(w) >= min(tokenizer.sot_token, tokenizer.eot_token):
                raise PECRError(f"class phrase {phrase!r} gives {len(w)} word tokens: a prompt needs 1 to "
                                f"{context - prefix - postfix - 2} ordinary words (prefix {prefix}, postfix {postfix}, "
                                f"context {context}); fix the class name or --prompt-prefix/--prompt-postfix")
        length = max(eot_positions) + 1
        token_ids = torch.zeros(rows, length, dtype=torch.long)
        fixed = torch.zeros(rows, length, dtype=torch.bool)          # SOT, words, EOT; none in the background row
        for c, (w, eot) in enumerate(zip(words, eot_positions)):
            token_ids[c, 0] = tokenizer.sot_token
            token_ids[c, prefix + 1:prefix + 1 + len(w)] = torch.tensor(w)
            token_ids[c, eot] = tokenizer.eot_token
            fixed[c, [0, *range(prefix + 1, prefix + 1 + len(w)), eot]] = True
        token_ids, fixed = token_ids.to(weight.device), fixed.to(weight.device)
        with torch.no_grad():
            fixed_embeddings = clip_model.token_embedding(token_ids) * fixed.unsqueeze(-1)
        self.register_buffer("token_ids", token_ids, persistent=False)                 # (C+1, L) pooling at argmax
        self.register_buffer("fixed_mask", fixed.unsqueeze(-1), persistent=False)     # (C+1, L, 1)
        self.register_buffer("fixed_embeddings", fixed_embeddings, persistent=False)  # (C+1, L, W)
        self.register_buffer("eot_positions", torch.tensor(eot_positions, device=weight.device), persistent=False)

    @property
    def length(self) -> int:
        """Positions the text transformer runs on: the largest pooling position + 1."""
        return self.token_ids.shape[1]

    def prompts(self) -> torch.Tensor:
        """(C+1, L, W) prompt embeddings (first L positions; the rest are causally masked anyway)."""
        return torch.where(self.fixed_mask, self.fixed_embeddings, self.prompt_table[:self.length])

    def forward(self) -> torch.Tensor:
        return self.clip_model.encode_text_from_embeddings(self.prompts(), self.token_ids)

    def train(self, mode: bool = True) -> "PromptLearner":
        super().train(mode)
        self.clip_model.eval()
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "PromptLearner":
        """Only the prompt table is ever trainable; the CLIP weights stay frozen."""
        self.prompt_table.requires_grad_(requires_grad)
        return self
