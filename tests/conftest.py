"""Shared fixtures: the real annotation folders and CLIP vocabulary in ../shared.

Tests that need ../shared skip with a clear reason when it is absent.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PECR_SHARED", ROOT.parent / "shared"))
THUMOS_ANNOTATIONS = SHARED / "data" / "Thumos14reduced-Annotations"
ANET_ANNOTATIONS = SHARED / "data" / "ActivityNet1.2-Annotations"
CLIP_VOCAB = SHARED / "clip" / "bpe_simple_vocab_16e6.txt.gz"

# The tokenizer finds its vocabulary through PECR_CLIP_VOCAB (CI sets it too).
if CLIP_VOCAB.is_file():
    os.environ.setdefault("PECR_CLIP_VOCAB", str(CLIP_VOCAB))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: this test needs ../shared beside the checkout (or PECR_SHARED)")
    return path


@pytest.fixture(scope="session")
def thumos_annotations() -> Path:
    """The real THUMOS14 (Thumos14reduced) annotation folder."""
    return _require(THUMOS_ANNOTATIONS)


@pytest.fixture(scope="session")
def anet_annotations() -> Path:
    """The real ActivityNet1.2 annotation folder."""
    return _require(ANET_ANNOTATIONS)


@pytest.fixture(scope="session")
def clip_vocab() -> Path:
    """CLIP's BPE vocabulary file."""
    return _require(CLIP_VOCAB)
