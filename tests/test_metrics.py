import jiwer
import pytest

from moonlora.eval.metrics import corpus_score, find_repeat_loop, flag_utterance, score_utterance


def test_normalized_scoring_ignores_case_punctuation_and_number_style():
    score = score_utterance("Turn left heading two one zero.", "turn left, heading 210")
    assert score.word_errors == 0 and score.wer == 0.0


def test_error_counts_match_jiwer_and_corpus_is_error_weighted():
    pairs = [("the cat sat on the mat", "the cat sat in mat"), ("hello world", "hello big world"), ("a b c d", "")]
    scores = [score_utterance(r, h) for r, h in pairs]
    assert (scores[0].substitutions, scores[0].deletions, scores[0].insertions) == (1, 1, 0)
    assert scores[1].insertions == 1
    assert scores[2].deletions == 4
    corpus = corpus_score(scores)
    expected = jiwer.wer([s.ref_norm for s in scores], [s.hyp_norm for s in scores])
    assert corpus.wer == pytest.approx(expected)
    assert corpus.wer == pytest.approx(7 / 12)


@pytest.mark.parametrize("reference", ["", "   ", "...", "?!", "uh, um."])
def test_reference_without_words_is_refused_not_scored(reference):
    with pytest.raises(ValueError, match="no words once normalized"):
        score_utterance(reference, "something here")


def test_flags():
    empty = flag_utterance(score_utterance("hello", ""), token_cap_hit=False)
    assert empty.names() == ["empty_hypothesis"]
    loop = flag_utterance(score_utterance("fail again", "fail again fail again fail again fail again"), token_cap_hit=True)
    assert loop.repeat_loop == "fail again" and loop.names() == ["token_cap_hit", "repeat_loop"]


def test_repeat_loop_ignores_repeats_the_reference_has():
    assert find_repeat_loop("squawk four four four four".split(), "squawk four four four four".split()) is None
    assert find_repeat_loop("squawk four four four four".split(), "squawk four".split()) == "four"
    assert find_repeat_loop("a b a b".split(), []) is None  # two copies is not a loop
    assert find_repeat_loop("x a b c a b c a b c".split(), []) == "a b c"


def test_raw_wer_sees_style_drift_that_normalized_wer_hides():
    scores = [score_utterance("Ever tried. Ever failed.", "ever tried ever failed")]
    corpus = corpus_score(scores)
    assert corpus.wer == 0.0
    assert corpus.raw_wer == 1.0  # every word differs as written: case or trailing period
    assert corpus_score([score_utterance("Hello world.", "Hello world")]).raw_wer == 0.5
