"""Scoring: corpus WER/CER, per-utterance error counts and hallucination flags."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import jiwer

from moonlora.data.text import has_words, normalize

# A run of the same n-gram this many times in a row (n = 1 needs one more) is a decode loop,
# unless the reference has the same run.
LOOP_MIN_REPEATS = 3
LOOP_MAX_NGRAM = 6


@dataclass(frozen=True)
class UtteranceScore:
    ref_norm: str
    hyp_norm: str
    ref_words: int
    substitutions: int
    deletions: int
    insertions: int
    ref_chars: int
    char_errors: int
    # On the texts as written (case and punctuation count): shows style drift, such as an
    # adapter that stops writing capitals and commas, which normalized WER cannot see.
    raw_ref_words: int = 0
    raw_word_errors: int = 0

    @property
    def word_errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.word_errors / self.ref_words if self.ref_words else float(self.word_errors > 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "word_errors": self.word_errors, "wer": self.wer}


def _word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(reference words, word errors) of whitespace-split texts; the reference has words."""
    ref_words = reference.split()
    out = jiwer.process_words(" ".join(ref_words), " ".join(hypothesis.split()))
    return len(ref_words), out.substitutions + out.deletions + out.insertions


def score_utterance(reference: str, hypothesis: str) -> UtteranceScore:
    """Word and character errors of one clip; the normalized reference must have words.

    `load_manifest` skips rows whose transcript normalizes to nothing
    ("text_normalizes_to_nothing"), so this only fails when a caller bypasses it.
    """
    ref_norm, hyp_norm = normalize(reference), normalize(hypothesis)
    if not has_words(ref_norm):
        raise ValueError(
            f"reference {reference!r} has no words once normalized, so WER is undefined for it; "
            "load references through moonlora.data.manifest.load_manifest, which skips such rows"
        )
    raw_ref_words, raw_errors = _word_errors(reference, hypothesis)
    words = jiwer.process_words(ref_norm, hyp_norm)
    chars = jiwer.process_characters(ref_norm, hyp_norm)
    char_errors = chars.substitutions + chars.deletions + chars.insertions
    return UtteranceScore(
        ref_norm, hyp_norm, len(ref_norm.split()), words.substitutions, words.deletions, words.insertions,
        len(ref_norm), char_errors, raw_ref_words, raw_errors,
    )


@dataclass(frozen=True)
class CorpusScore:
    wer: float
    cer: float
    ref_words: int
    word_errors: int
    substitutions: int
    deletions: int
    insertions: int
    raw_wer: float  # case- and punctuation-sensitive WER on the texts as written

    def to_dict(self) -> dict:
        return asdict(self)


def corpus_score(scores: list[UtteranceScore]) -> CorpusScore:
    """Corpus WER/CER: total errors over total reference words/characters (not a mean of ratios)."""
    ref_words = sum(s.ref_words for s in scores)
    ref_chars = sum(s.ref_chars for s in scores)
    subs = sum(s.substitutions for s in scores)
    dels = sum(s.deletions for s in scores)
    ins = sum(s.insertions for s in scores)
    char_errors = sum(s.char_errors for s in scores)
    return CorpusScore(
        wer=(subs + dels + ins) / max(ref_words, 1),
        cer=char_errors / max(ref_chars, 1),
        ref_words=ref_words, word_errors=subs + dels + ins,
        substitutions=subs, deletions=dels, insertions=ins,
        raw_wer=sum(s.raw_word_errors for s in scores) / max(sum(s.raw_ref_words for s in scores), 1),
    )


def longest_repeat_run(words: list[str], ngram: tuple[str, ...]) -> int:
    """Longest number of back-to-back copies of `ngram` in `words`."""
    n, best, i = len(ngram), 0, 0
    while i <= len(words) - n:
        run = 0
        while tuple(words[i + run * n : i + (run + 1) * n]) == ngram:
            run += 1
        best = max(best, run)
        i += max(run * n, 1) if run else 1
    return best


def find_repeat_loop(hyp_words: list[str], ref_words: list[str]) -> str | None:
    """The first n-gram the hypothesis repeats in a loop that the reference does not; else None."""
    for n in range(1, LOOP_MAX_NGRAM + 1):
        needed = LOOP_MIN_REPEATS + (n == 1)
        for start in range(len(hyp_words) - n * needed + 1):
            ngram = tuple(hyp_words[start : start + n])
            if len(set(ngram)) < n and n > 1:
                continue  # e.g. ("a", "a") is already covered by n = 1
            run = longest_repeat_run(hyp_words[start:], ngram)
            if run >= needed and run > longest_repeat_run(ref_words, ngram):
                return " ".join(ngram)
    return None


@dataclass(frozen=True)
class UtteranceFlags:
    empty_hypothesis: bool
    token_cap_hit: bool
    repeat_loop: str | None  # the looping n-gram

    def names(self) -> list[str]:
        flags = []
        if self.empty_hypothesis:
            flags.append("empty_hypothesis")
        if self.token_cap_hit:
            flags.append("token_cap_hit")
        if self.repeat_loop is not None:
            flags.append("repeat_loop")
        return flags


def flag_utterance(score: UtteranceScore, token_cap_hit: bool) -> UtteranceFlags:
    return UtteranceFlags(
        empty_hypothesis=not score.hyp_norm,
        token_cap_hit=token_cap_hit,
        repeat_loop=find_repeat_loop(score.hyp_norm.split(), score.ref_norm.split()),
    )
