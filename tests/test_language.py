"""Languages and the primary metric: normalizer per language, CER for Chinese/Japanese/Korean, the contract
refusing comparisons across languages or metrics, English results unmoved, and diagnose on imported corpora."""

import json
from pathlib import Path

import pytest
import soundfile as sf

from conftest import write_tone
from moonlora.cli import main
from moonlora.configs import AudioConfig, DecodeConfig, ExperimentConfig, ScoringConfig
from moonlora.data.diagnose import DiagnoseConfig, diagnose
from moonlora.data.manifest import write_manifest
from moonlora.data.synth import espeak
from moonlora.data.text import normalize, normalizer_for
from moonlora.errors import ConfigError
from moonlora.eval.contract import ContractMismatch, EvalContract, require_comparable
from moonlora.eval.metrics import CER, WER, corpus_score, metric_for, score_utterance
from moonlora.runfolder import read_record

# A contract exactly as moonlora wrote it before languages and metrics were recorded (main at af5e68f),
# with the fingerprint that version computed for it.
ENGLISH_BEFORE = {
    "manifest_sha256": "a" * 64,
    "audio": {"sample_rate": 16000, "rms_target_dbfs": None, "silence_floor_dbfs": -70.0, "pipeline_version": "1"},
    "normalizer": {"name": "whisper-english", "version": "0.0.10"},
    "decode": {"num_beams": 1, "tokens_per_second": 6.5, "extra_tokens": 2, "dtype": "float32"},
    "model_sha256": "b" * 64, "adapter_sha256": None, "runtime": {"name": "torch", "precision": "float32"},
    "model_type": "moonshine", "load_check": None,
    "frontend": "raw 16 kHz samples; conv stem with its GroupNorm over each clip alone; full encoder attention; "
                "each clip's encoder states exact in any batch",
}
ENGLISH_BEFORE_FINGERPRINT = "d88ecfa37656"


def contract(**scoring) -> EvalContract:
    return EvalContract.build("a" * 64, AudioConfig(), DecodeConfig(), "b" * 64, None, model_type="moonshine",
                              scoring=ScoringConfig(**scoring))


# --- normalizers and metrics -------------------------------------------------------------------------------------


def test_each_language_gets_its_normalizer():
    assert normalize("Two one zero, Mr. Smith!") == "210 mister smith"  # English: today's behaviour
    assert normalizer_for("en").name == "whisper-english"
    assert normalize("¿Dónde está la estación? Número 5", "es") == "dónde está la estación número 5"
    assert normalizer_for("de").name == "whisper-basic"
    assert normalize("Straße ÜBER drei", "de") == "straße über drei"  # no English number rules
    assert normalize("今日は、いい 天気 ですね。", "ja") == "今日はいい天気ですね"  # basic, then spaces removed
    assert normalizer_for("zh").name == normalizer_for("yue").name == "whisper-basic-nospace"


def test_cer_is_primary_for_cjk_and_wherever_asked():
    assert metric_for(ScoringConfig("ja")) is CER and metric_for(ScoringConfig("ko")) is CER
    assert metric_for(ScoringConfig("zh")) is CER and metric_for(ScoringConfig("yue")) is CER
    assert metric_for(ScoringConfig("es")) is WER and metric_for(ScoringConfig()) is WER
    assert metric_for(ScoringConfig("es", metric="cer")) is CER and metric_for(ScoringConfig("ja", "wer")) is WER
    for bad in ({"language": "German"}, {"language": "EN"}, {"metric": "bleu"}):
        with pytest.raises(ConfigError):
            ScoringConfig(**bad)


def test_cer_counts_characters_without_spaces_for_japanese():
    score = score_utterance("今日は いい天気", "今日は いい 元気", normalizer_for("ja"))
    assert (score.ref_norm, score.hyp_norm) == ("今日はいい天気", "今日はいい元気")
    assert (score.ref_chars, score.char_errors) == (7, 1)  # a space in the hypothesis is no error
    corpus = corpus_score([score], CER)
    assert corpus.metric == "cer" and corpus.primary == pytest.approx(1 / 7)


# --- the contract --------------------------------------------------------------------------------------------------


def test_an_english_contract_from_before_keeps_its_fingerprint():
    old = EvalContract.from_dict(ENGLISH_BEFORE)
    assert (old.language, old.metric) == ("en", "wer")
    assert old.fingerprint == ENGLISH_BEFORE_FINGERPRINT
    new = contract()  # what this moonlora writes for English WER: the same protocol, the same fingerprint
    new = EvalContract.from_dict({**new.to_dict(), "normalizer": ENGLISH_BEFORE["normalizer"]})
    assert new.fingerprint == ENGLISH_BEFORE_FINGERPRINT
    require_comparable(old, new)
    assert contract(metric="wer").fingerprint == contract().fingerprint


def test_the_contract_refuses_other_languages_and_metrics_naming_the_field():
    english, spanish = contract(), contract(language="es")
    assert spanish.fingerprint != english.fingerprint
    with pytest.raises(ContractMismatch, match=r"language \('en' vs 'es'\)") as error:
        require_comparable(english, spanish)
    assert "normalizer.name" in str(error.value)
    with pytest.raises(ContractMismatch, match=r"metric \('wer' vs 'cer'\)"):
        require_comparable(english, contract(metric="cer"))
    with pytest.raises(ContractMismatch, match=r"metric \('wer' vs 'cer'\)"):
        require_comparable(contract(language="ja", metric="wer"), contract(language="ja"))
    old_record = {**ENGLISH_BEFORE}  # a stored English result against a new Japanese one
    with pytest.raises(ContractMismatch, match="language"):
        require_comparable(EvalContract.from_dict(old_record), contract(language="ja"))


# --- end to end on synthetic speech -------------------------------------------------------------------------------


def spoken_set(folder: Path, name: str, voice: str, texts: list[str], speakers: int = 2) -> Path:
    rows = []
    for index, text in enumerate(texts):
        path = folder / name / f"{index:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        audio = espeak.synthesize(text, voice, pitch=30 + 20 * (index % speakers))
        sf.write(path, audio[: 16000 * 2], 16000, subtype="PCM_16")  # 2 s at most: the tiny model is slow enough
        rows.append({"audio_filepath": str(path), "text": text, "duration": min(len(audio), 32000) / 16000,
                     "speaker": f"{name}-{index % speakers}"})
    return write_manifest(rows, folder / f"{name}.jsonl")


GERMAN = ["Guten Morgen, wie geht es dir?", "Der Zug fährt um acht Uhr ab.", "Ich trinke gern Kaffee.",
          "Das Wetter ist heute schön.", "Wir treffen uns am Bahnhof.", "Die Straße ist sehr lang.",
          "Er liest ein Buch über Musik.", "Sie wohnt in einer großen Stadt."]
JAPANESE = ["おはようございます", "きょうはいいてんきですね", "えきはどこですか", "ありがとうございました",
            "すこしまってください", "でんしゃがきました", "みずをください", "またあした"]


def experiment_argv(out: Path, train: Path, main_manifest: Path, model: Path, *extra: str) -> list[str]:
    return ["--quiet", "experiment", "--output-dir", str(out), "--dataset-path", str(train),
            "--manifest-path", str(main_manifest), "--model", str(model), "--device", "cpu", "--max-steps", "2",
            "--eval-interval", "1", "--train-batch-size", "2", "--lora-r", "2", "--min-val-clips", "1",
            "--val-fraction", "0.34", "--seed", "3", *extra]


def test_a_german_domain_runs_through_experiment_with_its_language(tiny_model_dir, tmp_path, capsys):
    espeak.check_voice("de")
    train = spoken_set(tmp_path / "d", "train", "de", GERMAN[:6], speakers=3)
    held_out = spoken_set(tmp_path / "d", "main", "de+f2", GERMAN[6:])
    run = tmp_path / "run-de"
    assert main(experiment_argv(run, train, held_out, tiny_model_dir, "--language", "de")) == 0
    assert "baseline WER" in capsys.readouterr().out
    record = read_record(run)
    assert record.config.scoring == ScoringConfig("de")
    for side in (record.baseline, record.tuned):
        stored = side["main"].contract
        assert (stored["language"], stored["metric"], stored["normalizer"]["name"]) == ("de", "wer", "whisper-basic")
        assert side["main"].metric == "wer"
    assert record.comparisons["main"].metric == "wer"
    summary = json.loads((run / "baseline" / "main" / "summary.json").read_text())
    assert (summary["language"], summary["metric"]) == ("de", "wer")


def test_japanese_is_scored_by_cer_in_transcribe_experiment_decide_and_report(tiny_model_dir, tmp_path, capsys):
    espeak.check_voice("ja")
    train = spoken_set(tmp_path / "d", "train", "ja", JAPANESE[:6], speakers=3)
    held_out = spoken_set(tmp_path / "d", "main", "ja", JAPANESE[6:])

    out = tmp_path / "scored"
    assert main(["--quiet", "transcribe", "--manifest", str(held_out), "--model", str(tiny_model_dir),
                 "--device", "cpu", "--language", "ja", "--output-dir", str(out)]) == 0
    assert "primary metric CER" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["metric"], summary["contract"]["metric"], summary["contract"]["language"]) == ("cer", "cer", "ja")
    assert summary["contract"]["normalizer"]["name"] == "whisper-basic-nospace"
    rows = [json.loads(line) for line in (out / "transcripts.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(" " not in row["ref_norm"] and "cer" in row for row in rows)

    run = tmp_path / "run-ja"
    assert main(experiment_argv(run, train, held_out, tiny_model_dir, "--language", "ja")) == 0
    assert "baseline CER" in capsys.readouterr().out
    record = read_record(run)
    assert record.config.scoring.primary_metric == "cer" and record.training.metric == "cer"
    main_before, main_after = record.baseline["main"], record.tuned["main"]
    assert main_before.metric == "cer" and main_before.contract["metric"] == "cer"
    comparison = record.comparisons["main"]
    assert comparison.metric == "cer" and comparison.baseline_wer == pytest.approx(main_before.cer)
    assert comparison.tuned_wer == pytest.approx(main_after.cer)
    assert record.training.intervals[0]["val_wer"] == pytest.approx(record.baseline["val"].cer)

    assert main(["decide", str(run)]) in (0, 1)
    verdicts = capsys.readouterr().out
    assert f"main CER {main_before.cer:.4f}" in verdicts and "main WER" not in verdicts

    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.md"), "--html", str(tmp_path / "r.html")]) == 0
    report = (tmp_path / "r.md").read_text()
    assert "Baseline CER" in report and "Baseline WER" not in report and "CER (character error rate)" in report
    assert "Baseline CER" in (tmp_path / "r.html").read_text()

    # A Japanese CER result never compares with an English WER one, --allow or not.
    english = tmp_path / "scored-en"
    assert main(["--quiet", "transcribe", "--manifest", str(held_out), "--model", str(tiny_model_dir),
                 "--device", "cpu", "--output-dir", str(english)]) == 0
    capsys.readouterr()
    assert main(["compare", str(out), str(english), "--allow", "language", "--allow", "normalizer",
                 "--allow", "metric"]) == 2
    assert "metric ('cer' vs 'wer')" in capsys.readouterr().err

    shipped = tmp_path / "shipped-ja"  # the export manifest says which metric the run's numbers are
    assert main(["--quiet", "export", str(run), "--out", str(shipped)]) == 0
    saved = json.loads((shipped / "manifest.json").read_text())
    assert saved["run_metric"]["main"] == "cer" and saved["run_tuned_primary"]["main"] == pytest.approx(main_after.cer)
    assert saved["run_tuned_wer"]["main"] == pytest.approx(main_after.wer)


def test_compare_bootstraps_cer_on_character_counts(tiny_model_dir, tmp_path, capsys):
    held_out = spoken_set(tmp_path / "d", "main", "ja", JAPANESE[:3])
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        assert main(["--quiet", "transcribe", "--manifest", str(held_out), "--model", str(tiny_model_dir),
                     "--device", "cpu", "--language", "ja", "--output-dir", str(folder)]) == 0
    capsys.readouterr()
    assert main(["compare", str(first), str(second)]) == 0
    shown = capsys.readouterr().out
    assert "CER(B) - CER(A)" in shown and "WER(B)" not in shown


# --- configs and sweep axes ----------------------------------------------------------------------------------------


def test_language_and_metric_are_experiment_flags_and_sweep_axes():
    from moonlora.sweep import AXES

    config = ExperimentConfig.from_flags({"output_dir": "o", "dataset_path": "d", "manifest_path": "m",
                                          "language": "ko"})
    assert config.scoring.primary_metric == "cer"
    assert {"language", "metric"} <= set(AXES)
    saved = ExperimentConfig("o", "d", "m").to_dict()
    saved.pop("scoring")  # a config written before languages were recorded
    assert ExperimentConfig.from_dict(saved).scoring == ScoringConfig()


# --- diagnose ------------------------------------------------------------------------------------------------------


def test_diagnose_shows_speakers_and_language_and_flags_an_all_caps_corpus(tmp_path):
    texts = ["CLEARED TO LAND RUNWAY TWO SEVEN", "CONTACT TOWER ONE ONE EIGHT DECIMAL SEVEN", "HOLD SHORT",
             "turn left heading 270", "CLIMB AND MAINTAIN FLIGHT LEVEL THREE FIVE ZERO"]
    rows = [{"audio_filepath": str(write_tone(tmp_path / f"{i}.wav", 1.5, seed=i)), "text": text, "duration": 1.5,
             "speaker": f"spk{i % 3}"} for i, text in enumerate(texts)]
    manifest = write_manifest(rows, tmp_path / "train.jsonl")
    (tmp_path / "import_report.json").write_text(json.dumps({"language": "en", "clips": 5}))

    report = diagnose(DiagnoseConfig(manifests=(str(manifest),), max_seconds=20)).manifests[0]
    assert (report.speakers, report.language) == (3, "en")
    assert report.language_source.endswith("import_report.json")
    assert report.text_style.all_caps == 4 and report.text_style.mostly_all_caps
    caps = [p for p in report.problems if p.kind == "all_caps_transcript"]
    assert [p.line for p in caps] == [1, 2, 3, 5] and "4 of 5 transcripts in capitals only" in caps[0].detail
    mixed = [p for p in report.problems if p.kind == "number_style_mix"]
    assert [p.line for p in mixed] == [4] and "'turn left heading 270'" in mixed[0].detail

    given = diagnose(DiagnoseConfig(manifests=(str(manifest),), max_seconds=20, language="de")).manifests[0]
    assert (given.language, given.language_source) == ("de", "--language")

    lower = write_manifest([{**row, "text": row["text"].lower().replace("270", "two seven zero")} for row in rows],
                           tmp_path / "clean" / "clean.jsonl")
    clean = diagnose(DiagnoseConfig(manifests=(str(lower),), max_seconds=20)).manifests[0]
    assert clean.language is None and not [p for p in clean.problems if p.kind in ("all_caps_transcript",
                                                                                      "number_style_mix")]


def test_diagnose_cli_prints_the_corpus_table(tmp_path, capsys):
    rows = [{"audio_filepath": str(write_tone(tmp_path / f"{i}.wav", 1.5, seed=i)), "text": "HELLO WORLD " * (i + 1),
             "duration": 1.5} for i in range(3)]
    manifest = write_manifest(rows, tmp_path / "m.jsonl")
    assert main(["diagnose", "--manifests", str(manifest), "--max-seconds", "20", "--language", "es"]) == 0
    out = capsys.readouterr().out
    assert "| 3/3 |" in out and "es (--language)" in out and "all_caps_transcript" in out
