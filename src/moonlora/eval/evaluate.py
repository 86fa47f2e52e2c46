"""Evaluate a model on a whole manifest under one eval contract, and write the results."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path


from moonlora.data.audio import AudioConfig, load_audio
from moonlora.configs import DecodeConfig, ScoringConfig
from moonlora.eval.contract import EvalContract
from moonlora.eval.decode import decode_clips
from moonlora.data.manifest import Manifest, SkippedRow, Utterance
from moonlora.data.text import normalizer_for
from moonlora.eval.metrics import (CorpusScore, Metric, UtteranceFlags, UtteranceScore, corpus_score, flag_utterance,
                                   metric_for, metric_named, score_nonspeech, score_utterance)
from moonlora.model.decoder import DecodedClip
from moonlora.model.loading import LoadedModel, adapter_sha256
from moonlora.outputs import write_json, write_text
from moonlora.progress import progress_bar
from moonlora.runfolder import DAMAGED, SUMMARY_FILE, TRANSCRIPTS_FILE, TranscriptsError, read_numbered_transcripts

FLAG_NAMES = ("empty_hypothesis", "token_cap_hit", "repeat_loop", "long_loop")
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
            "wer": self.score.wer, "ref_chars": self.score.ref_chars, "char_errors": self.score.char_errors,
            "cer": self.score.cer, "num_tokens": len(self.decoded.token_ids), "token_ids": self.decoded.token_ids,
            "token_cap": self.decoded.token_cap, "flags": self.flags.names(),
            "repeat_ngram": self.flags.repeat_loop,
            "loop_span": None if self.flags.long_loop is None else self.flags.long_loop.to_dict(),
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

    @property
    def metric(self) -> Metric:
        """The primary metric, as the contract names it."""
        return metric_named(self.contract.metric)

    @property
    def nonspeech(self) -> bool:
        """Scored as clips without speech (the contract says so): words emitted, not WER, is the number."""
        return self.contract.nonspeech

    def flag_counts(self) -> dict[str, int]:
        return {name: sum(name in c.flags.names() for c in self.clips) for name in FLAG_NAMES}

    def looping_clips(self) -> list[str]:
        """utt_ids of the clips either loop rule flagged, in manifest order."""
        return [c.utterance.utt_id for c in self.clips if c.flags.loops]

    def words_per_clip(self) -> float:
        """Normalized hypothesis words over all clips (on a non-speech set every one is an insertion)."""
        return sum(len(c.score.hyp_norm.split()) for c in self.clips) / max(len(self.clips), 1)

    def text_share(self) -> float:
        """Share of clips whose hypothesis holds any word."""
        return sum(bool(c.score.hyp_norm) for c in self.clips) / max(len(self.clips), 1)

    def wer_by_duration(self) -> list[dict]:
        edges = (0.0, *DURATION_EDGES, float("inf"))
        buckets = []
        for low, high in zip(edges, edges[1:]):
            scores = [c.score for c in self.clips if low <= c.utterance.duration < high]
            if scores:
                label = f"{low:g}-{high:g}s" if high != float("inf") else f">={low:g}s"
                corpus = corpus_score(scores)
                buckets.append({"bucket": label, "clips": len(scores), "wer": corpus.wer, "cer": corpus.cer})
        return buckets

    def summary_dict(self) -> dict:
        return {
            "manifest": str(self.manifest_path),
            "metric": self.corpus.metric, "language": self.contract.language,
            "wer": self.corpus.wer, "cer": self.corpus.cer, "raw_wer": self.corpus.raw_wer,
            "scores": self.corpus.to_dict(),
            "clips": len(self.clips), "hours": self.audio_seconds / 3600.0,
            "audio_seconds": self.audio_seconds,
            "skipped": len(self.skipped), "skipped_rows": [row.to_dict() for row in self.skipped],
            "flags": self.flag_counts(), "looping_clips": self.looping_clips(),
            **({"nonspeech": True, "words_per_clip": self.words_per_clip(), "text_share": self.text_share()}
               if self.nonspeech else {}),
            "wer_by_duration": self.wer_by_duration(),
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
    scoring: ScoringConfig | None = None,
) -> EvalResult:
    """Transcribe every usable clip of the manifest and score it (full-manifest WER and CER; `scoring`,
    English WER by default, picks the normalizer and the primary metric)."""
    scoring = scoring or ScoringConfig()
    normalizer, metric = normalizer_for(scoring.language), metric_for(scoring)
    started = time.perf_counter()
    utterances = manifest.utterances
    bar = progress_bar(len(utterances), description, unit="clip", enabled=progress)
    decoded, decode_seconds = decode_clips(
        loaded.decoder(),
        durations=[u.duration for u in utterances],
        load_waveform=lambda i: load_audio(utterances[i].audio_filepath, audio),
        config=decode, on_batch=bar.update,
    )
    bar.close()
    clips = []
    for utterance, clip in zip(utterances, decoded):
        score = clip_score(utterance, clip.text, normalizer, manifest.nonspeech)
        flags = flag_utterance(score, clip.token_cap_hit, clip.text, utterance.text)
        clips.append(ClipResult(utterance, clip.text, clip, score, flags))
    contract = EvalContract.build(
        manifest.content_hash, audio, decode, loaded.weights_sha256, adapter_sha256(loaded.model),
        runtime=loaded.runtime_dict(), model_type=loaded.model_type, load_check=loaded.load_check,
        scoring=scoring, nonspeech=manifest.nonspeech,
    )
    return EvalResult(
        manifest_path=manifest.path, clips=clips, skipped=manifest.skipped,
        corpus=corpus_score([c.score for c in clips], metric), contract=contract,
        audio_seconds=sum(u.file_duration for u in utterances), decode_seconds=decode_seconds,
        wall_seconds=time.perf_counter() - started,
    )


def clip_score(utterance: Utterance, hypothesis: str, normalizer, nonspeech: bool) -> UtteranceScore:
    """A clip's score: errors against its transcript, or, on a non-speech manifest, the words it emitted."""
    return score_nonspeech(hypothesis, normalizer) if nonspeech else score_utterance(utterance.text, hypothesis,
                                                                                     normalizer)


def write_eval(result: EvalResult, out_dir: Path, extra: dict | None = None) -> tuple[Path, Path]:
    """Write `transcripts.jsonl` (one row per clip) and `summary.json` into out_dir, each atomically."""
    transcripts, summary = out_dir / TRANSCRIPTS_FILE, out_dir / SUMMARY_FILE
    write_text(transcripts, "".join(json.dumps(clip.to_dict(), ensure_ascii=False) + "\n" for clip in result.clips))
    write_json(summary, {**result.summary_dict(), **(extra or {})})
    return transcripts, summary


def read_eval(out_dir: Path, manifest: Manifest) -> EvalResult | None:
    """An evaluation written by `write_eval` for this very manifest, rebuilt; None when absent, its
    summary unreadable, or written for other clips (then the caller decodes again). A transcripts
    line that is not a JSON row is a one-line error naming the file and line (runfolder.read_transcripts).

    Used on resume, so a resumed run does not decode its baseline sets a second time. Scores and
    flags are recomputed from the stored texts (deterministic), the contract is the stored one.
    """
    summary_path, transcripts_path = out_dir / SUMMARY_FILE, out_dir / TRANSCRIPTS_FILE
    if not transcripts_path.is_file():
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        contract = EvalContract.from_dict(summary["contract"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    rows = read_numbered_transcripts(transcripts_path)
    utterances = manifest.utterances
    if contract.manifest_sha256 != manifest.content_hash or contract.nonspeech != manifest.nonspeech \
            or len(rows) != len(utterances) \
            or any(row.get("utt_id") != u.utt_id for (_, row), u in zip(rows, utterances)):
        return None
    normalizer = normalizer_for(contract.language)
    clips = [_stored_clip(utterance, row, f"{transcripts_path}:{number}", normalizer, manifest.nonspeech)
             for utterance, (number, row) in zip(utterances, rows)]
    return EvalResult(manifest_path=manifest.path, clips=clips, skipped=manifest.skipped,
                      corpus=corpus_score([c.score for c in clips], metric_named(contract.metric)), contract=contract,
                      audio_seconds=float(summary.get("audio_seconds") or 0.0),
                      decode_seconds=float(summary.get("decode_seconds") or 0.0),
                      wall_seconds=float(summary.get("wall_seconds") or 0.0))


def _stored_clip(utterance: Utterance, row: dict, where: str, normalizer, nonspeech: bool = False) -> ClipResult:
    """One transcripts row back as a ClipResult, its score recomputed from the stored hypothesis."""
    try:
        cap_hit = "token_cap_hit" in (row.get("flags") or [])
        decoded = DecodedClip(str(row["hyp"]), list(row.get("token_ids") or []), int(row["token_cap"]), cap_hit)
    except (KeyError, TypeError, ValueError) as error:
        raise TranscriptsError(f"{where}: not a transcripts row ({type(error).__name__}: {error}); {DAMAGED}") from None
    score = clip_score(utterance, decoded.text, normalizer, nonspeech)
    return ClipResult(utterance, decoded.text, decoded, score, flag_utterance(score, cap_hit, decoded.text, utterance.text))
