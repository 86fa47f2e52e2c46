from pathlib import Path

import pytest

from moonlora.data.manifest import Utterance
from moonlora.data.splits import split_train_val


def utts(speakers):
    """One fake utterance per entry; no audio files are needed to split."""
    return [
        Utterance(Path(f"/clips/{i}.wav"), f"clip {i}", 1.0, spk, i + 1, 1.0, f"sha{i}")
        for i, spk in enumerate(speakers)
    ]


def speakers_of(items):
    return {u.speaker for u in items}


def is_in_input_order(part, whole):
    lines = [u.line for u in part]
    return lines == sorted(lines) and set(part) <= set(whole)


def test_speaker_split_is_disjoint_sized_and_ordered():
    data = utts([f"s{i % 10}" for i in range(20)])  # 10 speakers x 2 clips
    split = split_train_val(data, 0.2, seed=42)
    assert split.method == "speaker"
    assert split.reason == "10 speakers, 20 clips: speaker-disjoint"
    assert not speakers_of(split.train) & speakers_of(split.val)
    assert len(split.val) == 4 and len(split.train) == 16  # two whole speakers = 20%
    assert is_in_input_order(split.train, data) and is_in_input_order(split.val, data)
    assert split.to_dict() == {
        "method": "speaker", "reason": split.reason, "train": 16, "val": 4,
        "val_speakers": sorted(speakers_of(split.val)),
    }


def test_speaker_split_is_seeded():
    data = utts([f"s{i % 8}" for i in range(24)])
    first = split_train_val(data, seed=42)
    assert split_train_val(data, seed=42) == first
    assert split_train_val(data, seed=7).val_speakers != first.val_speakers


def test_speaker_split_ignores_input_order_of_speakers():
    data = utts([f"s{i % 6}" for i in range(18)])
    forward = split_train_val(data, seed=3)
    backward = split_train_val(list(reversed(data)), seed=3)
    assert forward.val_speakers == backward.val_speakers


def test_speaker_split_keeps_a_dominant_speaker_in_train():
    data = utts(["big"] * 20 + ["a", "b"])
    for seed in range(10):
        split = split_train_val(data, 0.2, seed=seed)
        assert split.method == "speaker"
        assert "big" in speakers_of(split.train) and split.val and split.train
        assert not speakers_of(split.train) & speakers_of(split.val)


@pytest.mark.parametrize(
    ("speakers", "reason"),
    [
        ([None] * 10, "no speaker field: random"),
        (["a", "b", "c"] * 3 + [None], "no speaker field on 1 of 10 clips: random"),
        (["a", "b"] * 5, "2 speakers (need 3): random"),
        (["a", "b", "c"] * 3, "9 clips (need 10 for a speaker split): random"),
    ],
)
def test_random_split_with_reason(speakers, reason):
    data = utts(speakers)
    split = split_train_val(data, 0.2, seed=42)
    assert split.method == "random" and split.reason == reason
    assert len(split.val) == round(len(data) * 0.2) and len(split.train) == len(data) - len(split.val)
    assert is_in_input_order(split.train, data) and is_in_input_order(split.val, data)
    assert split_train_val(data, 0.2, seed=42) == split


@pytest.mark.parametrize(("n", "fraction", "val"), [(0, 0.2, 0), (1, 0.2, 0), (2, 0.2, 1), (3, 0.1, 1), (5, 0.5, 2), (2, 0.9, 1)])
def test_random_split_sizes(n, fraction, val):
    split = split_train_val(utts([None] * n), fraction)
    assert (len(split.train), len(split.val)) == (n - val, val)


def test_random_split_depends_on_seed():
    data = utts([None] * 30)
    assert split_train_val(data, seed=1).val != split_train_val(data, seed=2).val


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_bad_val_fraction(fraction):
    with pytest.raises(ValueError, match="val_fraction"):
        split_train_val(utts([None] * 5), fraction)
