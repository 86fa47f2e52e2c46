"""Loop flags of scored folders, recomputed from their saved transcripts with today's rules.

    uv run python benchmarks/loop_flags.py RUN/baseline/main RUN/tuned/main GUARDED/ [--json out.json]

Each folder holds a `transcripts.jsonl` (a run's baseline/<set>/ or tuned/<set>/, a transcribe
--output-dir). Per folder: clips, corpus WER (speech) or words per clip (a non-speech set: every
reference empty), clips with text, token-cap hits, how many of those each loop rule flags, and all
looping clips. The flags are recomputed (`moonlora.eval.metrics.flag_utterance`), so folders written
before the long-loop rule are judged by it too. docs/benchmarks.md records what it measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moonlora.data.text import normalizer_for
from moonlora.eval.metrics import corpus_score, flag_utterance, score_nonspeech, score_utterance
from moonlora.runfolder import TRANSCRIPTS_FILE, read_transcripts


def folder_counts(folder: Path) -> dict:
    rows = read_transcripts(folder / TRANSCRIPTS_FILE)
    normalize = normalizer_for()
    nonspeech = all(not row["ref"] for row in rows)
    scores = [score_nonspeech(row["hyp"], normalize) if nonspeech else score_utterance(row["ref"], row["hyp"], normalize)
              for row in rows]
    capped = ["token_cap_hit" in row["flags"] for row in rows]
    flags = [flag_utterance(score, cap, row["hyp"], row["ref"]) for score, cap, row in zip(scores, capped, rows)]
    return {
        "folder": str(folder), "clips": len(rows), "nonspeech": nonspeech,
        "wer": None if nonspeech else corpus_score(scores).wer,
        "words_per_clip": sum(len(s.hyp_norm.split()) for s in scores) / max(len(rows), 1),
        "clips_with_text": sum(bool(s.hyp_norm) for s in scores),
        "token_cap_hits": sum(capped),
        "cap_hits_repeat_loop": sum(cap and f.repeat_loop is not None for cap, f in zip(capped, flags)),
        "cap_hits_long_loop": sum(cap and f.long_loop is not None for cap, f in zip(capped, flags)),
        "cap_hits_either": sum(cap and f.loops for cap, f in zip(capped, flags)),
        "looping_clips": sum(f.loops for f in flags),
    }


def markdown(counts: list[dict]) -> str:
    lines = ["| folder | clips | WER | words/clip | clips with text | cap hits | of which repeat_loop | "
             "of which long_loop | of which either | looping clips |", "|" + " --- |" * 10]
    for c in counts:
        wer = "-" if c["wer"] is None else f"{c['wer']:.4f}"
        lines.append(f"| {c['folder']} | {c['clips']} | {wer} | {c['words_per_clip']:.2f} | {c['clips_with_text']} | "
                     f"{c['token_cap_hits']} | {c['cap_hits_repeat_loop']} | {c['cap_hits_long_loop']} | "
                     f"{c['cap_hits_either']} | {c['looping_clips']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    counts = [folder_counts(folder) for folder in args.folders]
    print(markdown(counts))
    if args.json:
        args.json.write_text(json.dumps(counts, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
