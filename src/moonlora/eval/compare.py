"""`moonlora compare`: is B as good as A? Two scored folders of one manifest, clip by clip.

A and B are folders written by `moonlora transcribe --output-dir` (an experiment's
`baseline/<name>` and `tuned/<name>` folders have the same files): `transcripts.jsonl`, one row per
clip, and `summary.json`, which carries the eval contract. `compare_folders`:

- checks the contracts: each differing field (`decode.num_beams`, `runtime.precision`, ...) is
  refused with both values unless its top-level name is in `allow` (e.g. `runtime`,
  `adapter_sha256`); allowed differences are listed in the result;
- pairs the clips by utt_id (and by audio path when the manifest hashes differ) with equal
  references; folders that scored different manifests are refused, even with
  `allow=("manifest_sha256",)`;
- bootstraps WER(B) - WER(A) over the paired clips (`moonlora.eval.stats.paired_bootstrap`: 10,000
  resamples, seed 0, 95%);
- measures agreement: identical hypotheses as written, after normalization, and as token ids;
- ranks the clips that differ most (per-clip WER difference, then how much of the text differs);
- B is non-inferior to A when the CI's high end of WER(B) - WER(A) is at most `margin`
  (`Comparison.non_inferior`; A is the comparison's baseline, B its tuned side).

"WER" is the primary metric the contracts name: for CER contracts (Chinese, Japanese, Korean, `--metric
cer`) the bootstrap, the verdict and the ranking use each clip's character counts. Two folders scored
by different metrics are refused, `--allow metric` or not.

Torch-free: it reads JSON and never loads a model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from difflib import SequenceMatcher
from pathlib import Path

from moonlora import markdown
from moonlora.comparison import Comparison
from moonlora.eval.contract import ContractMismatch, EvalContract, require_comparable
from moonlora.eval.metrics import Metric, metric_named
from moonlora.eval.stats import DEFAULT_RESAMPLES, paired_bootstrap
from moonlora.markdown import ci_cell, short
from moonlora.runfolder import SUMMARY_FILE as SUMMARY
from moonlora.runfolder import TRANSCRIPTS_FILE as TRANSCRIPTS
from moonlora.runfolder import read_numbered_transcripts
from moonlora.errors import MoonloraError
TEXT_FIELDS = ("utt_id", "audio_filepath", "ref", "hyp", "hyp_norm")
COUNT_FIELDS = ("ref_words", "substitutions", "deletions", "insertions")
DEFAULT_MARGIN = 0.005  # 0.5 WER points
DEFAULT_TOP = 10
BOOTSTRAP_SEED, CONFIDENCE = 0, 0.95
WRITTEN_BY = "pass a folder written by moonlora transcribe --output-dir"


class CompareError(MoonloraError, ValueError):
    """A folder that is not a readable scored output, or two folders that scored different manifests."""


@dataclass(frozen=True)
class Clip:
    """One row of transcripts.jsonl, as far as comparing needs it."""

    utt_id: str
    audio_filepath: str
    ref: str
    hyp: str
    hyp_norm: str
    ref_words: int
    word_errors: int
    token_ids: tuple[int, ...] | None  # None in files written before token ids were recorded
    ref_chars: int | None = None  # None in files written before character counts were recorded
    char_errors: int | None = None

    @property
    def wer(self) -> float:
        return self.word_errors / self.ref_words if self.ref_words else float(self.word_errors > 0)

    def counts(self, metric: Metric) -> tuple[int, int]:
        """(errors, reference units) of the primary metric."""
        return metric.counts(self)

    def rate(self, metric: Metric) -> float:
        errors, units = self.counts(metric)
        return errors / units if units else float(errors > 0)


@dataclass(frozen=True)
class ScoredFolder:
    path: Path
    contract: EvalContract
    clips: list[Clip]


@dataclass(frozen=True)
class Agreement:
    clips: int
    same_text: int  # identical hypothesis as written
    same_normalized: int  # identical after the scoring normalizer
    token_clips: int  # pairs where both rows carry token ids
    same_tokens: int

    @property
    def text_rate(self) -> float:
        return self.same_text / self.clips

    @property
    def normalized_rate(self) -> float:
        return self.same_normalized / self.clips

    @property
    def token_rate(self) -> float | None:
        return self.same_tokens / self.token_clips if self.token_clips else None

    def to_dict(self) -> dict:
        return {**asdict(self), "text_rate": self.text_rate, "normalized_rate": self.normalized_rate,
                "token_rate": self.token_rate}


@dataclass(frozen=True)
class ClipDifference:
    utt_id: str
    audio_filepath: str
    ref: str
    hyp_a: str
    hyp_b: str
    wer_a: float
    wer_b: float
    text_difference: float  # 1 - word-level similarity of hyp_a and hyp_b (0: same words)

    @property
    def wer_delta(self) -> float:
        return self.wer_b - self.wer_a

    def to_dict(self) -> dict:
        return {**asdict(self), "wer_delta": self.wer_delta}


@dataclass(frozen=True)
class FolderComparison:
    a: ScoredFolder
    b: ScoredFolder
    allow: tuple[str, ...]
    allowed_differences: list[dict]  # {"field", "a", "b"} for each accepted difference
    bootstrap: Comparison  # baseline = A, tuned = B
    agreement: Agreement
    differing_clips: int  # clips whose hypotheses differ
    top: list[ClipDifference]
    margin: float

    @property
    def non_inferior(self) -> bool:
        return self.bootstrap.non_inferior(self.margin)

    def to_dict(self) -> dict:
        """The paired bootstrap in the one Comparison shape (baseline = A, tuned = B), and the rest."""
        return {
            "a": {"path": str(self.a.path), "contract": self.a.contract.to_dict()},
            "b": {"path": str(self.b.path), "contract": self.b.contract.to_dict()},
            "allow": list(self.allow), "allowed_differences": self.allowed_differences,
            **self.bootstrap.to_dict(), "margin": self.margin, "non_inferior": self.non_inferior,
            "agreement": self.agreement.to_dict(), "differing_clips": self.differing_clips,
            "top_differences": [clip.to_dict() for clip in self.top],
        }


# --- reading ------------------------------------------------------------------------------------------------------


def read_folder(folder: str | Path) -> ScoredFolder:
    """A scored folder's contract and clips; CompareError (one line naming the path) when unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CompareError(f"{folder}: not a folder; {WRITTEN_BY}")
    missing = [name for name in (TRANSCRIPTS, SUMMARY) if not (folder / name).is_file()]
    if missing:
        raise CompareError(f"{folder}: no {' or '.join(missing)}; {WRITTEN_BY}")
    summary_path = folder / SUMMARY
    summary = _read_json(summary_path)
    if not isinstance(summary, dict) or not isinstance(summary.get("contract"), dict):
        raise CompareError(f"{summary_path}: no eval contract ('contract'); {WRITTEN_BY}")
    try:
        contract = EvalContract.from_dict(summary["contract"])
    except (ContractMismatch, TypeError) as error:
        raise CompareError(f"{summary_path}: {error}") from None
    clips = _read_clips(folder / TRANSCRIPTS)
    if isinstance(summary.get("clips"), int) and summary["clips"] != len(clips):
        raise CompareError(f"{folder / TRANSCRIPTS}: {len(clips)} clips, but {summary_path} counts "
                           f"{summary['clips']}; the folder is incomplete")
    return ScoredFolder(folder, contract, clips)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CompareError(f"{path}: unreadable ({type(error).__name__}: {error})") from None


def _read_clips(path: Path) -> list[Clip]:
    clips = [_clip(row, f"{path}:{number}") for number, row in read_numbered_transcripts(path)]
    if not clips:
        raise CompareError(f"{path}: holds no clips")
    return clips


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _clip(row: dict, where: str) -> Clip:
    missing = [name for name in (*TEXT_FIELDS, *COUNT_FIELDS) if name not in row]
    if missing:
        raise CompareError(f"{where}: lacks {', '.join(missing)}; {WRITTEN_BY}")
    tokens = row.get("token_ids")
    bad = [name for name in TEXT_FIELDS if not isinstance(row[name], str)]
    bad += [name for name in COUNT_FIELDS if not _is_count(row[name])]
    if tokens is not None and not (isinstance(tokens, list) and all(_is_count(t) for t in tokens)):
        bad.append("token_ids")
    if bad:
        raise CompareError(f"{where}: bad value of {', '.join(bad)}")
    chars = [row.get(name) if _is_count(row.get(name)) else None for name in ("ref_chars", "char_errors")]
    return Clip(row["utt_id"], row["audio_filepath"], row["ref"], row["hyp"], row["hyp_norm"], row["ref_words"],
                sum(row[name] for name in COUNT_FIELDS[1:]), None if tokens is None else tuple(tokens), *chars)


# --- the checks ---------------------------------------------------------------------------------------------------


def contract_fields() -> tuple[str, ...]:
    """Top-level field names of the eval contract: what --allow accepts."""
    return tuple(field.name for field in fields(EvalContract))


def _contract_value(contract: EvalContract, dotted: str):
    head, _, key = dotted.partition(".")
    value = getattr(contract, head)
    return value.get(key) if key else value


def check_contracts(a: ScoredFolder, b: ScoredFolder, allow: tuple[str, ...]) -> list[dict]:
    """The accepted differences ({"field", "a", "b"}); ContractMismatch naming every other one."""
    unknown = [name for name in allow if name not in contract_fields()]
    if unknown:
        raise CompareError(f"--allow {unknown[0]}: not a field of the eval contract; "
                           f"one of {', '.join(contract_fields())}")
    if "metric" in allow and a.contract.metric != b.contract.metric:
        raise ContractMismatch(f"{a.path} vs {b.path}: metric ({a.contract.metric!r} vs {b.contract.metric!r}) "
                               "differs; a WER and a CER have no paired difference, --allow cannot accept it")
    try:
        require_comparable(a.contract, b.contract, allow=allow)
    except ContractMismatch as error:
        refused = {name.split(".")[0] for name in a.contract.differences(b.contract)} - set(allow)
        if "manifest_sha256" in refused:
            raise ContractMismatch(f"{a.path} and {b.path} scored different manifests; {error}") from None
        raise ContractMismatch(f"{a.path} vs {b.path}: {error}; --allow FIELD accepts a difference in a "
                               "top-level field") from None
    return [{"field": name, "a": _contract_value(a.contract, name), "b": _contract_value(b.contract, name)}
            for name in a.contract.differences(b.contract)]


def pair_clips(a: ScoredFolder, b: ScoredFolder) -> list[tuple[Clip, Clip]]:
    """A's clips with B's, in A's order; CompareError when the folders scored different manifests.

    Equal manifest hashes prove the same audio and transcripts in the same order, so utt_id pairs
    them (audio paths may be written relative to another folder); otherwise the audio path must
    match too. Paired clips must have the same reference either way.
    """
    by_path = a.contract.manifest_sha256 != b.contract.manifest_sha256

    def keyed(folder: ScoredFolder) -> dict:
        clips = {}
        for clip in folder.clips:
            key = (clip.utt_id, clip.audio_filepath if by_path else "")
            if key in clips:
                raise CompareError(f"{folder.path / TRANSCRIPTS}: holds clip {clip.utt_id} twice")
            clips[key] = clip
        return clips

    clips_a, clips_b = keyed(a), keyed(b)
    different = f"{a.path} and {b.path} scored different manifests"
    if clips_a.keys() != clips_b.keys():
        only_a = [key[0] for key in clips_a if key not in clips_b]
        only_b = [key[0] for key in clips_b if key not in clips_a]
        raise CompareError(f"{different}: {len(only_a)} clip(s) only in A {only_a[:3]}, "
                           f"{len(only_b)} only in B {only_b[:3]}")
    pairs = [(clips_a[key], clips_b[key]) for key in clips_a]
    changed = [ca.utt_id for ca, cb in pairs if (ca.ref, ca.ref_words) != (cb.ref, cb.ref_words)]
    if changed:
        raise CompareError(f"{different}: the reference of {len(changed)} clip(s) differs {changed[:3]}")
    return pairs


def agreement(pairs: list[tuple[Clip, Clip]]) -> Agreement:
    with_tokens = [(ca, cb) for ca, cb in pairs if ca.token_ids is not None and cb.token_ids is not None]
    return Agreement(
        clips=len(pairs), same_text=sum(ca.hyp == cb.hyp for ca, cb in pairs),
        same_normalized=sum(ca.hyp_norm == cb.hyp_norm for ca, cb in pairs),
        token_clips=len(with_tokens), same_tokens=sum(ca.token_ids == cb.token_ids for ca, cb in with_tokens),
    )


def clip_differences(pairs: list[tuple[Clip, Clip]], metric: Metric | None = None) -> list[ClipDifference]:
    """Every clip whose hypotheses differ, most different first: |WER B - WER A| (the primary metric's
    rates: `wer_a`/`wer_b` hold CER for a CER comparison), then text difference."""
    metric = metric or metric_named("wer")
    found = []
    for ca, cb in pairs:
        if ca.hyp != cb.hyp:
            similar = SequenceMatcher(None, ca.hyp.split(), cb.hyp.split(), autojunk=False).ratio()
            found.append(ClipDifference(ca.utt_id, ca.audio_filepath, ca.ref, ca.hyp, cb.hyp, ca.rate(metric),
                                        cb.rate(metric),
                                        1.0 - similar))
    return sorted(found, key=lambda d: (-abs(d.wer_delta), -d.text_difference))  # stable: manifest order next


def compare_folders(a: str | Path, b: str | Path, allow: tuple[str, ...] = (), margin: float = DEFAULT_MARGIN,
                    top: int = DEFAULT_TOP, resamples: int = DEFAULT_RESAMPLES) -> FolderComparison:
    """Everything `moonlora compare A B` reports (see the module docstring)."""
    if not (math.isfinite(margin) and margin >= 0):
        raise CompareError(f"--margin must be a WER difference >= 0 (0.005 = 0.5 WER points), got {margin}")
    if top < 0:
        raise CompareError(f"--top must be >= 0, got {top}")
    folder_a, folder_b = read_folder(a), read_folder(b)
    allowed = check_contracts(folder_a, folder_b, tuple(allow))
    pairs = pair_clips(folder_a, folder_b)
    metric = metric_named(folder_a.contract.metric)
    lacking = [c.utt_id for pair in pairs for c in pair if None in c.counts(metric)]
    if lacking:
        raise CompareError(f"{metric.label} needs each clip's character counts (ref_chars, char_errors), which clip "
                           f"{lacking[0]} lacks; score both folders again with this moonlora")
    counts_a, counts_b = [ca.counts(metric) for ca, _ in pairs], [cb.counts(metric) for _, cb in pairs]
    bootstrap = paired_bootstrap(
        [e for e, _ in counts_a], [u for _, u in counts_a], [e for e, _ in counts_b], [u for _, u in counts_b],
        resamples=resamples, seed=BOOTSTRAP_SEED, confidence=CONFIDENCE, metric=metric.name,
    )
    differences = clip_differences(pairs, metric)
    return FolderComparison(folder_a, folder_b, tuple(allow), allowed, bootstrap, agreement(pairs), len(differences),
                      differences[:top], margin)


# --- the console view ---------------------------------------------------------------------------------------------


def _shown(value) -> str:
    """A contract value for one line: hashes cut to 12 characters."""
    return repr(value[:12] if isinstance(value, str) and len(value) == 64 else value)


def _rate(same: int, total: int) -> str:
    return f"{same / total:.3f} ({same}/{total})" if total else "n/a (no token ids)"


def render(comparison: FolderComparison) -> str:
    boot, agree = comparison.bootstrap, comparison.agreement
    label = boot.label
    lines = [f"A: {comparison.a.path}  {label} {boot.baseline_wer:.4f}  contract {comparison.a.contract.fingerprint}",
             f"B: {comparison.b.path}  {label} {boot.tuned_wer:.4f}  contract {comparison.b.contract.fingerprint}"]
    if comparison.allowed_differences:
        lines.append("allowed differences: " + ", ".join(
            f"{d['field']} ({_shown(d['a'])} vs {_shown(d['b'])})" for d in comparison.allowed_differences))
    else:
        lines.append("eval contracts: identical")
    lines.append(f"{label}(B) - {label}(A): {ci_cell(boot)} ({boot.confidence:.0%} CI), P(B better)="
                 f"{boot.p_tuned_better:.3f} over {boot.clips} paired clips ({boot.resamples} resamples, "
                 f"seed {boot.seed})")
    lines.append(f"agreement: text {_rate(agree.same_text, agree.clips)}, normalized "
                 f"{_rate(agree.same_normalized, agree.clips)}, token ids "
                 f"{_rate(agree.same_tokens, agree.token_clips)}")
    relation = "<=" if comparison.non_inferior else ">"
    verdict = "non-inferior to A" if comparison.non_inferior else "NOT shown non-inferior to A"
    lines.append(f"verdict: B is {verdict} within a margin of {comparison.margin:g} "
                 f"(CI high end {boot.ci_high:+.4f} {relation} {comparison.margin:g})")
    if comparison.top:
        lines += ["", f"clips that differ most ({len(comparison.top)} of {comparison.differing_clips} differing):", ""]
        lines += markdown.table(("clip", f"{label} A", f"{label} B", "ref", "hyp A", "hyp B"), [
            [markdown.text(d.utt_id), f"{d.wer_a:.3f}", f"{d.wer_b:.3f}", markdown.text(short(d.ref, 80)),
             markdown.text(short(d.hyp_a, 80)), markdown.text(short(d.hyp_b, 80))] for d in comparison.top])
    return "\n".join(lines)
