"""Leakage between manifests: the same audio, transcript or speaker in two of them.

Read by `moonlora diagnose` (its Leakage table) and by the experiment's checklist (which refuses
training data that an evaluated manifest shares).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

from moonlora.data.manifest import Manifest
from moonlora.data.text import DEFAULT_LANGUAGE, normalize

MAX_LEAK_EXAMPLES = 3


@dataclass(frozen=True)
class Leak:
    kind: str  # audio | transcript | speaker
    manifests: tuple[str, str]
    shared: int  # distinct shared items
    examples: tuple[tuple[str, int, int], ...]  # (item, line in first, line in second)


def _first_lines(manifest: Manifest, key) -> dict[str, int]:
    lines: dict[str, int] = {}
    for u in manifest.utterances:
        value = key(u)
        if value and value not in lines:
            lines[value] = u.line
    return lines


def leak_keys(language: str) -> dict:
    """What makes two rows the same item: audio bytes, the transcript as the run scores it, the speaker."""
    return {
        "audio": lambda u: u.audio_sha256,
        "transcript": lambda u: normalize(u.text, language),
        "speaker": lambda u: u.speaker,
    }


def find_leaks(manifests: dict[str, Manifest], language: str = DEFAULT_LANGUAGE) -> list[Leak]:
    """Audio, transcripts and speakers that appear in more than one manifest (transcripts compared after
    the `language`'s normalizer, the one the run scores with)."""
    leaks = []
    keys = leak_keys(language)
    index = {kind: {name: _first_lines(m, key) for name, m in manifests.items()} for kind, key in keys.items()}
    for kind in keys:
        for a, b in combinations(manifests, 2):
            first, second = index[kind][a], index[kind][b]
            shared = sorted(set(first) & set(second), key=lambda item: first[item])
            if shared:
                examples = tuple((item, first[item], second[item]) for item in shared[:MAX_LEAK_EXAMPLES])
                leaks.append(Leak(kind, (a, b), len(shared), examples))
    return leaks
