"""Text normalization applied to both references and hypotheses before scoring.

Whisper's English normalizer (from the `whisper-normalizer` package, offline) removes case,
punctuation and fillers, spells out "mr." and turns spoken numbers into digits, so "two one
zero" and "210" score as the same words.
"""

from __future__ import annotations

import importlib.metadata
from functools import lru_cache

from whisper_normalizer.english import EnglishTextNormalizer

NORMALIZER_NAME = "whisper-english"


@lru_cache(maxsize=1)
def _normalizer() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return " ".join(_normalizer()(text).split())


def has_words(normalized: str) -> bool:
    """Whether normalized text holds a word: a token with a letter or digit.

    The normalizer can leave punctuation behind ("..." becomes "."), which is no word to score.
    """
    return any(char.isalnum() for char in normalized)


def normalizer_id() -> dict:
    """Name and version, as recorded in the eval contract."""
    return {"name": NORMALIZER_NAME, "version": importlib.metadata.version("whisper-normalizer")}
