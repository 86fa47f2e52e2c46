"""Hallucinations made visible and gated: the loop rules, the non-speech canary, its scoring, decide's
non-speech criterion, the report's table and the decode-time repetition guard."""

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from moonlora.cli import main
from moonlora.configs import DecodeConfig, ExperimentConfig, TrainConfig
from moonlora.data.audio import AudioConfig
from moonlora.data.manifest import ManifestError, Utterance, load_manifest
from moonlora.data.synth.domains import DOMAINS
from moonlora.data.synth.nonspeech import LEVELS, build_nonspeech
from moonlora.data.text import normalizer_for
from moonlora.eval.contract import EvalContract
from moonlora.eval.evaluate import ClipResult, EvalResult
from moonlora.eval.metrics import (LoopSpan, corpus_score, find_long_loop, find_repeat_loop, flag_utterance,
                                   score_nonspeech, score_utterance, written_words)
from moonlora.eval.stats import compare_nonspeech
from moonlora.model.decoder import DecodedClip, repetition_cut
from moonlora.runfolder import NonspeechSide, NonspeechSummary, RunRecord, write_config_dict, write_record
from moonlora.verdict.decide import FAIL, NOT_ASSESSED, PASS, DecideConfig, decide
from moonlora.verdict.report import build_report

# The loop the issue quotes: the H4 adapter on a noisy radio clip, run to its token cap.
PHRASE = "contest center one two zero vertical tie prior dead high two nine nine"
CAPPED = f"{PHRASE} {PHRASE} contest center one two zero"
LOOP_WORDS = len(normalizer_for()(CAPPED).split())  # as scored: the normalizer writes numbers as digits
BABBLE = f"{30 * LOOP_WORDS / 40:.2f}"  # words per clip when 30 of 40 clips hold the loop


def flags(reference: str, hypothesis: str, cap_hit: bool = False) -> list[str]:
    return flag_utterance(score_utterance(reference, hypothesis), cap_hit).names()


# --- the loop rules ------------------------------------------------------------------------------------------------


def test_the_issues_loop_is_a_long_loop_that_the_ngram_rule_misses():
    words = CAPPED.split()  # 13 + 13 + 5 words
    assert find_repeat_loop(words, []) is None  # today's rule: up to 6 words, 3 copies
    assert find_long_loop(words, []) == LoopSpan(PHRASE, 0, 31, 2.38, CAPPED)
    # as scored: the normalizer writes "one two zero" as digits, and the loop is still seen
    assert flags("cessna one two three contact tower", CAPPED, cap_hit=True) == ["token_cap_hit", "long_loop"]


def test_a_loop_after_a_start_gives_its_span_and_two_copies_ending_the_text_count():
    hypothesis = f"cessna three alpha {PHRASE} {PHRASE}".split()
    assert find_long_loop(hypothesis, []) == LoopSpan(PHRASE, 3, 29, 2.0, f"{PHRASE} {PHRASE}")


def test_two_copies_in_the_middle_or_a_short_span_are_no_long_loop():
    assert find_long_loop(f"{PHRASE} {PHRASE} then climb".split(), []) is None  # two copies, not at the end
    assert find_long_loop("turn left turn left".split(), []) is None  # 2-word phrase: the n-gram rule's
    assert find_long_loop("one two three one two three".split(), []) is None  # 6 words < the 8-word span
    assert find_long_loop("x one two three one two three one two".split(), []) == LoopSpan(
        "one two three", 1, 9, 2.67, "one two three one two three one two")


def test_a_two_word_loop_is_the_ngram_rules_not_a_long_loop():
    hypothesis = "say again " * 6
    assert flags("say again", hypothesis, cap_hit=True) == ["token_cap_hit", "repeat_loop"]
    assert flag_utterance(score_utterance("say again", hypothesis), True).repeat_loop == "say again"


def test_a_genuine_repeat_the_reference_also_has_is_no_loop():
    reference = "cleared to land runway two seven cleared to land runway two seven"
    assert flags(reference, reference) == []
    assert flags(reference, "line up and wait line up and wait") == ["long_loop"]


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_no_reference_the_synthetic_domains_write_is_flagged(domain):
    """The demo's, the sweeps' and the hidden sets' references come from these generators: as hypotheses
    with no reference of their own, neither loop rule fires on any of 3000."""
    normalize, written = normalizer_for(), DOMAINS[domain](3000, random.Random(7))
    texts = [normalize(text) for text in written]
    assert [text for text in texts if find_long_loop(text.split(), [])] == []
    assert [text for text in texts if find_repeat_loop(text.split(), [])] == []
    assert [text for text in written if find_long_loop(written_words(text), [])] == []


def test_a_loop_inside_spelled_digits_is_seen_in_the_written_words():
    """The normalizer writes "one two six six seven ..." as one number, which hides the loop; the long-loop
    rule reads the written words too (a hypothesis the H4 adapter wrote, cut by its cap)."""
    hypothesis = ("Squat one two six six seven one seven one seven, squat one two six six seven one seven one seven, "
                  "squat one two six seven")
    score = score_utterance("speedbird one two squawk one two six seven", hypothesis)
    assert score.hyp_norm.split()[:2] == ["squat", "126671717"]
    assert find_long_loop(score.hyp_norm.split(), score.ref_norm.split()) is None
    loop = flag_utterance(score, True, hypothesis, "speedbird one two squawk one two six seven").long_loop
    assert (loop.words, loop.phrase, loop.start, loop.end) == (
        "written", "squat one two six six seven one seven one seven", 0, 24)


# --- the repetition guard --------------------------------------------------------------------------------------


def test_repetition_cut_keeps_one_copy_of_a_loop_and_leaves_clean_tokens_alone():
    phrase = list(range(100, 110))  # 10 tokens
    assert repetition_cut(phrase, 8) is None
    assert repetition_cut([1, 2, *phrase, *phrase], 8) == 12
    assert repetition_cut([1, 2, *phrase, *phrase[:5]], 8) is None  # not yet a second copy
    assert repetition_cut([7, 7, 7], 8) is None  # "zero zero zero": three short copies under 8 tokens
    assert repetition_cut([3, *[7] * 8], 8) == 2
    assert repetition_cut([4, 5, 6, 4, 5, 6, 4, 5, 6], 8) == 3  # three copies holding 9 tokens
    assert repetition_cut([1, 2, 3, 1, 2, 3], 4) is None and repetition_cut([1, 2, 3, 1, 2, 3], 3) == 3


def test_the_torch_guard_forces_the_end_on_the_looping_row_only_and_cuts_it_back():
    import torch

    from moonlora.model.torch_decoder import RepetitionGuard, guarded

    loop = [0, *range(20, 28), *range(20, 28)]  # start token, then two copies of an 8-token phrase
    clean = [0, *range(40, 56)]
    scores = torch.zeros(2, 60)
    out = RepetitionGuard(8, eos_token_id=2, prompt_length=1)(torch.tensor([loop, clean]), scores.clone())
    assert out[0].argmax().item() == 2 and out[0, 2] == 0.0 and out[0, 3] == torch.finfo(out.dtype).min
    assert torch.equal(out[1], scores[1])
    assert guarded(loop[1:], 8) == list(range(20, 28)) and guarded(clean[1:], 8) == clean[1:]
    assert guarded(loop[1:], 0) == loop[1:]  # off


def test_the_guard_is_recorded_only_when_on_so_no_fingerprint_moves():
    def contract(decode):
        return EvalContract.build("m" * 64, AudioConfig(), decode, "w" * 64, None)

    off, on = contract(DecodeConfig()), contract(DecodeConfig(repetition_guard=8))
    assert "repetition_guard" not in off.decode and on.decode["repetition_guard"] == 8
    assert off.fingerprint == contract(DecodeConfig(batch_size=3)).fingerprint != on.fingerprint
    assert off.differences(on) == ["decode.repetition_guard"]
    assert EvalContract.from_dict(on.to_dict()) == on
    legacy = {k: v for k, v in off.to_dict().items() if k not in ("nonspeech", "fingerprint")}
    assert EvalContract.from_dict(legacy).fingerprint == off.fingerprint
    with pytest.raises(ValueError, match="--repetition-guard"):
        DecodeConfig(repetition_guard=-1)


def test_the_guard_is_an_experiment_and_transcribe_flag():
    from moonlora.cli import build_parser

    args = build_parser().parse_args(["experiment", "--output-dir", "o", "--dataset-path", "d", "--manifest-path",
                                      "m", "--repetition-guard", "12", "--nonspeech-manifest", "n.jsonl"])
    config = ExperimentConfig.from_flags({k: v for k, v in vars(args).items() if k in
                                          ("output_dir", "dataset_path", "manifest_path", "repetition_guard",
                                           "nonspeech_manifest")})
    assert config.decode.repetition_guard == 12 and config.nonspeech_manifest == "n.jsonl"
    args = build_parser().parse_args(["transcribe", "--manifest", "m.jsonl", "--repetition-guard", "6", "--nonspeech"])
    assert args.repetition_guard == 6 and args.nonspeech


# --- the non-speech canary ---------------------------------------------------------------------------------------


def digest(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file() and not path.name.startswith(".moonlora")}


def test_the_canary_builds_the_same_bytes_twice_and_covers_every_kind(tmp_path):
    first = build_nonspeech(tmp_path / "a", seed=0, progress=False)
    build_nonspeech(tmp_path / "b", seed=0, progress=False)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(build_nonspeech(tmp_path / "c", seed=1, progress=False).out_dir)
    rows = [json.loads(line) for line in first.manifest.read_text().splitlines()]
    assert first.clips == len(rows) == 42 and {row["kind"] for row in rows} == set(LEVELS)
    assert {row["duration"] for row in rows} == {2.0, 10.0} and all(row["text"] == "" for row in rows)
    for row in rows:
        audio, rate = sf.read(first.out_dir / row["audio_filepath"])
        assert rate == 16000 and len(audio) == int(row["duration"] * 16000)
        rms = float(np.sqrt(np.mean(audio ** 2)))
        if row["level_dbfs"] is None:
            assert rms == 0.0
        else:
            assert 20 * np.log10(rms) == pytest.approx(row["level_dbfs"], abs=0.6), row


def test_a_nonspeech_manifest_loads_without_transcripts_and_skips_rows_with_words(tmp_path):
    canary = build_nonspeech(tmp_path / "n", progress=False).manifest
    loaded = load_manifest(canary, nonspeech=True)
    assert len(loaded.utterances) == 42 and loaded.nonspeech and {u.text for u in loaded.utterances} == {""}
    with pytest.raises(ManifestError, match="no usable rows"):
        load_manifest(canary)  # as speech: every row lacks a transcript
    rows = canary.read_text().splitlines()
    mixed = tmp_path / "n" / "mixed.jsonl"
    mixed.write_text(rows[0] + "\n" + json.dumps({**json.loads(rows[1]), "text": "hello there"}) + "\n")
    loaded = load_manifest(mixed, nonspeech=True)
    assert len(loaded.utterances) == 1 and [(s.line, s.kind) for s in loaded.skipped] == [(2, "has_words")]


def test_synth_nonspeech_through_the_cli(tmp_path, capsys):
    assert main(["--quiet", "synth", "--domain", "nonspeech", "--out", str(tmp_path / "ns")]) == 0
    assert "42 non-speech clips" in capsys.readouterr().out
    assert (tmp_path / "ns" / "nonspeech.jsonl").is_file()


# --- scoring, decide and the report -------------------------------------------------------------------------------


def nonspeech_result(hypotheses: list[str], adapter: str | None = None) -> EvalResult:
    clips = []
    for i, hypothesis in enumerate(hypotheses):
        utterance = Utterance(Path(f"clips/n{i}.wav"), "", 2.0, None, i + 1, 2.0, f"{i:064d}")
        score = score_nonspeech(hypothesis)
        clips.append(ClipResult(utterance, hypothesis, DecodedClip(hypothesis, [], 15, False), score,
                                flag_utterance(score, False)))
    contract = EvalContract.build("m" * 64, AudioConfig(), DecodeConfig(), "w" * 64, adapter, nonspeech=True)
    return EvalResult(Path("nonspeech.jsonl"), clips, [], corpus_score([c.score for c in clips]), contract,
                      2.0 * len(clips), 1.0, 1.0)


def side(result: EvalResult) -> NonspeechSide:
    return NonspeechSide(result.words_per_clip(), result.text_share(), sum(bool(c.hypothesis) for c in result.clips),
                         result.flag_counts(), result.looping_clips(), result.contract.to_dict())


def planted_summary(tuned_hypotheses: list[str]) -> NonspeechSummary:
    baseline = nonspeech_result([""] * 40)
    tuned = nonspeech_result(tuned_hypotheses, adapter="a" * 64)
    return NonspeechSummary("nonspeech.jsonl", 40, side(baseline), side(tuned),
                            compare_nonspeech(baseline, tuned, resamples=500, seed=0))


def test_nonspeech_scoring_counts_the_words_and_the_clips_with_text():
    score = score_nonspeech("Contest center, one two zero.")
    assert (score.ref_words, score.insertions, score.word_errors, score.hyp_norm) == (0, 3, 3, "contest center 120")
    summary = planted_summary([CAPPED] * 30 + [""] * 10)
    words, share = summary.comparisons["words_per_clip"], summary.comparisons["text_share"]
    assert (words.baseline_wer, words.metric, words.label) == (0.0, "words_per_clip", "words/clip")
    assert words.tuned_wer == summary.tuned.words_per_clip == pytest.approx(30 * LOOP_WORDS / 40)
    assert (share.baseline_wer, share.tuned_wer) == (0.0, 0.75) and share.ci_low > 0
    assert summary.tuned.flags["long_loop"] == 30 and summary.tuned.looping_clips[0] == "1:n0.wav"


def plant_run(root: Path, name: str, nonspeech: NonspeechSummary | None) -> Path:
    """A finished run folder whose speech sets improve clearly (so only the non-speech criterion can fail)."""
    from test_decide import plant

    return plant(root, name, nonspeech=nonspeech)


def test_an_adapter_that_writes_text_on_silence_fails_the_nonspeech_criterion(tmp_path):
    babbling = plant_run(tmp_path, "babble", planted_summary([CAPPED] * 30 + [""] * 10))
    decision = decide([babbling])
    verdicts = {v.criterion: v for v in decision.verdicts}
    assert verdicts["primary"].outcome == PASS and verdicts["non-speech"].outcome == FAIL and not decision.passed
    assert f"words/clip 0.00 -> {BABBLE}" in verdicts["non-speech"].detail
    assert "clips with text 0% -> 75%" in verdicts["non-speech"].detail
    assert "looping clips 0 -> 30" in verdicts["non-speech"].detail
    # a margin wide enough to hold it (non-default) passes it; the flag reaches the config
    loose = decide([babbling], DecideConfig(nonspeech_margin=40.0))
    assert [v.outcome for v in loose.verdicts if v.criterion == "non-speech"] == [PASS]
    assert main(["decide", str(babbling)]) == 1 and main(["decide", str(babbling), "--nonspeech-margin", "40"]) == 0


def test_one_stray_word_stays_within_the_margin_and_a_run_without_the_set_is_not_assessed(tmp_path):
    quiet = plant_run(tmp_path, "quiet", planted_summary(["uh okay"] + [""] * 39))
    assert [v.outcome for v in decide([quiet]).verdicts if v.criterion == "non-speech"] == [PASS]
    without = plant_run(tmp_path, "without", None)
    assert [v.outcome for v in decide([without]).verdicts if v.criterion == "non-speech"] == [NOT_ASSESSED]
    with pytest.raises(ValueError, match="--nonspeech-margin"):
        DecideConfig(nonspeech_margin=-1.0)


def test_the_report_shows_the_nonspeech_table_base_and_tuned(tmp_path):
    plant_run(tmp_path / "runs", "babble", planted_summary([CAPPED] * 30 + [""] * 10))
    result = build_report(tmp_path / "runs")
    assert f"| words/clip (40 clips) | 0.00 | {BABBLE} |" in result.markdown
    assert "| clips with text | 0 (0%) | 30 (75%) |" in result.markdown
    assert "| looping clips | 0 | 30 |" in result.markdown
    html = result.html_path.read_text()
    assert "Non-speech canary" in html and BABBLE in html


def test_the_onnxruntime_greedy_loop_honours_the_guard_too():
    """The deployed decoder's greedy loop (a scripted decoder graph that loops an 8-token phrase) stops at
    the loop's second copy and keeps one, as the torch decoder does; off, it runs to the cap."""
    from types import SimpleNamespace

    from moonlora.model.ort import EOS_ID, OrtModel

    phrase = list(range(10, 18))

    class LoopingGraph:
        def __init__(self):
            self.step = 0

        def get_outputs(self):
            return [SimpleNamespace(name="logits")]

        def run(self, names, feed):
            logits = np.zeros((1, 1, 40), dtype=np.float32)
            logits[0, -1, phrase[self.step % len(phrase)]] = 1.0
            self.step += 1
            return [logits]

    def greedy(guard):
        model = OrtModel(Path("."), None, LoopingGraph(), "int8", "s" * 64, past_shapes={})
        return model.greedy(np.zeros((1, 4, 8), dtype=np.float32), cap=40, guard=guard)

    assert greedy(8) == [*phrase, EOS_ID]
    assert greedy(0) == [*(phrase * 5)[:39], EOS_ID]
