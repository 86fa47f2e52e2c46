"""`moonlora decide`: the experiment plan's Decision Criteria and hypotheses as verdicts over run folders.

Every threshold is explicit (`DecideConfig`, flags of `moonlora decide`) and every verdict prints
the numbers it used:
- primary: tuned WER < baseline WER on the main manifest, with the 95% CI of the difference
  excluding 0;
- secondary: non-inferiority, judged per manifest (each extra manifest and the canary get their
  own verdict, so a fine canary cannot mask a worse clean manifest): the CI high end of
  WER(tuned) - WER(baseline) must be at most `margin` (default 1 WER point, absolute). A small
  set that cannot show it fails: "not shown non-inferior" is not "non-worse";
- H3: tuned main WER improves or stays within +-`h3_band` (default 5 %) of the baseline;
- reproducibility: the primary result holds in every one of >= 2 runs that differ only by seed;
- sanity: training loss decreased, no manifest's WER more than `regression_factor`x its baseline,
  and no manifest with a 0.0 baseline rose beyond `margin`;
- non-speech (runs made with --nonspeech-manifest): the tuned model may not emit more words where nobody
  speaks than the baseline, beyond `nonspeech_margin` words per clip: the CI high end of words per clip
  (tuned - baseline, paired bootstrap) must be at most the margin; the share of clips with text and the
  looping clips (either loop rule) are printed beside it;
- export parity (runs made with --export): the outcome the run stored (`comparison.parity_outcome`:
  the exported model's WER within the margin of the torch model's, CI high end of the paired delta,
  and its CI against the baseline excluding 0; "inconclusive", not a failure, when the CI straddles
  the margin), shown with its numbers.
"WER" is the run's primary metric: CER where the run scored by CER (Chinese, Japanese, Korean, or
`--metric cer`; each comparison names its `metric`, and every line prints it). Runs measured under
different eval contracts (language and metric included) are refused, naming the differing fields. A run
that has not finished (running, died, failed, interrupted) gets a "not assessed" line saying
where it stands instead of an error. Run folders are read through `moonlora.runfolder`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moonlora.comparison import FAIL, INCONCLUSIVE, PASS, Comparison
from moonlora.eval.contract import EvalContract, require_comparable
from moonlora.runfolder import RUN_CONTROL_FIELDS, FoundRun, RunRecord, describe_state, read_record
from moonlora.errors import InputError

NOT_ASSESSED = "not assessed"
LOSS_WINDOW = 5  # steps averaged at each end of the loss curve


@dataclass(frozen=True)
class DecideConfig:
    """The plan's thresholds, made explicit."""

    margin: float = 0.01  # non-inferiority margin, absolute WER (secondary; sanity from a 0.0 baseline)
    h3_band: float = 0.05  # H3: tuned within +-5 % (relative) of the baseline, or better
    regression_factor: float = 2.0  # sanity: "catastrophic" = more than this times the baseline WER
    nonspeech_margin: float = 0.5  # non-speech: words per clip the tuned model may add where nobody speaks

    def __post_init__(self) -> None:
        in_range = 0 <= self.margin < math.inf and 0 <= self.h3_band < math.inf and 1 < self.regression_factor < math.inf
        if not in_range:  # also refuses NaN
            raise InputError("--margin and --h3-band must be >= 0, --regression-factor above 1, all finite; got "
                             f"{self.margin}, {self.h3_band}, {self.regression_factor}")
        if not 0 <= self.nonspeech_margin < math.inf:
            raise InputError(f"--nonspeech-margin is words per clip, a finite number >= 0; got {self.nonspeech_margin}")


@dataclass(frozen=True)
class Verdict:
    criterion: str
    outcome: str  # pass | fail | not assessed | inconclusive
    detail: str


@dataclass
class Decision:
    runs: list[str]
    verdicts: list[Verdict] = field(default_factory=list)
    thresholds: DecideConfig = field(default_factory=DecideConfig)

    @property
    def passed(self) -> bool:
        return all(v.outcome != FAIL for v in self.verdicts) and any(v.outcome == PASS for v in self.verdicts)

    def to_dict(self) -> dict:
        return {"runs": self.runs, "passed": self.passed, "thresholds": asdict(self.thresholds),
                "verdicts": [asdict(v) for v in self.verdicts]}


def load_runs(run_dirs: list[str | Path]) -> list[FoundRun]:
    """Every folder's record (a RunRecordError names the first unreadable one)."""
    return [FoundRun(Path(d).name, Path(d), read_record(d)) for d in run_dirs]


def require_one_protocol(records: list[RunRecord]) -> None:
    """All runs' baselines must share one contract per manifest (adapters differ by design)."""
    first = records[0]
    for other in records[1:]:
        for name in ("main", *[n for n in first.baseline if n != "val"]):
            if name in first.baseline and name in other.baseline:
                require_comparable(EvalContract.from_dict(first.baseline[name].contract),
                                   EvalContract.from_dict(other.baseline[name].contract),
                                   allow=("adapter_sha256",))
        if first.nonspeech is not None and other.nonspeech is not None:
            require_comparable(EvalContract.from_dict(first.nonspeech.baseline.contract),
                               EvalContract.from_dict(other.nonspeech.baseline.contract), allow=("adapter_sha256",))


def primary(record: RunRecord) -> Verdict:
    c = record.comparisons["main"]
    better = c.tuned_wer < c.baseline_wer and c.tuned_shown_better
    detail = (f"{record.run_id}: main {c.label} {c.baseline_wer:.4f} -> {c.tuned_wer:.4f}, "
              f"delta {c.delta:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}]")
    return Verdict("primary", PASS if better else FAIL, detail)


def _label(record: RunRecord) -> str:
    """The run's primary metric, as its main comparison names it (WER or CER)."""
    return record.comparisons["main"].label if "main" in record.comparisons else "WER"


def _wers(c: Comparison) -> str:
    return (f"{c.label} {c.baseline_wer:.4f} -> {c.tuned_wer:.4f}, delta {c.delta:+.4f} "
            f"[{c.ci_low:+.4f}, {c.ci_high:+.4f}]")


def secondary(record: RunRecord, thresholds: DecideConfig) -> list[Verdict]:
    """One non-inferiority verdict per extra manifest and canary."""
    others = {n: c for n, c in record.comparisons.items() if n not in ("main", "val")}
    if not others:
        return [Verdict("secondary", NOT_ASSESSED, f"{record.run_id}: no extra or canary manifest")]
    verdicts = []
    for name, c in others.items():
        holds = c.non_inferior(thresholds.margin)
        finding = (f"non-inferior (CI high {c.ci_high:+.4f} <= margin {thresholds.margin})" if holds else
                   f"not shown non-inferior (CI high {c.ci_high:+.4f} > margin {thresholds.margin})")
        verdicts.append(Verdict("secondary", PASS if holds else FAIL, f"{record.run_id}: {name} {_wers(c)}; {finding}"))
    return verdicts


def h3(record: RunRecord, thresholds: DecideConfig) -> Verdict:
    """H3's success rule: tuned main WER improves or stays within +-band of the baseline."""
    c = record.comparisons["main"]
    limit = c.baseline_wer * (1 + thresholds.h3_band)
    change = f"{(c.tuned_wer - c.baseline_wer) / c.baseline_wer:+.1%}" if c.baseline_wer > 0 else "from 0"
    holds = c.tuned_wer <= limit
    return Verdict("H3 (within band)", PASS if holds else FAIL,
                   f"{record.run_id}: main {c.label} {c.baseline_wer:.4f} -> {c.tuned_wer:.4f} ({change}; "
                   f"limit {limit:.4f} = baseline x (1 + {thresholds.h3_band}))")


def sanity(record: RunRecord, thresholds: DecideConfig) -> Verdict:
    losses = [row["loss"] for row in record.training.losses if isinstance(row.get("loss"), (int, float))]
    window = min(LOSS_WINDOW, max(len(losses) // 2, 1))
    decreased = len(losses) >= 2 and sum(losses[-window:]) / window < sum(losses[:window]) / window
    factor = thresholds.regression_factor
    problems = [] if decreased else ["training loss did not decrease"]
    for name, c in record.comparisons.items():
        if c.baseline_wer > 0 and c.tuned_wer > factor * c.baseline_wer:
            problems.append(f"{name} {c.label} more than {factor:g}x ({c.baseline_wer:.4f} -> {c.tuned_wer:.4f})")
        elif c.baseline_wer == 0 and c.tuned_wer > thresholds.margin:
            problems.append(f"{name} {c.label} rose from 0.0 to {c.tuned_wer:.4f} (> margin {thresholds.margin})")
    detail = "; ".join(problems) or (f"loss {sum(losses[:window]) / window:.4f} -> {sum(losses[-window:]) / window:.4f}, "
                                     f"no {_label(record)} regression > {factor:g}x or from 0.0 beyond {thresholds.margin}")
    return Verdict("sanity", FAIL if problems else PASS, f"{record.run_id}: {detail}")


def nonspeech(record: RunRecord, thresholds: DecideConfig) -> Verdict:
    """Where nobody speaks, the tuned model writes no more than the baseline, within the margin (words per clip)."""
    summary = record.nonspeech
    if summary is None or "words_per_clip" not in summary.comparisons:
        return Verdict("non-speech", NOT_ASSESSED, f"{record.run_id}: no --nonspeech-manifest "
                       "(moonlora synth --domain nonspeech builds one)")
    words, share = summary.comparisons["words_per_clip"], summary.comparisons.get("text_share")
    holds = words.ci_high <= thresholds.nonspeech_margin
    share_text = "" if share is None else (f"; clips with text {share.baseline_wer:.0%} -> {share.tuned_wer:.0%}")
    loops = (f"; looping clips {len(summary.baseline.looping_clips)} -> "
             f"{len(summary.tuned.looping_clips) if summary.tuned else '-'}")
    finding = (f"CI high {words.ci_high:+.2f} <= margin {thresholds.nonspeech_margin}" if holds else
               f"CI high {words.ci_high:+.2f} > margin {thresholds.nonspeech_margin}: the tuned model writes text "
               "where nobody speaks")
    detail = (f"{record.run_id}: {summary.clips} non-speech clips, words/clip {words.baseline_wer:.2f} -> "
              f"{words.tuned_wer:.2f}, delta {words.delta:+.2f} [{words.ci_low:+.2f}, {words.ci_high:+.2f}]"
              f"{share_text}{loops}; {finding}")
    return Verdict("non-speech", PASS if holds else FAIL, detail)


def export_parity(record: RunRecord) -> Verdict:
    """The shipped model scores like the measured one, and still beats the baseline (outcome stored by the run)."""
    parity = record.export_parity
    main = parity.main
    delta, baseline = main.export_minus_torch, main.export_minus_baseline
    detail = (f"{record.run_id}: {parity.format} ({parity.runtime['precision']}) main {delta.label} "
              f"{main.torch_wer:.4f} (torch) -> {main.export_wer:.4f} (export), delta {delta.delta:+.4f} "
              f"[{delta.ci_low:+.4f}, {delta.ci_high:+.4f}] (margin {parity.margin}); vs baseline "
              f"{baseline.delta:+.4f} [{baseline.ci_low:+.4f}, {baseline.ci_high:+.4f}]"
              + ("; the CI straddles the margin: score more clips to decide" if parity.outcome == INCONCLUSIVE else ""))
    return Verdict("export parity", parity.outcome, detail)


def _config_without_seed(record: RunRecord) -> dict:
    config = record.config.to_dict()
    for key in ("output_dir", *RUN_CONTROL_FIELDS):
        config.pop(key)
    config["train"].pop("seed")
    return config


def reproducibility(records: list[RunRecord]) -> Verdict:
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(json.dumps(_config_without_seed(record), sort_keys=True), []).append(record)
    seed_groups = [g for g in groups.values() if len({r.seed for r in g}) >= 2]
    if not seed_groups:
        return Verdict("reproducibility", NOT_ASSESSED, "needs >= 2 finished runs that differ only by --seed")
    details, holds = [], True
    for group in seed_groups:
        outcomes = {r.run_id: primary(r).outcome for r in group}
        holds &= all(o == PASS for o in outcomes.values())
        details.append(", ".join(f"{r.run_id} (seed {r.seed}): {outcomes[r.run_id]}" for r in group))
    return Verdict("reproducibility", PASS if holds else FAIL, "; ".join(details))


def decide(run_dirs: list[str | Path], thresholds: DecideConfig | None = None) -> Decision:
    thresholds = thresholds or DecideConfig()
    runs = load_runs(run_dirs)
    finished = [run.record for run in runs
                if run.record.finished and "main" in run.record.comparisons and run.record.training is not None]
    if finished:
        require_one_protocol(finished)
    decision = Decision(runs=[run.record.run_id for run in runs], thresholds=thresholds)
    for run in runs:
        if run.record.finished and ("main" not in run.record.comparisons or run.record.training is None):
            decision.verdicts.append(Verdict("run", NOT_ASSESSED, f"{run.record.run_id}: finished without a main "
                                             "comparison or training summary; rerun the experiment"))
        elif run.record.finished:
            record = run.record
            decision.verdicts += [primary(record), *secondary(record, thresholds), h3(record, thresholds),
                                  sanity(record, thresholds), nonspeech(record, thresholds)]
            if record.export_parity:
                decision.verdicts.append(export_parity(record))
        else:
            decision.verdicts.append(Verdict("run", NOT_ASSESSED,
                                             f"{run.record.run_id}: {describe_state(run.record, run.path)}"))
    decision.verdicts.append(reproducibility(finished))
    return decision


def render(decision: Decision) -> str:
    lines = ["| criterion | verdict | detail |", "| --- | --- | --- |"]
    lines += [f"| {v.criterion} | {v.outcome} | {v.detail} |" for v in decision.verdicts]
    t = decision.thresholds
    lines.append(f"\nOverall: {'PASS' if decision.passed else 'FAIL'} (non-inferiority margin {t.margin}, "
                 f"H3 band +-{t.h3_band:.0%}, regression factor {t.regression_factor:g}x, "
                 f"non-speech margin {t.nonspeech_margin:g} words/clip)")
    return "\n".join(lines)
