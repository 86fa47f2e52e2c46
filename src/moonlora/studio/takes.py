"""A recorded take: browser audio (WebM/Opus, Ogg, WAV, ...) decoded to a 16 kHz mono waveform, and judged.

Browsers record WebM/Opus (Chromium) or Ogg/Opus (Firefox), which libsndfile cannot read from WebM;
PyAV (FFmpeg's libraries, shipped inside its wheel: no system binary) decodes them. The samples then
go through the one audio pipeline (`data.audio.to_mono_16k`). A take that is too short, too quiet or
clipped is refused with the reason and the numbers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from moonlora.configs import SAMPLE_RATE
from moonlora.data.audio import rms_dbfs, to_mono_16k
from moonlora.studio.guard import UploadRefused

MIN_INPUT_RATE = 16_000  # a take recorded below Moonshine's rate lacks the band it hears


@dataclass(frozen=True)
class TakeRules:
    min_seconds: float = 0.5
    max_seconds: float = 30.0
    min_rms_dbfs: float = -45.0  # quieter than this is a muted or far-away microphone
    clip_level: float = 0.999  # a sample at or above this magnitude is clipped
    max_clipped_share: float = 0.001  # refused when more than 0.1% of the samples are clipped


@dataclass(frozen=True)
class Take:
    waveform: np.ndarray  # float32, 16 kHz mono
    input_rate: int
    seconds: float
    rms_dbfs: float
    clipped_share: float


def decode_take(data: bytes) -> tuple[np.ndarray, int]:
    """(samples as (frames, channels) float32, sample rate) of an uploaded file; UploadRefused when not audio."""
    if not data:
        raise UploadRefused("the upload is empty; record again")
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            streams = [s for s in container.streams if s.type == "audio"]
            if not streams:
                raise UploadRefused("the upload is not audio (no audio stream in it); send a recording (WebM, Ogg, WAV, FLAC)")
            stream = streams[0]
            resampler = av.AudioResampler(format="fltp")  # planar float at the stream's own rate and layout
            planes, rate = [], None
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    planes.append(out.to_ndarray())
                    rate = out.sample_rate
            for out in resampler.resample(None):
                planes.append(out.to_ndarray())
                rate = out.sample_rate
    except UploadRefused:
        raise
    except (av.error.FFmpegError, ValueError, OSError, EOFError) as error:
        raise UploadRefused(f"the upload is not audio that can be decoded ({type(error).__name__}: {error}); "
                            "send a recording (WebM, Ogg, WAV, FLAC)") from None
    if not planes or rate is None:
        raise UploadRefused("the upload decodes to no samples; record again")
    samples = np.concatenate(planes, axis=1).T.astype(np.float32)
    if samples.shape[0] == 0:
        raise UploadRefused("the upload decodes to no samples; record again")
    return samples, int(rate)


def judge(samples: np.ndarray, rate: int, rules: TakeRules = TakeRules()) -> Take:
    """The take at 16 kHz mono, or UploadRefused saying why it cannot be kept (with its numbers)."""
    if rate < MIN_INPUT_RATE:
        raise UploadRefused(f"recorded at {rate} Hz, below the {MIN_INPUT_RATE} Hz the model needs; record at "
                            "16 kHz or more")
    clipped = float(np.mean(np.abs(samples) >= rules.clip_level)) if samples.size else 0.0
    waveform = to_mono_16k(samples, rate)
    seconds = len(waveform) / SAMPLE_RATE
    level = rms_dbfs(waveform)
    if seconds < rules.min_seconds:
        raise UploadRefused(f"too short: {seconds:.2f} s, under {rules.min_seconds} s; say the whole prompt")
    if seconds > rules.max_seconds:
        raise UploadRefused(f"too long: {seconds:.1f} s, over {rules.max_seconds} s; record one prompt at a time")
    if level < rules.min_rms_dbfs:
        shown = "silence" if level == float("-inf") else f"{level:.1f} dBFS"
        raise UploadRefused(f"too quiet: {shown}, under {rules.min_rms_dbfs} dBFS; move closer or raise the "
                            "microphone level")
    if clipped > rules.max_clipped_share:
        raise UploadRefused(f"clipped: {clipped:.2%} of the samples at full scale (over "
                            f"{rules.max_clipped_share:.1%}); lower the microphone level")
    return Take(waveform, rate, seconds, level, clipped)


def take_from_upload(data: bytes, rules: TakeRules = TakeRules()) -> Take:
    samples, rate = decode_take(data)
    return judge(samples, rate, rules)
