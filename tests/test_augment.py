import hashlib
import json

import numpy as np
import pytest
import soundfile as sf

from conftest import write_tone
from moonlora.data.audio import SAMPLE_RATE, load_audio
from moonlora.data.augment import AugmentConfig, augment_manifest, change_speed
from moonlora.data.manifest import load_manifest


def run(manifest, out_dir, **effects):
    return augment_manifest(AugmentConfig(manifest=str(manifest), out_dir=str(out_dir), **effects), progress=False)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def tree_hashes(folder):
    return {p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def three_tone_manifest(tmp_path):
    """1 s of 100 Hz + 1 kHz + 6 kHz, equal amplitude."""
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    wave = sum(0.2 * np.sin(2 * np.pi * f * t) for f in (100, 1000, 6000))
    src = tmp_path / "src"
    src.mkdir()
    sf.write(str(src / "tones.wav"), wave.astype(np.float32), SAMPLE_RATE, subtype="FLOAT")
    manifest = src / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "tones.wav", "text": "three tones"}) + "\n")
    return manifest, src / "tones.wav"


def level_db(wave, freq):
    """Windowed spectral level at `freq` (1 s clips -> 1 Hz bins), in dB."""
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return 20 * np.log10(spectrum[freq - 2 : freq + 3].max() + 1e-12)


@pytest.mark.parametrize("color", ["white", "pink"])
def test_noise_hits_requested_snr(tone_manifest, tmp_path, color):
    result = run(tone_manifest, tmp_path / "aug", noise_snr_db=10.0, noise_color=color)
    assert result.written == 5 and not result.skipped
    for row, utt in zip(load_manifest(result.manifest_path).utterances, load_manifest(tone_manifest).utterances):
        clean, noisy = load_audio(utt.audio_filepath), load_audio(row.audio_filepath)
        assert noisy.size == clean.size
        snr = 20 * np.log10(rms(clean) / rms(noisy - clean))
        assert snr == pytest.approx(10.0, abs=0.5)


@pytest.mark.parametrize("band, kept_1k_db", [("telephone", 1.0), ("radio", 3.0)])
def test_band_limit_keeps_speech_band_only(tmp_path, band, kept_1k_db):
    manifest, source = three_tone_manifest(tmp_path)
    result = run(manifest, tmp_path / "aug", band=band)
    before, after = load_audio(source), load_audio(result.out_dir / "clips" / "tones.wav")
    assert abs(level_db(after, 1000) - level_db(before, 1000)) < kept_1k_db
    for freq in (100, 6000):
        assert level_db(before, freq) - level_db(after, freq) > 20.0
    assert np.max(np.abs(after)) <= 1.0  # radio soft-clips; neither may exceed full scale


def test_speed_shortens_and_manifest_duration_matches_file(tone_manifest, tmp_path):
    result = run(tone_manifest, tmp_path / "aug", speed=1.25)
    originals = load_manifest(tone_manifest).utterances
    rows = [json.loads(line) for line in result.manifest_path.read_text().splitlines()]
    assert len(rows) == len(originals)
    for row, utt in zip(rows, originals):
        info = sf.info(str(result.out_dir / row["audio_filepath"]))
        assert info.samplerate == SAMPLE_RATE and info.subtype == "PCM_16" and info.channels == 1
        expected = utt.file_duration * SAMPLE_RATE / 1.25
        assert abs(info.frames - expected) <= 4
        assert row["duration"] == round(info.frames / SAMPLE_RATE, 3)
        assert row["text"] == utt.text and row["speaker"] == utt.speaker
        assert row["source_audio"] == str(utt.audio_filepath)


def test_speed_changes_pitch():
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    fast = change_speed(np.sin(2 * np.pi * 400 * t).astype(np.float32), 1.25)
    peak_hz = np.argmax(np.abs(np.fft.rfft(fast))) * SAMPLE_RATE / fast.size
    assert peak_hz == pytest.approx(500, abs=3)


def test_same_seed_is_byte_identical_and_other_seed_differs(tone_manifest, tmp_path):
    effects = dict(noise_snr_db=5.0, band="telephone", speed=0.9)
    a = tree_hashes(run(tone_manifest, tmp_path / "a", seed=3, **effects).out_dir)
    b = tree_hashes(run(tone_manifest, tmp_path / "b", seed=3, **effects).out_dir)
    c = tree_hashes(run(tone_manifest, tmp_path / "c", seed=4, **effects).out_dir)
    wavs = [k for k in a if k.suffix == ".wav"]
    assert len(wavs) == 5
    for key in [*wavs, next(k for k in a if k.name == "manifest.jsonl")]:
        assert a[key] == b[key]
    assert all(a[key] != c[key] for key in wavs)


def test_originals_untouched_and_config_written(tone_manifest, tmp_path):
    before = tree_hashes(tmp_path)
    result = run(tone_manifest, tmp_path / "aug", noise_snr_db=20.0, band="radio", speed=1.1, seed=7)
    after = tree_hashes(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    config = json.loads(result.config_path.read_text())
    assert config["noise_snr_db"] == 20.0 and config["band"] == "radio" and config["speed"] == 1.1
    assert config["seed"] == 7 and config["manifest"] == str(tone_manifest)


def test_refuses_to_overwrite_unless_asked(tone_manifest, tmp_path):
    out = tmp_path / "aug"
    run(tone_manifest, out, noise_snr_db=10.0)
    with pytest.raises(FileExistsError, match=str(out)):
        run(tone_manifest, out, noise_snr_db=10.0)
    result = run(tone_manifest, out, noise_snr_db=10.0, overwrite=True)
    assert result.written == 5


def test_refuses_out_dir_whose_clips_are_the_originals(tone_manifest, tmp_path):
    with pytest.raises(ValueError, match="original audio"):
        run(tone_manifest, tmp_path, noise_snr_db=10.0)


def test_missing_audio_row_is_reported_and_good_rows_copied(tmp_path):
    write_tone(tmp_path / "good1.wav", 1.0)
    write_tone(tmp_path / "good2.wav", 0.5, seed=1)
    rows = [
        {"audio_filepath": "good1.wav", "text": "one"},
        {"audio_filepath": "gone.wav", "text": "missing"},
        {"audio_filepath": "good2.wav", "text": "two"},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(manifest, tmp_path / "aug", band="telephone")
    assert result.written == 2
    assert [(s.line, s.kind) for s in result.skipped] == [(2, "missing_audio")]
    copied = load_manifest(result.manifest_path)
    assert [u.text for u in copied.utterances] == ["one", "two"] and not copied.skipped
    assert json.loads(result.config_path.read_text())["skipped"][0]["kind"] == "missing_audio"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "at least one"),
        ({"noise_snr_db": 500.0}, "noise_snr_db"),
        ({"speed": 0.5}, "speed"),
        ({"speed": 2.5}, "speed"),
        ({"speed": 1.0}, "changes nothing"),
        ({"band": "walkie"}, "unknown band"),
        ({"band": "radio", "noise_color": "brown"}, "noise_color"),
        ({"band": "radio", "seed": -1}, "seed"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(manifest="m.jsonl", out_dir="out", **kwargs)
