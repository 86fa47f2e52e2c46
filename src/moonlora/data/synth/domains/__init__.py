"""Registry of synthetic text domains.

A domain is a module with `generate(n: int, rng: random.Random) -> list[str]`
returning `n` utterances in lowercase words only (numbers spelled out, no
punctuation), drawing all randomness from `rng` so a seed reproduces it.

To add a domain:
  1. write `src/moonlora/synth/domains/<name>.py` with such a `generate`
     (see `atc.py` for a template-based example);
  2. import it here and add `"<name>": <name>.generate` to `DOMAINS`.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from moonlora.data.synth.domains import atc, general

Generator = Callable[[int, random.Random], list[str]]

DOMAINS: dict[str, Generator] = {
    "atc": atc.generate,
    "general": general.generate,
}
