"""CLIP tokenizer: docs/method.md §7 ids, round trips, context handling, vocabulary lookup and caching."""
from __future__ import annotations

import gzip
import html
import random
import shutil

import ftfy
import pytest
import torch

import clip
from clip import tokenizer as tok_module
from clip.tokenizer import EOT, PATTERN, SOT, SimpleTokenizer, clean_text, find_vocab, get_tokenizer, tokenize
from utils.errors import PECRError


@pytest.fixture()
def tokenizer(clip_vocab):
    return get_tokenizer(clip_vocab)


@pytest.fixture(autouse=True)
def _no_override():
    clip.set_vocab_path(None)
    yield
    clip.set_vocab_path(None)


def test_spec_examples(clip_vocab):
    tokens = tokenize(["clean and jerk", "Hello, World!  ok"])
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 77)
    assert tokens[0, :5].tolist() == [49406, 3772, 537, 23917, 49407]
    assert tokens[1, :7].tolist() == [49406, 3306, 267, 1002, 256, 2481, 49407]
    assert tokens[0, 5:].eq(0).all() and tokens[1, 7:].eq(0).all()
    # The example of OpenAI's README.
    assert tokenize(["a diagram", "a dog", "a cat"])[:, :4].tolist() == [
        [49406, 320, 22697, 49407], [49406, 320, 1929, 49407], [49406, 320, 2368, 49407]]


def test_vocabulary_layout(tokenizer):
    assert tokenizer.vocab_size == 49408
    assert (tokenizer.sot_token, tokenizer.eot_token) == (49406, 49407)
    assert tokenizer.decoder[0] == "!" and tokenizer.decoder[256] == "!</w>"     # printable bytes first
    assert tokenizer.encode("") == [] and tokenizer.encode("   \n\t ") == []
    byte_map = tok_module.bytes_to_unicode()
    assert sorted(byte_map) == list(range(256)) and len(set(byte_map.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in byte_map.values())


def naive_clean(text: str) -> str:
    """The cleaning docs/method.md §7 describes, written independently: ftfy, HTML unescape, whitespace
    runs collapsed (Python's notion of whitespace), lower-case."""
    return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()


POOL = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + " " * 12 + "\t\n"
        + ".,;:!?'\"-_()[]{}<>/\\|@#$%^&*+=~`" + "éèàüößçñøåÉÜ" + "αβγΔΩжЖяشمس中文字日本語한국어"
        + "😀🎉👍🏽" + "\u0301\u00a0\u3000" + "…–—“”‘’€£¥")
WORDS = ["don't", "it's", "we're", "I'll", "they've", "I'm", "he'd", "&amp;", "&lt;b&gt;", "naïve", "café",
         "ﬁne", "１２３", "tennis", "high-jump", "CliffDiving", "x" * 40]


def random_strings(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        parts = [rng.choice(WORDS) if rng.random() < 0.2 else "".join(rng.choices(POOL, k=rng.randint(1, 12)))
                 for _ in range(rng.randint(1, 6))]
        out.append(rng.choice([" ", "", "  "]).join(parts))
    return out


def test_round_trip_random_and_unicode(tokenizer):
    """decode(encode(s)) is the cleaned text with every regex piece followed by one space (the
    ``</w>`` word end); with spaces removed it is exactly the cleaned text without spaces."""
    strings = random_strings(300) + ["Hello, World!  ok", "  leading and trailing  ", "Zürich 2024!!", "🙂🙂 ok"]
    for s in strings:
        cleaned = clean_text(s)
        assert cleaned == naive_clean(s), s
        decoded = tokenizer.decode(tokenizer.encode(s))
        pieces = PATTERN.findall(cleaned)
        assert decoded == "".join(p if p in (SOT, EOT) else p + " " for p in pieces), s
        assert decoded.replace(" ", "") == cleaned.replace(" ", ""), s


def naive_bpe_ids(tokenizer, text: str) -> list[int]:
    """Reference BPE: merge the single lowest-ranked adjacent pair (leftmost first), one at a time."""
    ids = []
    for piece in PATTERN.findall(naive_clean(text)):
        if piece in (SOT, EOT):
            ids.append(tokenizer.encoder[piece])
            continue
        symbols = [tokenizer.byte_encoder[b] for b in piece.encode("utf-8")]
        symbols[-1] += "</w>"
        while True:
            ranks = [tokenizer.bpe_ranks.get(pair, float("inf")) for pair in zip(symbols, symbols[1:])]
            if not ranks or min(ranks) == float("inf"):
                break
            i = ranks.index(min(ranks))
            symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
        ids.extend(tokenizer.encoder[s] for s in symbols)
    return ids


def test_bpe_matches_reference(tokenizer):
    for s in random_strings(200, seed=1) + ["clean and jerk", "Hello, World!  ok", "basketball dunk", "aaaaaaa"]:
        assert tokenizer.encode(s) == naive_bpe_ids(tokenizer, s), s


def test_special_tokens_and_digits(tokenizer):
    assert tokenizer.encode("<|startoftext|> x <|endoftext|>")[0] == 49406
    assert tokenizer.encode("<|startoftext|> x <|endoftext|>")[-1] == 49407
    # Digits are single pieces: "2024" is four words.
    assert len(tokenizer.encode("2024")) == 4 and tokenizer.decode(tokenizer.encode("2024")) == "2 0 2 4 "


def test_context_length_and_truncation(tokenizer):
    long_text = " ".join(["word"] * 100)
    with pytest.raises(PECRError, match="truncate"):
        tokenize(long_text)
    full = [49406, *tokenizer.encode(long_text), 49407]
    cut = tokenize(long_text, truncate=True)
    assert cut.shape == (1, 77)
    assert cut[0, :76].tolist() == full[:76] and cut[0, 76].item() == 49407
    exact = " ".join(["word"] * 75)                  # SOT + 75 + EOT = 77 tokens: fits
    assert tokenize(exact)[0, -1].item() == 49407
    short = tokenize(["a dog", "clean and jerk"], context_length=5)
    assert short.tolist() == [[49406, 320, 1929, 49407, 0], [49406, 3772, 537, 23917, 49407]]
    with pytest.raises(PECRError):
        tokenize("clean and jerk", context_length=4)


def test_vocab_lookup_order(clip_vocab, tmp_path, monkeypatch):
    folder = tmp_path / "env"
    folder.mkdir()
    shutil.copy(clip_vocab, folder / tok_module.VOCAB_NAME)
    monkeypatch.setenv(tok_module.VOCAB_ENV, str(folder))                   # a folder holding the file
    assert find_vocab() == folder / tok_module.VOCAB_NAME
    explicit = tmp_path / "explicit.txt.gz"
    shutil.copy(clip_vocab, explicit)
    clip.set_vocab_path(clip_vocab)
    assert find_vocab() == clip_vocab                                        # --clip-vocab beats the env
    assert find_vocab(explicit) == explicit                                  # explicit path beats both
    assert SimpleTokenizer(explicit).vocab_path == explicit
    clip.set_vocab_path(None)
    monkeypatch.setenv(tok_module.VOCAB_ENV, str(tmp_path / "missing.gz"))
    with pytest.raises(PECRError, match="PECR_CLIP_VOCAB"):
        find_vocab()
    # No explicit path, no env: the cache folder.
    monkeypatch.delenv(tok_module.VOCAB_ENV)
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(clip_vocab, cache / tok_module.VOCAB_NAME)
    monkeypatch.setenv("PECR_CLIP_ROOT", str(cache))
    assert find_vocab() == cache / tok_module.VOCAB_NAME
    assert tokenize("clean and jerk")[0, :5].tolist() == [49406, 3772, 537, 23917, 49407]


def test_corrupt_vocab_is_rejected(clip_vocab, tmp_path):
    bad = tmp_path / tok_module.VOCAB_NAME
    with gzip.open(clip_vocab, "rb") as f:
        data = f.read()
    with gzip.open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(PECRError, match="SHA-256"):
        SimpleTokenizer(bad)


def test_tokenizer_instances_are_cached(clip_vocab, monkeypatch):
    monkeypatch.setenv("PECR_CLIP_VOCAB", str(clip_vocab))  # whatever the caller's environment says
    first = get_tokenizer(clip_vocab)
    assert get_tokenizer(clip_vocab) is first and get_tokenizer() is first   # env points at the same file
    tokenize("warm up")

    def fail(*args, **kwargs):
        raise AssertionError("vocabulary re-read")

    monkeypatch.setattr(tok_module.gzip, "open", fail)
    monkeypatch.setattr(tok_module, "sha256_file", fail)
    assert tokenize(["clean and jerk"] * 3)[:, 2].tolist() == [537] * 3
    SimpleTokenizer(clip_vocab)                                              # parsed merges are cached too
