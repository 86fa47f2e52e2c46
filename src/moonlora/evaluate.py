"""Evaluate a model on a whole manifest under one eval contract, and write the results."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from moonlora.audio import AudioConfig, load_audio
from moonlora.configs import DecodeConfig
from moonlora.contract import EvalContract
from moonlora.decode import DecodedClip, decode_clips
from moonlora.manifest import Manifest, SkippedRow, Utterance
from moonlora.metrics import CorpusScore, UtteranceFlags, UtteranceScore, corpus_score, flag_utterance, score_utterance
from moonlora.model import LoadedModel, adapter_sha256

FLAG_NAMES = ("empty_hypothesis", "token_cap_hit", "repeat_loop")
# Clip-length buckets (seconds) for WER by duration: Moonshine hallucinates under ~1 s and over ~30 s.
DURATION_EDGES = (1.0, 5.0, 10.0, 20.0, 30.0)


@dataclass(frozen=True)
class ClipResult:
    utterance: Utterance
    hypothesis: str
    decoded: DecodedClip
    score: UtteranceScore
    flags: UtteranceFlags

    def to_dict(self) -> dict:
        u = self.utterance
        return {
            "utt_id": u.utt_id, "audio_filepath": str(u.audio_filepath), "line": u.line,
            "duration": u.duration, "speaker": u.speaker, "ref": u.text, "hyp": self.hypothesis,
            "ref_norm": self.score.ref_norm, "hyp_norm": self.score.hyp_norm,
            "ref_words": self.score.ref_words, "substitutions": self.score.substitutions,
            "deletions": self.score.deletions, "insertions": self.score.insertions,
            "wer": self.score.wer, "num_tokens": len(self.decoded.token_ids),
            "token_cap": self.decoded.token_cap, "flags": self.flags.names(),
            "repeat_ngram": self.flags.repeat_loop,
        }


@dataclass
class EvalResult:
    manifest_path: Path
    clips: list[ClipResult]
    skipped: list[SkippedRow]
    corpus: CorpusScore
    contract: EvalContract
    audio_seconds: float
    decode_seconds: float
    wall_seconds: float

    def flag_counts(self) -> dict[str, int]:
        return {name: sum(name in c.flags.names() for c in self.clips) for name in FLAG_NAMES}

    def wer_by_duration(self) -> list[dict]:
        edges = (0.0, *DURATION_EDGES, float("inf"))
        buckets = []
        for low, high in zip(edges, edges[1:]):
            scores = [c.score for c in self.clips if low <= c.utterance.duration < high]
            if scores:
                label = f"{low:g}-{high:g}s" if high != float("inf") else f">={low:g}s"
                buckets.append({"bucket": label, "clips": len(scores), "wer": corpus_score(scores).wer})
        return buckets

    def summary_dict(self) -> dict:
        return {
            "manifest": str(self.manifest_path),
            "wer": self.corpus.wer, "cer": self.corpus.cer, "raw_wer": self.corpus.raw_wer,
            "scores": self.corpus.to_dict(),
            "clips": len(self.clips), "hours": self.audio_seconds / 3600.0,
            "audio_seconds": self.audio_seconds,
            "skipped": len(self.skipped), "skipped_rows": [row.to_dict() for row in self.skipped],
            "flags": self.flag_counts(), "wer_by_duration": self.wer_by_duration(),
            "decode_seconds": self.decode_seconds, "wall_seconds": self.wall_seconds,
            "rtfx": self.audio_seconds / self.decode_seconds if self.decode_seconds > 0 else None,
            "contract": self.contract.to_dict(),
        }


def evaluate_manifest(
    loaded: LoadedModel,
    manifest: Manifest,
    audio: AudioConfig,
    decode: DecodeConfig,
    progress: bool = True,
    description: str = "transcribing",
) -> EvalResult:
    """Transcribe every usable clip of the manifest and score it (full-manifest WER)."""
    started = time.perf_counter()
    utterances = manifest.utterances
    bar = tqdm(total=len(utterances), desc=description, unit="clip", disable=not progress)
    decoded, decode_seconds = decode_clips(
        loaded.model, loaded.feature_extractor, loaded.tokenizer,
        durations=[u.duration for u in utterances],
        load_waveform=lambda i: load_audio(utterances[i].audio_filepath, audio),
        config=decode, on_batch=bar.update,
    )
    bar.close()
    clips = []
    for utterance, clip in zip(utterances, decoded):
        score = score_utterance(utterance.text, clip.text)
        clips.append(ClipResult(utterance, clip.text, clip, score, flag_utterance(score, clip.token_cap_hit)))
    contract = EvalContract.build(
        manifest.content_hash, audio, decode, loaded.weights_sha256, adapter_sha256(loaded.model)
    )
    return EvalResult(
        manifest_path=manifest.path, clips=clips, skipped=manifest.skipped,
        corpus=corpus_score([c.score for c in clips]), contract=contract,
        audio_seconds=sum(u.file_duration for u in utterances), decode_seconds=decode_seconds,
        wall_seconds=time.perf_counter() - started,
    )


def write_eval(result: EvalResult, out_dir: Path, extra: dict | None = None) -> tuple[Path, Path]:
    """Write `transcripts.jsonl` (one row per clip) and `summary.json` into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    transcripts = out_dir / "transcripts.jsonl"
    with open(transcripts, "w", encoding="utf-8") as handle:
        for clip in result.clips:
            handle.write(json.dumps(clip.to_dict(), ensure_ascii=False) + "\n")
    summary = out_dir / "summary.json"
    summary.write_text(json.dumps({**result.summary_dict(), **(extra or {})}, indent=2) + "\n")
    return transcripts, summary
