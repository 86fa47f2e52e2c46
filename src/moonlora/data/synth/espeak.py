"""Text-to-speech with the eSpeak NG library bundled in the `espeakng-loader` wheel.

The library is driven through ctypes, so no system espeak-ng is needed. eSpeak NG
keeps global state (one voice, one output callback), so all synthesis in this
process goes through one engine, serialized behind a lock.

eSpeak NG's wave generator also keeps hidden static state between utterances
(pitch-flutter phase, a clock-seeded noise generator for breathy voices), so the
same text normally comes out slightly different each time. To make `synthesize`
a pure function of its arguments, the engine unloads and reloads the shared
library and pins the noise seeds before every utterance (a few ms per clip).
"""

from __future__ import annotations

import _ctypes
import ctypes
import ctypes.util
import functools
import threading
from pathlib import Path

import numpy as np
import soxr

from moonlora.errors import ToolError

SAMPLE_RATE = 16000
PAD_SECONDS = 0.5  # without padding Moonshine tends to stop decoding at once

_AUDIO_OUTPUT_RETRIEVAL = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_POS_CHARACTER = 1
_CHARS_AUTO = 0

# int callback(short *wav, int numsamples, espeak_EVENT *events); events left opaque.
_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_dlclose = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)


@functools.lru_cache(maxsize=1)
def _libc_srand():
    """libc's srand, or None (libespeak-ng also imports libc rand())."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).srand if name else None
    except (OSError, AttributeError):
        return None


def _locate() -> tuple[str, Path]:
    """Paths of the bundled libespeak-ng and its data folder."""
    try:
        import espeakng_loader

        return str(espeakng_loader.get_library_path()), Path(espeakng_loader.get_data_path())
    except ImportError:
        raise ToolError(
            "eSpeak NG: the espeakng-loader package is missing; install it (`uv add espeakng-loader`)"
        ) from None


def _declare(lib: ctypes.CDLL) -> None:
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]
    lib.espeak_Synchronize.restype = ctypes.c_int
    lib.espeak_Terminate.restype = ctypes.c_int


class _Engine:
    """The process-wide eSpeak NG instance."""

    def __init__(self) -> None:
        self.lib_path, self.data_path = _locate()
        self.lib: ctypes.CDLL | None = None
        self.native_rate = 0
        self._chunks: list[np.ndarray] = []
        # Keep a reference: ctypes would free the trampoline otherwise.
        self._callback = _SynthCallback(self._on_samples)
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """(Re)load the library so no state from earlier utterances remains."""
        if self.lib is not None:
            self.lib.espeak_Terminate()
            if _dlclose is not None:
                _dlclose(self.lib._handle)
            self.lib = None
        try:
            lib = ctypes.CDLL(self.lib_path)
        except OSError as exc:
            raise ToolError(f"eSpeak NG: cannot load its library {self.lib_path} ({exc}); reinstall "
                            "espeakng-loader") from None
        _declare(lib)
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_RETRIEVAL, 0, str(self.data_path).encode(), 0)
        if rate <= 0:
            raise ToolError(f"eSpeak NG: espeak_Initialize failed (data path {self.data_path}); reinstall "
                            "espeakng-loader")
        lib.espeak_SetSynthCallback(self._callback)
        self.lib, self.native_rate = lib, rate
        # Initialize seeds eSpeak's breath-noise generator from the clock; pin it.
        if hasattr(lib, "espeak_ng_SetRandSeed"):
            lib.espeak_ng_SetRandSeed(ctypes.c_long(1))
        srand = _libc_srand()
        if srand is not None:
            srand(1)

    def _on_samples(self, wav, numsamples, _events) -> int:
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0  # 0 = continue synthesis

    def set_voice(self, voice: str) -> None:
        _, _, variant = voice.partition("+")
        # eSpeak silently ignores an unknown "+variant", so check the file ourselves.
        if variant and not (self.data_path / "voices" / "!v" / variant).is_file():
            raise ToolError(f"eSpeak NG: unknown eSpeak voice variant {variant!r} in {voice!r}")
        err = self.lib.espeak_SetVoiceByName(voice.encode())
        if err != 0:
            raise ToolError(f"eSpeak NG: unknown eSpeak voice {voice!r} (espeak error {err})")

    def synth_native(self, text: str) -> np.ndarray:
        """Synthesize with the current voice/params; int16 at the native rate."""
        self._chunks = []
        data = text.encode("utf-8")
        err = self.lib.espeak_Synth(
            data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_AUTO, None, None
        )
        if err != 0:
            raise ToolError(f"eSpeak NG: espeak_Synth failed with error {err} on {text[:40]!r}")
        self.lib.espeak_Synchronize()
        chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


@functools.lru_cache(maxsize=1)
def _engine() -> _Engine:
    return _Engine()


def check_voice(voice: str) -> None:
    """Raise ToolError (a RuntimeError) if eSpeak NG does not know `voice`."""
    eng = _engine()
    with eng.lock:
        eng.set_voice(voice)


def synthesize(text: str, voice: str, words_per_minute: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak `text`; return float32 mono audio at 16 kHz with 0.5 s silence each side.

    `voice` is an eSpeak NG name such as "en-us+m3"; `pitch` is 0-100. The result
    depends only on the arguments (and the espeakng-loader version).
    """
    eng = _engine()
    with eng.lock:
        eng.reset()
        eng.set_voice(voice)
        eng.lib.espeak_SetParameter(_PARAM_RATE, int(words_per_minute), 0)
        eng.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)
        native = eng.synth_native(text)
        native_rate = eng.native_rate
    audio = soxr.resample(native.astype(np.float32) / 32768.0, native_rate, SAMPLE_RATE)
    # Resampling can overshoot full scale slightly; clip so PCM_16 export cannot wrap.
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    pad = np.zeros(int(PAD_SECONDS * SAMPLE_RATE), np.float32)
    return np.concatenate([pad, audio, pad])


class Espeak:
    """Thin handle on the process-wide engine (loads the library on creation)."""

    SAMPLE_RATE = SAMPLE_RATE

    def __init__(self) -> None:
        _engine()

    def synthesize(
        self, text: str, voice: str, words_per_minute: int = 160, pitch: int = 50
    ) -> np.ndarray:
        """See `moonlora.data.synth.espeak.synthesize`."""
        return synthesize(text, voice, words_per_minute, pitch)
