import numpy as np
import pytest
import soundfile as sf

from moonlora.data.audio import AudioConfig, AudioError, header_duration, load_audio, normalize_rms, rms_dbfs


def test_downmix_and_resample_to_16k(tmp_path):
    t = np.arange(44100) / 44100
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([left, left], axis=1)
    path = tmp_path / "stereo44.wav"
    sf.write(str(path), stereo.astype(np.float32), 44100)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.size - 16000) <= 1
    assert rms_dbfs(wave) == pytest.approx(rms_dbfs(left), abs=0.1)


def test_opposite_channels_cancel_in_downmix(tmp_path):
    t = np.arange(16000) / 16000
    left = 0.5 * np.sin(2 * np.pi * 300 * t)
    path = tmp_path / "cancel.wav"
    sf.write(str(path), np.stack([left, -left], axis=1).astype(np.float32), 16000, subtype="FLOAT")
    assert np.abs(load_audio(path)).max() < 1e-6


def test_rms_normalization_hits_target_and_spares_silence(tmp_path):
    rng = np.random.default_rng(0)
    quiet = (0.01 * rng.standard_normal(16000)).astype(np.float32)
    path = tmp_path / "quiet.wav"
    sf.write(str(path), quiet, 16000, subtype="FLOAT")
    loud = load_audio(path, AudioConfig(rms_target_dbfs=-20.0))
    assert rms_dbfs(loud) == pytest.approx(-20.0, abs=0.05)
    silence = np.zeros(16000, dtype=np.float32)
    assert np.array_equal(normalize_rms(silence, -20.0), silence)
    assert np.isneginf(rms_dbfs(silence))


def test_non_finite_samples_become_zero(tmp_path):
    data = np.array([0.1, np.nan, np.inf, -np.inf, 0.2] * 400, dtype=np.float32)
    path = tmp_path / "nan.wav"
    sf.write(str(path), data, 16000, subtype="FLOAT")
    wave = load_audio(path)
    assert np.isfinite(wave).all()
    assert wave[1] == 0.0 and wave[0] == pytest.approx(0.1)


def test_bad_files_raise_one_clear_error(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF0000WAVEjunkjunk")
    with pytest.raises(AudioError, match="corrupt.wav"):
        load_audio(corrupt)
    with pytest.raises(AudioError, match="corrupt.wav"):
        header_duration(corrupt)


def test_config_validation():
    with pytest.raises(ValueError):
        AudioConfig(sample_rate=8000)
    with pytest.raises(ValueError):
        AudioConfig(rms_target_dbfs=6.0)
    assert AudioConfig(rms_target_dbfs=-23).to_dict()["rms_target_dbfs"] == -23
