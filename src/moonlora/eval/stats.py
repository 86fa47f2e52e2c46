"""Paired bootstrap over utterances for the corpus-WER (or CER) difference between two evaluations.

Its result is the one `moonlora.comparison.Comparison`. Torch-free (numpy only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from moonlora.comparison import Comparison
from moonlora.eval.metrics import metric_named

if TYPE_CHECKING:
    from moonlora.eval.evaluate import EvalResult

DEFAULT_RESAMPLES = 10_000
DEFAULT_CHUNK = 1_000  # resamples per vectorized step: chunk x clips int64 indices in memory


def _int_array(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must be non-negative")
    return array.astype(np.int64)


def _corpus_wer(errors: np.ndarray, ref_words: np.ndarray) -> float:
    """Total errors over total reference words (0 words: 0 errors -> 0.0, as corpus_score does)."""
    return float(errors.sum()) / max(int(ref_words.sum()), 1)


def _draw_indices(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """`rows` resamples of n indices, one generator call per resample so chunking cannot matter."""
    return np.stack([rng.integers(0, n, size=n) for _ in range(rows)])


def _chunk_deltas(
    indices: np.ndarray, base_err: np.ndarray, tuned_err: np.ndarray, ref_words: np.ndarray
) -> np.ndarray:
    """tuned - baseline corpus WER for each row of resampled indices; 0 where a row has no words."""
    words = ref_words[indices].sum(axis=1)
    diff = (tuned_err[indices] - base_err[indices]).sum(axis=1)
    out = np.zeros(len(indices), dtype=np.float64)
    np.divide(diff, words, out=out, where=words > 0)
    return out


def bootstrap_deltas(
    baseline_errors: np.ndarray,
    tuned_errors: np.ndarray,
    ref_words: np.ndarray,
    resamples: int,
    seed: int,
    chunk_size: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """The `resamples` paired-bootstrap deltas (validated int64 arrays of equal length n > 0)."""
    rng = np.random.default_rng(seed)
    n = len(ref_words)
    deltas = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, chunk_size):
        rows = min(chunk_size, resamples - start)
        indices = _draw_indices(rng, rows, n)
        deltas[start : start + rows] = _chunk_deltas(indices, baseline_errors, tuned_errors, ref_words)
    return deltas


def paired_bootstrap(
    baseline_errors,
    baseline_ref_words,
    tuned_errors,
    tuned_ref_words=None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
    chunk_size: int = DEFAULT_CHUNK,
    metric: str = "wer",
) -> Comparison:
    """Paired bootstrap of a corpus error rate (tuned - baseline) over utterances, same indices for both.

    The counts are the `metric`'s (words for WER, characters for CER: `moonlora.eval.metrics.Metric`);
    the arguments keep their WER names."""
    lengths = {
        "baseline_errors": len(baseline_errors), "baseline_ref_words": len(baseline_ref_words),
        "tuned_errors": len(tuned_errors),
    }
    if tuned_ref_words is not None:
        lengths["tuned_ref_words"] = len(tuned_ref_words)
    if len(set(lengths.values())) > 1:
        raise ValueError("length mismatch: " + ", ".join(f"{k}={v}" for k, v in lengths.items()))
    n = lengths["baseline_errors"]
    if n == 0:
        raise ValueError("paired bootstrap needs at least one utterance")
    if resamples < 1 or chunk_size < 1:
        raise ValueError(f"resamples and chunk_size must be >= 1, got {resamples} and {chunk_size}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    base_err = _int_array(baseline_errors, "baseline_errors")
    tuned_err = _int_array(tuned_errors, "tuned_errors")
    words = _int_array(baseline_ref_words, "baseline_ref_words")
    if tuned_ref_words is not None and not np.array_equal(words, _int_array(tuned_ref_words, "tuned_ref_words")):
        raise ValueError("tuned_ref_words differ from baseline_ref_words: the two runs did not score the same references")
    deltas = bootstrap_deltas(base_err, tuned_err, words, resamples, seed, chunk_size)
    alpha = 1.0 - confidence
    ci_low, ci_high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    baseline_wer, tuned_wer = _corpus_wer(base_err, words), _corpus_wer(tuned_err, words)
    return Comparison(
        baseline_wer=baseline_wer, tuned_wer=tuned_wer, delta=tuned_wer - baseline_wer,
        ci_low=float(ci_low), ci_high=float(ci_high), p_tuned_better=float(np.mean(deltas < 0)),
        resamples=resamples, seed=seed, clips=n, confidence=confidence, metric=metric,
    )


def _clip_key(clip) -> tuple[str, str]:
    return clip.utterance.utt_id, clip.utterance.audio_sha256


def _keyed(result: EvalResult, name: str) -> dict:
    keyed = {}
    for clip in result.clips:
        key = _clip_key(clip)
        if key in keyed:
            raise ValueError(f"{name} holds clip {key[0]} twice")
        keyed[key] = clip
    return keyed


def compare_results(
    baseline: EvalResult, tuned: EvalResult, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    confidence: float = 0.95,
) -> Comparison:
    """Paired bootstrap of two evaluations of one manifest, clips paired by utt_id and audio hash, on
    the primary metric both contracts name (errors and reference units of that metric per clip)."""
    if baseline.contract.metric != tuned.contract.metric:
        raise ValueError(f"baseline scored {baseline.contract.metric}, tuned {tuned.contract.metric}: no paired delta")
    metric = metric_named(baseline.contract.metric)
    base, tune = _keyed(baseline, "baseline"), _keyed(tuned, "tuned")
    if base.keys() != tune.keys():
        only_base = [k[0] for k in base if k not in tune]
        only_tuned = [k[0] for k in tune if k not in base]
        raise ValueError(
            "baseline and tuned do not hold the same clips (utt_id + audio_sha256): "
            f"{len(only_base)} only in baseline {only_base[:5]}, {len(only_tuned)} only in tuned {only_tuned[:5]}"
        )
    keys = list(base)
    base_counts, tuned_counts = [metric.counts(base[k].score) for k in keys], [metric.counts(tune[k].score) for k in keys]
    return paired_bootstrap(
        [errors for errors, _ in base_counts], [units for _, units in base_counts],
        [errors for errors, _ in tuned_counts], [units for _, units in tuned_counts],
        resamples=resamples, seed=seed, confidence=confidence, metric=metric.name,
    )


def compare_nonspeech(baseline: EvalResult, tuned: EvalResult, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, Comparison]:
    """Two paired bootstraps over the clips of a non-speech manifest, by the one `paired_bootstrap` with
    one unit per clip: "words_per_clip" (words emitted per clip) and "text_share" (share of clips
    with any word). Negative deltas: the tuned model writes less on non-speech."""
    base, tune = _keyed(baseline, "baseline"), _keyed(tuned, "tuned")
    if base.keys() != tune.keys():
        raise ValueError("baseline and tuned do not hold the same non-speech clips (utt_id + audio_sha256)")
    keys = list(base)
    ones = [1] * len(keys)
    counts = {
        "words_per_clip": lambda clip: len(clip.score.hyp_norm.split()),
        "text_share": lambda clip: int(bool(clip.score.hyp_norm)),
    }
    return {name: paired_bootstrap([count(base[k]) for k in keys], ones, [count(tune[k]) for k in keys], ones,
                                   resamples=resamples, seed=seed, confidence=confidence, metric=name)
            for name, count in counts.items()}


def format_delta(result: Comparison) -> str:
    """`delta [ci_low, ci_high], P(better)=p` for tables."""
    return (
        f"{result.delta:.4f} [{result.ci_low:.4f}, {result.ci_high:.4f}], "
        f"P(better)={result.p_tuned_better:.3f}"
    )
