"""`moonlora decide`: the experiment plan's Decision Criteria as a verdict over run folders.

- primary: tuned WER < baseline WER on the main manifest, with the 95% CI of the difference
  excluding 0;
- secondary: tuned WER not significantly worse (CI low end <= 0) on at least one additional
  manifest (extras and canary);
- reproducibility: the primary result holds in every one of >= 2 runs that differ only by seed;
- sanity: training loss decreased, and no manifest's WER more than doubled.
Runs measured under different eval contracts are refused, naming the differing fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from moonlora.contract import EvalContract, require_comparable
from moonlora.experiment import CONFIG_FILE, METRICS_FILE, RUN_CONTROL_FIELDS

PASS, FAIL, NOT_ASSESSED = "pass", "fail", "not assessed"
LOSS_WINDOW = 5  # steps averaged at each end of the loss curve
REGRESSION_FACTOR = 2.0


class RunUnreadable(ValueError):
    """A run folder without usable metrics."""


@dataclass(frozen=True)
class Verdict:
    criterion: str
    outcome: str  # pass | fail | not assessed
    detail: str


@dataclass
class Decision:
    runs: list[str]
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(v.outcome != FAIL for v in self.verdicts) and any(v.outcome == PASS for v in self.verdicts)

    def to_dict(self) -> dict:
        return {"runs": self.runs, "passed": self.passed, "verdicts": [asdict(v) for v in self.verdicts]}


def load_run(run_dir: str | Path) -> dict:
    path = Path(run_dir) / METRICS_FILE
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunUnreadable(f"{path}: cannot read run metrics ({error}); pass a folder written by moonlora experiment") from None
    if metrics.get("status") not in ("success", "stopped_early"):
        raise RunUnreadable(f"{path}: run status is {metrics.get('status')!r} ({metrics.get('reason')}); "
                            "only finished runs can be decided")
    metrics["_dir"] = str(run_dir)
    return metrics


def require_one_protocol(runs: list[dict]) -> None:
    """All runs' baselines must share one contract per manifest (adapters differ by design)."""
    first = runs[0]
    for other in runs[1:]:
        for name in ("main", *[n for n in first["baseline"] if n != "val"]):
            if name in other["baseline"]:
                require_comparable(EvalContract.from_dict(first["baseline"][name]["contract"]),
                                   EvalContract.from_dict(other["baseline"][name]["contract"]),
                                   allow=("adapter_sha256",))


def primary(run: dict) -> Verdict:
    c = run["comparisons"]["main"]
    better = c["tuned_wer"] < c["baseline_wer"] and c["ci_high"] < 0
    detail = (f"{run['run_id']}: main WER {c['baseline_wer']:.4f} -> {c['tuned_wer']:.4f}, "
              f"delta {c['delta']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]")
    return Verdict("primary", PASS if better else FAIL, detail)


def secondary(run: dict) -> Verdict:
    others = {n: c for n, c in run["comparisons"].items() if n not in ("main", "val")}
    if not others:
        return Verdict("secondary", NOT_ASSESSED, f"{run['run_id']}: no extra or canary manifest")
    non_worse = [n for n, c in others.items() if c["ci_low"] <= 0]
    detail = ", ".join(f"{n} {c['delta']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]" for n, c in others.items())
    return Verdict("secondary", PASS if non_worse else FAIL, f"{run['run_id']}: {detail}")


def sanity(run: dict) -> Verdict:
    losses = [row["loss"] for row in run["training"]["losses"] if row["loss"] == row["loss"]]  # drop NaN
    window = min(LOSS_WINDOW, max(len(losses) // 2, 1))
    decreased = len(losses) >= 2 and sum(losses[-window:]) / window < sum(losses[:window]) / window
    regressions = [n for n, c in run["comparisons"].items()
                   if c["baseline_wer"] > 0 and c["tuned_wer"] > REGRESSION_FACTOR * c["baseline_wer"]]
    problems = ([] if decreased else ["training loss did not decrease"]) + \
               [f"{n} WER more than doubled" for n in regressions]
    detail = "; ".join(problems) or (f"loss {sum(losses[:window]) / window:.4f} -> {sum(losses[-window:]) / window:.4f}, "
                                     "no WER regression > 2x")
    return Verdict("sanity", FAIL if problems else PASS, f"{run['run_id']}: {detail}")


def _config_without_seed(run_dir: str) -> dict:
    config = json.loads((Path(run_dir) / CONFIG_FILE).read_text())
    for key in ("output_dir", *RUN_CONTROL_FIELDS):
        config.pop(key, None)
    config.get("train", {}).pop("seed", None)
    return config


def reproducibility(runs: list[dict]) -> Verdict:
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(json.dumps(_config_without_seed(run["_dir"]), sort_keys=True), []).append(run)
    seed_groups = [g for g in groups.values() if len({r["config"]["train"]["seed"] for r in g}) >= 2]
    if not seed_groups:
        return Verdict("reproducibility", NOT_ASSESSED, "needs >= 2 runs that differ only by --seed")
    details, holds = [], True
    for group in seed_groups:
        outcomes = {r["run_id"]: primary(r).outcome for r in group}
        holds &= all(o == PASS for o in outcomes.values())
        details.append(", ".join(f"{rid} (seed {r['config']['train']['seed']}): {outcomes[rid]}"
                                 for rid, r in ((r["run_id"], r) for r in group)))
    return Verdict("reproducibility", PASS if holds else FAIL, "; ".join(details))


def decide(run_dirs: list[str | Path]) -> Decision:
    runs = [load_run(d) for d in run_dirs]
    require_one_protocol(runs)
    decision = Decision(runs=[r["run_id"] for r in runs])
    for run in runs:
        decision.verdicts += [primary(run), secondary(run), sanity(run)]
    decision.verdicts.append(reproducibility(runs))
    return decision


def render(decision: Decision) -> str:
    lines = ["| criterion | verdict | detail |", "| --- | --- | --- |"]
    lines += [f"| {v.criterion} | {v.outcome} | {v.detail} |" for v in decision.verdicts]
    lines.append(f"\nOverall: {'PASS' if decision.passed else 'FAIL'}")
    return "\n".join(lines)
