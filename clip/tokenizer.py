"""CLIP's byte-level BPE tokenizer (vocabulary ``bpe_simple_vocab_16e6.txt.gz``, 49408 ids).

Text is cleaned (ftfy, HTML unescaping, whitespace collapsed, lower-cased), split by CLIP's regex
into words, numbers (one digit each) and runs of other symbols; each piece is mapped byte-wise to
printable characters and merged by the ranked BPE merges, its last symbol marked with ``</w>``.

Vocabulary lookup (first match wins): an explicit path > :func:`set_vocab_path` > env
``PECR_CLIP_VOCAB`` (the file, or a folder holding it) > the cache folder (see
:func:`clip.cache.cache_root`) > download from OpenAI's repository (checksum verified).
"""
from __future__ import annotations

import functools
import gzip
import html
import os
from pathlib import Path
from typing import Iterable, Sequence

import ftfy
import regex
import torch

from clip.cache import cache_root, download, sha256_file
from utils.errors import PECRError

VOCAB_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
VOCAB_URL = "https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz"
VOCAB_ENV = "PECR_CLIP_VOCAB"
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
NUM_MERGES = 49152 - 256 - 2

# CLIP's pre-tokenizer: special tokens, English contractions, letter runs, single digits, symbol runs.
PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
                        regex.IGNORECASE)
_WHITESPACE = regex.compile(r"\s+")

_vocab_override: str | None = None


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """A reversible map of the 256 byte values to printable characters, in vocabulary order: first
    the bytes that are printable Latin-1 characters (mapped to themselves), then the others in byte
    order (mapped to code points 256, 257, ...). Ids 0..255 of the vocabulary follow this order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def clean_text(text: str) -> str:
    """ftfy fix, HTML unescape (twice), whitespace runs -> one space, strip, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip().lower()


def set_vocab_path(path: str | os.PathLike | None) -> None:
    """Make ``path`` (the vocabulary file or its folder; None to unset) the process-wide default
    vocabulary (below an explicit path; ``model.build_model`` passes ``--clip-vocab`` explicitly)."""
    global _vocab_override
    _vocab_override = None if path is None else str(path)


def find_vocab(path: str | os.PathLike | None = None, download_root: str | os.PathLike | None = None) -> Path:
    """The vocabulary file, by the lookup order of this module's docstring."""
    for candidate, source in ((path, "vocab_path"), (_vocab_override, "set_vocab_path"), (os.environ.get(VOCAB_ENV), VOCAB_ENV)):
        if candidate:
            found = Path(os.path.expanduser(str(candidate)))
            if found.is_dir():
                found = found / VOCAB_NAME
            if not found.is_file():
                raise PECRError(f"CLIP vocabulary {found} (from {source}) does not exist; point {source} at "
                                f"{VOCAB_NAME} or a folder holding it")
            return found
    root = cache_root(download_root)
    return download(VOCAB_URL, root, VOCAB_SHA256,
                    hint=f"(or point --clip-vocab / ${VOCAB_ENV} at a copy of {VOCAB_NAME})")


@functools.lru_cache(maxsize=8)
def _read_merges(path: str) -> tuple[tuple[str, str], ...]:
    """The BPE merges of the vocabulary file at ``path``, checksum verified."""
    if sha256_file(path) != VOCAB_SHA256:
        raise PECRError(f"CLIP vocabulary {path} is not the official {VOCAB_NAME} (SHA-256 differs); "
                        "replace it with an intact copy")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    return tuple(tuple(line.split()) for line in lines[1:NUM_MERGES + 1])


class SimpleTokenizer:
    """Byte-level BPE with CLIP's vocabulary. ``encode(text) -> ids`` (no SOT/EOT),
    ``decode(ids) -> text`` (each word followed by one space)."""

    def __init__(self, vocab_path: str | os.PathLike | None = None):
        self.vocab_path = find_vocab(vocab_path)
        merges = _read_merges(str(self.vocab_path))
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.bpe_ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.sot_token, self.eot_token = self.encoder[SOT], self.encoder[EOT]
        self._cache: dict[str, tuple[str, ...]] = {SOT: (SOT,), EOT: (EOT,)}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, piece: str) -> tuple[str, ...]:
        """Merge the symbols of one byte-encoded piece, lowest-ranked pair first, left to right."""
        if piece in self._cache:
            return self._cache[piece]
        word = (*piece[:-1], piece[-1] + "</w>")
        while len(word) > 1:
            pairs = set(zip(word, word[1:]))
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self._cache[piece] = word
        return word

    def pieces(self, text: str) -> list[str]:
        """The regex pieces of the cleaned text."""
        return PATTERN.findall(clean_text(text))

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in self.pieces(text):
            encoded = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self.bpe(encoded))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")


@functools.lru_cache(maxsize=8)
def _tokenizer_at(path: str) -> SimpleTokenizer:
    return SimpleTokenizer(path)


def get_tokenizer(vocab_path: str | os.PathLike | None = None,
                  download_root: str | os.PathLike | None = None) -> SimpleTokenizer:
    """The shared tokenizer instance for the vocabulary found by :func:`find_vocab` (built once per file)."""
    return _tokenizer_at(str(find_vocab(vocab_path, download_root)))


def tokenize(texts: str | Sequence[str], context_length: int = 77, truncate: bool = False,
             tokenizer: SimpleTokenizer | None = None) -> torch.Tensor:
    """texts -> (N, context_length) int64: [SOT, ids..., EOT, 0...].

    Too long a text raises PECRError unless ``truncate`` (then the last kept token is EOT).
    """
    tokenizer = tokenizer or get_tokenizer()
    texts = [texts] if isinstance(texts, str) else list(texts)
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tokenizer.sot_token, *tokenizer.encode(text), tokenizer.eot_token]
        if len(ids) > context_length:
            if not truncate:
                shown = text if len(text) <= 60 else text[:57] + "..."
                raise PECRError(f"text {shown!r} has {len(ids)} tokens, more than the context length "
                                f"{context_length}; shorten it or pass truncate=True")
            ids = ids[:context_length]
            ids[-1] = tokenizer.eot_token
        result[row, :len(ids)] = torch.tensor(ids)
    return result
