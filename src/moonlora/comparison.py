"""One paired-bootstrap result, WER(tuned) - WER(baseline) over the same clips, and the rules read from it.

The rate is the primary metric's, named by `metric` ("wer", or "cer" for Chinese, Japanese, Korean and
wherever a run said `--metric cer`); the fields keep their `_wer` names (the run record's schema), and a
comparison written before metrics were recorded reads as WER. On a non-speech manifest the same type
holds words emitted per clip ("words_per_clip") or the share of clips with any text ("text_share"):
`moonlora.eval.stats.compare_nonspeech`.

The experiment's per-manifest comparisons and candidates, its export parity, `moonlora compare`
(A is the baseline, B the tuned side) and `decide` all hold this one type; the non-inferiority
rule and the export parity outcome are written here once. Torch-free (stdlib only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from moonlora.schema import typed

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
LABELS = {"words_per_clip": "words/clip", "text_share": "text share"}  # the non-speech comparisons
DERIVED = ("excludes_zero", "relative_delta")  # written for readers of the JSON, computed on reading


@dataclass(frozen=True)
class Comparison:
    baseline_wer: float
    tuned_wer: float
    delta: float  # tuned - baseline
    ci_low: float  # percentile CI of delta at `confidence`
    ci_high: float
    p_tuned_better: float  # share of resamples with delta < 0
    resamples: int
    seed: int
    clips: int
    confidence: float = 0.95
    metric: str = "wer"  # the primary metric whose rates baseline_wer and tuned_wer hold
    excludes_zero: bool = field(init=False)
    relative_delta: float | None = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "excludes_zero", self.ci_high < 0 or self.ci_low > 0)
        object.__setattr__(self, "relative_delta", self.delta / self.baseline_wer if self.baseline_wer else None)

    @property
    def label(self) -> str:
        """The metric as tables print it: WER, CER, words/clip or text share."""
        return LABELS.get(self.metric, self.metric.upper())

    @property
    def tuned_shown_better(self) -> bool:
        """The whole CI of tuned - baseline lies below 0."""
        return self.ci_high < 0

    def non_inferior(self, margin: float) -> bool:
        """Tuned is shown no worse than baseline + margin: the CI's high end is at most the margin."""
        return self.ci_high <= margin

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data, where: str = "comparison") -> Comparison:
        return typed(cls, data, where, derived=DERIVED)


def parity_outcome(export_minus_torch: Comparison, export_minus_baseline: Comparison, margin: float) -> str:
    """pass: the export is shown non-inferior to the torch model and better than the baseline; fail:
    it is shown worse than the torch model by more than the margin (CI low end > margin) or not shown
    better than the baseline; inconclusive: the CI straddles the margin (more clips would tell)."""
    if not export_minus_baseline.tuned_shown_better or export_minus_torch.ci_low > margin:
        return FAIL
    return PASS if export_minus_torch.non_inferior(margin) else INCONCLUSIVE
