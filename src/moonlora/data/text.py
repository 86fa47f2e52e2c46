"""Text normalization applied to both references and hypotheses before scoring, per language.

A language picks one normalizer (both from the `whisper-normalizer` package, offline):
- `en`: Whisper's English normalizer removes case, punctuation and fillers, spells out "mr." and
  turns spoken numbers into digits, so "two one zero" and "210" score as the same words;
- other alphabetic languages: Whisper's basic normalizer (case and punctuation removed, Unicode
  NFKC, letters and digits kept as written; no number or spelling rules, which are English-only);
- Chinese, Japanese, Korean (`CJK_LANGUAGES`): the basic normalizer, then every whitespace removed,
  since these scripts do not write spaces between words and a system's spacing is no error. CER is
  their primary metric (`moonlora.eval.metrics`): on text without spaces a "word" is a whole sentence.

The normalizer's name and version are recorded in the eval contract; the English one keeps the
name it had before languages were recorded ("whisper-english"), so English contracts keep their
fingerprint.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from functools import lru_cache

from whisper_normalizer.basic import BasicTextNormalizer
from whisper_normalizer.english import EnglishTextNormalizer

from moonlora.configs import CJK_LANGUAGES, DEFAULT_LANGUAGE

NORMALIZER_NAME = "whisper-english"  # the English normalizer's recorded name (unchanged since v1 contracts)
NORMALIZER_NAMES = {"english": NORMALIZER_NAME, "basic": "whisper-basic", "cjk": "whisper-basic-nospace"}


@lru_cache(maxsize=1)
def _english() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


@lru_cache(maxsize=1)
def _basic() -> BasicTextNormalizer:
    return BasicTextNormalizer()


@dataclass(frozen=True)
class TextNormalizer:
    """The scoring normalizer of one language: call it on a text; `name` is what the contract records."""

    name: str

    def __call__(self, text: str) -> str:
        if self.name == NORMALIZER_NAME:
            return " ".join(_english()(text).split())
        words = _basic()(text).split()
        return ("" if self.name == NORMALIZER_NAMES["cjk"] else " ").join(words)

    def to_dict(self) -> dict:
        """Name and version, as recorded in the eval contract."""
        return {"name": self.name, "version": importlib.metadata.version("whisper-normalizer")}


def normalizer_for(language: str = DEFAULT_LANGUAGE) -> TextNormalizer:
    """English for `en`, basic + no spaces for zh/ja/ko/yue, basic for every other language."""
    if language == DEFAULT_LANGUAGE:
        return TextNormalizer(NORMALIZER_NAMES["english"])
    return TextNormalizer(NORMALIZER_NAMES["cjk" if language in CJK_LANGUAGES else "basic"])


def normalize(text: str, language: str = DEFAULT_LANGUAGE) -> str:
    return normalizer_for(language)(text)


def has_words(normalized: str) -> bool:
    """Whether normalized text holds a word: a token with a letter or digit.

    The normalizer can leave punctuation behind ("..." becomes "."), which is no word to score.
    """
    return any(char.isalnum() for char in normalized)


def normalizer_id(language: str = DEFAULT_LANGUAGE) -> dict:
    """Name and version, as recorded in the eval contract."""
    return normalizer_for(language).to_dict()
