import json
import random
import re

import numpy as np
import pytest
import soundfile as sf

from moonlora.data.synth import espeak
from moonlora.data.synth.build import build_domain
from moonlora.data.synth.domains import DOMAINS, atc


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


def test_synthesize_word_is_padded_16k_float32():
    audio = espeak.synthesize("runway", "en-us+m3")
    sr = espeak.SAMPLE_RATE
    assert sr == 16000
    assert audio.dtype == np.float32 and audio.ndim == 1
    edge = int(0.45 * sr)
    assert np.abs(audio[:edge]).max() < 1e-3
    assert np.abs(audio[-edge:]).max() < 1e-3
    middle = audio[int(0.5 * sr):-int(0.5 * sr)]
    assert len(middle) > 0.1 * sr
    assert _rms(middle) > 0.01
    assert np.abs(audio).max() <= 1.0


def test_synthesis_does_not_depend_on_history():
    a = espeak.Espeak().synthesize("tower", "en-029+f4", words_per_minute=150, pitch=40)
    espeak.synthesize("speedbird four two seven", "en-us+m3")
    b = espeak.synthesize("tower", "en-029+f4", words_per_minute=150, pitch=40)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("voice", ["no-such-voice", "en-us+no-such-variant"])
def test_unknown_voice_raises(voice):
    with pytest.raises(RuntimeError, match="unknown eSpeak voice"):
        espeak.synthesize("hello", voice)


def test_atc_generator_deterministic_and_plain_words():
    first = atc.generate(200, random.Random(7))
    assert first == atc.generate(200, random.Random(7))
    assert first != atc.generate(200, random.Random(8))
    assert DOMAINS["atc"] is atc.generate
    for text in first:
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", text), text
    assert len(set(first)) > 150


def _read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_build_domain_deterministic_and_consistent(tmp_path):
    a = build_domain("atc", n=12, seed=3, out_dir=tmp_path / "a", progress=False)
    b = build_domain("atc", n=12, seed=3, out_dir=tmp_path / "b", progress=False)
    assert (a.n_train, a.n_test) == (8, 4)
    for name in ("train.jsonl", "test.jsonl", "synth_config.json"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes()

    train, test = _read_rows(a.train_manifest), _read_rows(a.test_manifest)
    assert {r["speaker"] for r in train}.isdisjoint(r["speaker"] for r in test)
    assert {r["text"] for r in train}.isdisjoint(r["text"] for r in test)
    for row in train + test:
        wav = a.out_dir / row["audio_filepath"]
        info = sf.info(wav)
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert row["duration"] == round(info.frames / info.samplerate, 3)
        assert wav.read_bytes() == (b.out_dir / row["audio_filepath"]).read_bytes()


def test_build_domain_refuses_existing_manifests(tmp_path):
    build_domain("atc", n=2, seed=0, out_dir=tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="--out .*already holds.*pass --overwrite"):
        build_domain("atc", n=2, seed=0, out_dir=tmp_path, progress=False)
    result = build_domain("atc", n=2, seed=1, out_dir=tmp_path, overwrite=True, progress=False)
    assert result.n_train + result.n_test == 2


def test_build_domain_rejects_shared_voices(tmp_path):
    with pytest.raises(ValueError, match="disjoint"):
        build_domain("atc", 4, 0, tmp_path, train_voices=("en-us",), test_voices=("en-us",))
