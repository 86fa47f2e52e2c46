"""A general-speech canary: real beckett.wav plus general English sentences on unseen voices.

A domain adapter must not make this worse; `moonlora experiment --canary-manifest` watches it.
"""

from __future__ import annotations

import json
from pathlib import Path

from moonlora.data.manifest import write_manifest
from moonlora.data.synth.build import TEST_VOICES, build_domain


def build_canary(out_dir: Path, real_clips: list[dict], sentences: int = 24, seed: int = 0,
                 progress: bool = True) -> Path:
    """Write `out_dir/canary.jsonl`: the real clips (manifest rows) + `sentences` Harvard sentences (test voices)."""
    # build_domain splits into train/test voices; all of it is canary, so both halves are spoken by
    # the test voices: no voice a domain adapter trains on (the experiment refuses speaker leakage).
    synth = build_domain("general", n=sentences, seed=seed, out_dir=out_dir / "general", progress=progress,
                         train_voices=TEST_VOICES[:1], test_voices=TEST_VOICES[1:])
    rows = list(real_clips)
    for manifest in (synth.train_manifest, synth.test_manifest):
        for line in manifest.read_text().splitlines():
            row = json.loads(line)
            rows.append({**row, "audio_filepath": str((manifest.parent / row["audio_filepath"]).resolve())})
    return write_manifest(rows, out_dir / "canary.jsonl")
