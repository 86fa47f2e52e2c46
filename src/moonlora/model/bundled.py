"""Files shipped inside the moonshine-cpp wheel: Moonshine base weights, tokenizer, a sample clip.

We locate the installed package with importlib instead of importing it: its ``__init__`` loads
native libraries (AVX-512 builds) that crash on many CPUs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from moonlora.errors import MoonloraError

BUNDLED_PACKAGE = "moonshine_cpp"
BECKETT_TEXT = "Ever tried. Ever failed. No matter. Try again. Fail again. Fail better."


class BundledModelMissing(MoonloraError, RuntimeError):
    """The moonshine-cpp wheel is not installed (it exists for Linux x86_64 only)."""


def package_dir() -> Path:
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BundledModelMissing(
            "the moonshine-cpp package is not installed (it ships for Linux x86_64 only); "
            "install it or pass --model UsefulSensors/moonshine-base"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def base_en_dir() -> Path:
    return package_dir() / "models" / "base-en"


def encoder_ort_path() -> Path:
    return base_en_dir() / "encoder_model.ort"


def decoder_ort_path() -> Path:
    return base_en_dir() / "decoder_model_merged.ort"


def tokenizer_bin_path() -> Path:
    return base_en_dir() / "tokenizer.bin"


def beckett_wav_path() -> Path:
    return package_dir() / "test-data" / "beckett.wav"
