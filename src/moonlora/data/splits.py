"""Train/validation split: speaker-disjoint when the manifest allows it, else seeded random.

Diagnostics report the split that training will use, so both call `split_train_val`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from moonlora.data.manifest import Utterance
from moonlora.errors import InputError

MIN_SPEAKERS = 3
MIN_CLIPS = 10


@dataclass(frozen=True)
class Split:
    train: list[Utterance]
    val: list[Utterance]
    method: str  # "speaker" | "random"
    reason: str

    @property
    def val_speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.val if u.speaker is not None})

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "reason": self.reason,
            "train": len(self.train),
            "val": len(self.val),
            "val_speakers": self.val_speakers,
        }


def split_train_val(utterances: list[Utterance], val_fraction: float = 0.2, seed: int = 42) -> Split:
    """Split clips into train and val; the same input and seed give the same split."""
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    utterances = list(utterances)
    n = len(utterances)
    speakers = sorted({u.speaker for u in utterances if u.speaker is not None})
    missing = sum(u.speaker is None for u in utterances)
    if n and not missing and len(speakers) >= MIN_SPEAKERS and n >= MIN_CLIPS:
        reason = f"{len(speakers)} speakers, {n} clips: speaker-disjoint"
        return _speaker_split(utterances, speakers, val_fraction, random.Random(seed), reason)
    if n == 0:
        reason = "no clips: random"
    elif missing:
        reason = "no speaker field: random" if missing == n else f"no speaker field on {missing} of {n} clips: random"
    elif len(speakers) < MIN_SPEAKERS:
        reason = f"{len(speakers)} speaker{'s' if len(speakers) != 1 else ''} (need {MIN_SPEAKERS}): random"
    else:
        reason = f"{n} clips (need {MIN_CLIPS} for a speaker split): random"
    return _random_split(utterances, val_fraction, random.Random(seed), reason)


def _partition(utterances: list[Utterance], in_val: list[bool]) -> tuple[list[Utterance], list[Utterance]]:
    train = [u for u, v in zip(utterances, in_val) if not v]
    val = [u for u, v in zip(utterances, in_val) if v]
    return train, val


def _random_split(utterances: list[Utterance], val_fraction: float, rng: random.Random, reason: str) -> Split:
    n = len(utterances)
    size = min(max(round(n * val_fraction), 1), n - 1) if n >= 2 else 0
    order = list(range(n))
    rng.shuffle(order)
    chosen = set(order[:size])
    train, val = _partition(utterances, [i in chosen for i in range(n)])
    return Split(train, val, "random", reason)


def _pick_val_speakers(counts: dict[str, int], order: list[str], target: float) -> set[str]:
    """Whole speakers, in shuffled order, each taken only if it brings val closer to target."""
    chosen: set[str] = set()
    size = 0
    for speaker in order:
        if size >= target or len(chosen) == len(order) - 1:
            break
        if abs(size + counts[speaker] - target) < abs(size - target):
            chosen.add(speaker)
            size += counts[speaker]
    if not chosen:
        # Every speaker alone overshoots past twice the target: take the smallest one.
        chosen.add(min(order, key=lambda s: counts[s]))
    return chosen


def _speaker_split(
    utterances: list[Utterance], speakers: list[str], val_fraction: float, rng: random.Random, reason: str
) -> Split:
    counts = {s: 0 for s in speakers}
    for u in utterances:
        counts[u.speaker] += 1
    order = list(speakers)  # sorted, so the input order of speakers does not matter
    rng.shuffle(order)
    chosen = _pick_val_speakers(counts, order, val_fraction * len(utterances))
    train, val = _partition(utterances, [u.speaker in chosen for u in utterances])
    return Split(train, val, "speaker", reason)
