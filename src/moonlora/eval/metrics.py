"""Scoring: corpus WER/CER, per-utterance error counts and hallucination flags, and the primary metric.

Every clip is scored both ways (word and character errors over the normalized texts); the primary
`Metric` (WER, or CER for Chinese, Japanese, Korean and wherever `--metric cer` says so) is a value
that names which pair of counts the corpus rate, the paired bootstrap, the interval evaluation and
the verdict read. CER is jiwer's character edit distance (`jiwer.process_characters`) over the
normalized texts: the same CER moonlora always reported beside English WER; for zh/ja/ko/yue the
normalizer has already removed every space (`moonlora.data.text`), so only the script's characters
count, and a hypothesis's word spacing is no error.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace

import jiwer

from moonlora.configs import ScoringConfig
from moonlora.data.text import TextNormalizer, has_words, normalizer_for


@dataclass(frozen=True)
class Metric:
    """The primary metric: corpus errors over reference units, read from each clip's score."""

    name: str  # "wer" | "cer": also the CorpusScore / summary field that holds the corpus rate
    label: str  # as tables and messages print it
    unit: str  # what the reference counts: words or characters
    error_field: str  # UtteranceScore's count of errors of this metric
    unit_field: str  # UtteranceScore's count of reference units

    def counts(self, score: UtteranceScore) -> tuple[int, int]:
        """(errors, reference units) of one clip."""
        return getattr(score, self.error_field), getattr(score, self.unit_field)

    def rate(self, corpus: CorpusScore) -> float:
        return getattr(corpus, self.name)


WER = Metric("wer", "WER", "words", "word_errors", "ref_words")
CER = Metric("cer", "CER", "characters", "char_errors", "ref_chars")
METRICS = {metric.name: metric for metric in (WER, CER)}


def metric_named(name: str | None) -> Metric:
    """The metric a contract or record names (None, from before metrics were recorded: WER)."""
    return METRICS[name or "wer"]


def metric_for(scoring: ScoringConfig) -> Metric:
    return METRICS[scoring.primary_metric]

# A run of the same n-gram this many times in a row (n = 1 needs one more) is a decode loop,
# unless the reference has the same run.
LOOP_MIN_REPEATS = 3
LOOP_MAX_NGRAM = 6
# The long-loop rule (`find_long_loop`): a phrase of at least this many words repeated back to back,
# two full copies and a partial third, or two full copies that end the hypothesis; shorter phrases
# are the n-gram rule's. The span must also hold this many words, so a natural "one two one two" or a
# spelled-out number never counts.
LONG_LOOP_MIN_PHRASE = 3
LONG_LOOP_MIN_SPAN = 8


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

    @property
    def cer(self) -> float:
        return self.char_errors / self.ref_chars if self.ref_chars else float(self.char_errors > 0)

    def to_dict(self) -> dict:
        return {**asdict(self), "word_errors": self.word_errors, "wer": self.wer, "cer": self.cer}


def _word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(reference words, word errors) of whitespace-split texts; the reference has words."""
    ref_words = reference.split()
    out = jiwer.process_words(" ".join(ref_words), " ".join(hypothesis.split()))
    return len(ref_words), out.substitutions + out.deletions + out.insertions


def score_utterance(reference: str, hypothesis: str, normalizer: TextNormalizer | None = None) -> UtteranceScore:
    """Word and character errors of one clip; the normalized reference must have words.

    `normalizer` is the language's (`moonlora.data.text.normalizer_for`; English when not given).
    `load_manifest` skips rows whose transcript normalizes to nothing
    ("text_normalizes_to_nothing"), so this only fails when a caller bypasses it.
    """
    normalizer = normalizer or normalizer_for()
    ref_norm, hyp_norm = normalizer(reference), normalizer(hypothesis)
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


def score_nonspeech(hypothesis: str, normalizer: TextNormalizer | None = None) -> UtteranceScore:
    """A clip in which nobody speaks: every word the hypothesis holds is an insertion (no reference words)."""
    hyp_norm = (normalizer or normalizer_for())(hypothesis)
    words = len(hyp_norm.split())
    return UtteranceScore("", hyp_norm, 0, 0, 0, words, 0, len(hyp_norm), 0, len(hypothesis.split()))


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
    metric: str = "wer"  # the primary metric's name: `primary` is this field's value

    @property
    def primary(self) -> float:
        return metric_named(self.metric).rate(self)

    def to_dict(self) -> dict:
        return asdict(self)


def corpus_score(scores: list[UtteranceScore], metric: Metric = WER) -> CorpusScore:
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
        metric=metric.name,
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
class LoopSpan:
    """A phrase the hypothesis repeats back to back: words [start, end) of the hypothesis's `words`."""

    phrase: str  # one copy of the looping phrase, as it first occurs
    start: int
    end: int
    copies: float  # words in the span / words in the phrase (2.4 = two copies and 40 % of a third)
    text: str  # the looping span itself
    words: str = "normalized"  # which words: "normalized" (as scored) or "written" (`written_words`)

    def to_dict(self) -> dict:
        return asdict(self)


def _periodic_runs(words: list[str], period: int):
    """(start, end) of every maximal stretch of `words` that repeats itself with this period (end exclusive)."""
    i, n = 0, len(words)
    while i + period < n:
        if words[i] != words[i + period]:
            i += 1
            continue
        j = i
        while j + period < n and words[j] == words[j + period]:
            j += 1
        yield i, j + period
        i = j + 1


def _has_period(words: list[str], period: int) -> bool:
    return all(words[i] == words[i + period] for i in range(len(words) - period))


def _contains(words: list[str], part: list[str]) -> bool:
    size = len(part)
    return any(words[i : i + size] == part for i in range(len(words) - size + 1))


def find_long_loop(hyp_words: list[str], ref_words: list[str]) -> LoopSpan | None:
    """The first phrase of `LONG_LOOP_MIN_PHRASE` or more words that the hypothesis repeats back to back
    (two full copies plus at least one word of a third, or two full copies that end the hypothesis, as
    a decode cut off by its token cap leaves it) over at least `LONG_LOOP_MIN_SPAN` words; None when there
    is none, or when the reference holds that same span (a genuine repeat is no loop).

    Moonshine's loops on noise repeat a 10-20 word phrase until the token cap, which the short n-gram
    rule (three copies of up to six words) cannot see."""
    for period in range(LONG_LOOP_MIN_PHRASE, len(hyp_words) // 2 + 1):
        for start, end in _periodic_runs(hyp_words, period):
            size = end - start
            at_end = end == len(hyp_words)
            if size < LONG_LOOP_MIN_SPAN or size < 2 * period + (0 if at_end else 1):
                continue
            span = hyp_words[start:end]
            if any(_has_period(span, shorter) for shorter in range(1, period)) or _contains(ref_words, span):
                continue  # a shorter phrase's loop (the n-gram rule's, or found at its own period), or genuine
            return LoopSpan(" ".join(span[:period]), start, end, round(size / period, 2), " ".join(span))
    return None


@dataclass(frozen=True)
class UtteranceFlags:
    empty_hypothesis: bool
    token_cap_hit: bool
    repeat_loop: str | None  # the looping n-gram
    long_loop: LoopSpan | None = None  # the looping span of a longer phrase

    def names(self) -> list[str]:
        flags = []
        if self.empty_hypothesis:
            flags.append("empty_hypothesis")
        if self.token_cap_hit:
            flags.append("token_cap_hit")
        if self.repeat_loop is not None:
            flags.append("repeat_loop")
        if self.long_loop is not None:
            flags.append("long_loop")
        return flags

    @property
    def loops(self) -> bool:
        """Either loop rule fired."""
        return self.repeat_loop is not None or self.long_loop is not None


def written_words(text: str) -> list[str]:
    """The words as the model wrote them, lowercased, punctuation dropped: no number merging."""
    return re.findall(r"[^\W_]+(?:'[^\W_]+)*", text.lower())


def long_loop_of(score: UtteranceScore, hypothesis: str | None, reference: str | None) -> LoopSpan | None:
    """The long loop in the normalized words, else in the written ones: the English normalizer writes spelled
    digits as one number ("six six six ..." -> "666..."), which hides a loop inside a digit string."""
    found = find_long_loop(score.hyp_norm.split(), score.ref_norm.split())
    if found is None and hypothesis is not None:
        found = find_long_loop(written_words(hypothesis), written_words(reference or ""))
        found = found and replace(found, words="written")
    return found


def flag_utterance(score: UtteranceScore, token_cap_hit: bool, hypothesis: str | None = None,
                   reference: str | None = None) -> UtteranceFlags:
    """The clip's flags; `hypothesis` and `reference` as written let the long-loop rule also read the words
    before normalization."""
    hyp_words, ref_words = score.hyp_norm.split(), score.ref_norm.split()
    return UtteranceFlags(
        empty_hypothesis=not score.hyp_norm,
        token_cap_hit=token_cap_hit,
        repeat_loop=find_repeat_loop(hyp_words, ref_words),
        long_loop=long_loop_of(score, hypothesis, reference),
    )
