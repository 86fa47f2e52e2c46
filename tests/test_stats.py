"""Paired bootstrap of the corpus-WER difference (moonlora.eval.stats)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from moonlora.data.manifest import Utterance
from moonlora.eval.metrics import UtteranceScore
from moonlora.comparison import FAIL, INCONCLUSIVE, PASS, Comparison, parity_outcome
from moonlora.eval.stats import compare_results, format_delta, paired_bootstrap
from moonlora.schema import SchemaError


def _case(n: int = 200, seed: int = 1):
    rng = np.random.default_rng(seed)
    words = rng.integers(3, 20, size=n)
    base = rng.binomial(words, 0.2)
    return base, words


def slow_bootstrap(base, tuned, words, resamples, seed, confidence=0.95):
    """Plain-Python reference with the same draws as stats.bootstrap_deltas."""
    rng = np.random.default_rng(seed)
    n, deltas = len(words), []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        w = sum(int(words[i]) for i in idx)
        b = sum(int(base[i]) for i in idx)
        t = sum(int(tuned[i]) for i in idx)
        deltas.append((t - b) / w if w else 0.0)
    alpha = 1 - confidence
    low, high = np.quantile(deltas, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high), sum(d < 0 for d in deltas) / resamples


def test_point_estimate_is_corpus_wer_difference():
    base, words = _case()
    tuned = np.maximum(base - 1, 0)
    result = paired_bootstrap(base, words, tuned, resamples=200)
    assert result.baseline_wer == pytest.approx(base.sum() / words.sum())
    assert result.tuned_wer == pytest.approx(tuned.sum() / words.sum())
    assert result.delta == pytest.approx(result.tuned_wer - result.baseline_wer)
    assert result.relative_delta == pytest.approx(result.delta / result.baseline_wer)
    assert result.clips == 200 and result.resamples == 200 and result.seed == 0
    # corpus WER, not the mean of per-utterance ratios
    assert result.baseline_wer != pytest.approx(np.mean(base / words))


def test_identical_inputs_give_zero():
    base, words = _case()
    result = paired_bootstrap(base, words, base.copy(), resamples=500)
    assert (result.delta, result.ci_low, result.ci_high, result.p_tuned_better) == (0.0, 0.0, 0.0, 0.0)
    assert not result.excludes_zero


def test_clear_improvement_excludes_zero():
    base, words = _case()
    base = np.maximum(base, 2)
    tuned = base - 2
    result = paired_bootstrap(base, words, tuned, words, resamples=1000)
    assert result.ci_high < 0 and result.ci_low <= result.delta <= result.ci_high
    assert result.p_tuned_better == 1.0 and result.excludes_zero


def test_null_case_contains_zero():
    base, words = _case(n=400, seed=3)
    base = base + 1
    noise = np.random.default_rng(4).choice([-1, 1], size=len(base))
    noise[: len(noise) // 2], noise[len(noise) // 2 :] = 1, -1  # exactly symmetric
    result = paired_bootstrap(base, words, base + noise, resamples=2000)
    assert result.delta == 0.0
    assert result.ci_low < 0 < result.ci_high and not result.excludes_zero
    assert 0.3 < result.p_tuned_better < 0.7


def test_seed_determinism():
    base, words = _case()
    tuned = base + np.random.default_rng(5).integers(-1, 2, size=len(base)).clip(-base)
    a = paired_bootstrap(base, words, tuned, resamples=500, seed=7)
    assert a == paired_bootstrap(base, words, tuned, resamples=500, seed=7)
    b = paired_bootstrap(base, words, tuned, resamples=500, seed=8)
    assert (a.ci_low, a.ci_high) != (b.ci_low, b.ci_high)
    assert a.delta == b.delta


def test_chunking_does_not_change_result():
    base, words = _case(n=51)  # odd n: raw 32-bit draws would not split evenly
    tuned = np.maximum(base - np.random.default_rng(6).integers(0, 2, size=51), 0)
    results = [paired_bootstrap(base, words, tuned, resamples=3000, chunk_size=c) for c in (1000, 10_000, 7, 1)]
    assert all(r == results[0] for r in results[1:])


def test_matches_slow_reference():
    base, words = _case(n=13, seed=9)
    words[[2, 5]] = 0  # some zero-word utterances (insertions only)
    base[[2, 5]] = [1, 2]
    tuned = np.maximum(base + np.random.default_rng(10).integers(-2, 2, size=13), 0)
    result = paired_bootstrap(base, words, tuned, resamples=300, seed=11, chunk_size=64)
    low, high, p = slow_bootstrap(base, tuned, words, 300, 11)
    assert result.ci_low == pytest.approx(low) and result.ci_high == pytest.approx(high)
    assert result.p_tuned_better == pytest.approx(p)


def test_zero_word_resamples_count_as_zero():
    result = paired_bootstrap([1, 0], [0, 0], [0, 3], resamples=100)
    assert (result.ci_low, result.ci_high, result.p_tuned_better) == (0.0, 0.0, 0.0)
    assert result.baseline_wer == 1.0 and result.tuned_wer == 3.0
    assert paired_bootstrap([0], [0], [0], resamples=5).relative_delta is None


def test_input_validation():
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap([], [], [])
    with pytest.raises(ValueError, match="baseline_errors=3.*tuned_errors=2"):
        paired_bootstrap([1, 2, 3], [4, 5, 6], [1, 2])
    with pytest.raises(ValueError, match="tuned_ref_words=1"):
        paired_bootstrap([1, 2], [4, 5], [1, 2], [4])
    with pytest.raises(ValueError, match="differ"):
        paired_bootstrap([1, 2], [4, 5], [1, 2], [4, 6])
    with pytest.raises(ValueError, match="integers"):
        paired_bootstrap([1.5, 2], [4, 5], [1, 2])


def test_to_dict_and_format():
    result = Comparison(0.5, 0.3766, -0.1234, -0.15, -0.098, 1.0, 10_000, 0, 100)
    row = result.to_dict()
    assert row["delta"] == -0.1234 and row["excludes_zero"] is True
    assert row["relative_delta"] == pytest.approx(-0.2468)
    assert format_delta(result) == "-0.1234 [-0.1500, -0.0980], P(better)=1.000"
    assert Comparison.from_dict(json.loads(json.dumps(row))) == result  # the derived fields are recomputed


def test_a_comparison_with_an_unknown_field_is_refused_in_one_line():
    row = {**Comparison(0.5, 0.4, -0.1, -0.2, 0.0, 0.9, 100, 0, 10).to_dict(), "wer_a": 0.5}
    with pytest.raises(SchemaError, match=r"^record.comparisons.main: unknown field\(s\) wer_a$"):
        Comparison.from_dict(row, "record.comparisons.main")


@pytest.mark.parametrize("high, margin, holds", [(0.005, 0.005, True), (0.0051, 0.005, False), (-0.2, 0.0, True)])
def test_non_inferiority_is_the_ci_high_end_at_most_the_margin(high, margin, holds):
    assert Comparison(0.2, 0.2, 0.0, high - 0.1, high, 0.5, 100, 0, 10).non_inferior(margin) is holds


@pytest.mark.parametrize("to_torch, to_baseline, expected", [
    ((-0.004, 0.003), (-0.9, -0.7), PASS),          # shown within the 0.005 margin, better than baseline
    ((-0.019, 0.008), (-0.9, -0.7), INCONCLUSIVE),  # the CI straddles the margin: more clips would tell
    ((0.07, 0.15), (-0.9, -0.7), FAIL),             # shown worse than the measured model by more than the margin
    ((-0.004, 0.003), (-0.2, 0.01), FAIL),          # not shown better than the baseline
])
def test_export_parity_outcomes(to_torch, to_baseline, expected):
    ci = lambda low, high: Comparison(0.1, 0.1, (low + high) / 2, low, high, 0.5, 100, 0, 10)  # noqa: E731
    assert parity_outcome(ci(*to_torch), ci(*to_baseline), 0.005) == expected


WER_CONTRACT = SimpleNamespace(metric="wer")


def _clip(line: int, errors: int, words: int, sha: str | None = None):
    utterance = Utterance(Path(f"/d/clip{line}.wav"), "x", 1.0, None, line, 1.0, sha or f"sha{line}")
    score = UtteranceScore("", "", words, errors, 0, 0, 0, 0)
    return SimpleNamespace(utterance=utterance, score=score)


def test_compare_results_pairs_by_id():
    errors = [(3, 1), (0, 0), (5, 2), (2, 2), (4, 0)]
    words = [10, 4, 12, 8, 9]
    base = [_clip(i + 1, b, w) for i, ((b, _), w) in enumerate(zip(errors, words))]
    tuned = [_clip(i + 1, t, w) for i, ((_, t), w) in enumerate(zip(errors, words))]
    result = compare_results(SimpleNamespace(contract=WER_CONTRACT, clips=base), SimpleNamespace(contract=WER_CONTRACT, clips=tuned[::-1]), resamples=300, seed=2)
    expected = paired_bootstrap([b for b, _ in errors], words, [t for _, t in errors], resamples=300, seed=2)
    assert result == expected
    assert result.delta == pytest.approx((5 - 14) / 43)


def test_compare_results_refuses_mismatch():
    base = SimpleNamespace(contract=WER_CONTRACT, clips=[_clip(1, 1, 5), _clip(2, 1, 5)])
    with pytest.raises(ValueError, match=r"only in baseline \['2:clip2.wav'\].*only in tuned \['3:clip3.wav'\]"):
        compare_results(base, SimpleNamespace(contract=WER_CONTRACT, clips=[_clip(1, 0, 5), _clip(3, 0, 5)]))
    with pytest.raises(ValueError, match="same clips"):  # same id, different audio
        compare_results(base, SimpleNamespace(contract=WER_CONTRACT, clips=[_clip(1, 0, 5), _clip(2, 0, 5, sha="other")]))
    with pytest.raises(ValueError, match="twice"):
        compare_results(base, SimpleNamespace(contract=WER_CONTRACT, clips=[_clip(1, 0, 5), _clip(1, 0, 5)]))
