"""What the report shows of a run, as plain text: the run records, the Test Matrix and per-manifest cells.

Shared by the Markdown/console report (`moonlora.report`) and the HTML page
(`moonlora.html_report`), which each add their own markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MATRIX_COLUMNS = ("Run ID", "Date", "Command", "Dataset", "Steps", "LR", "LoRA Targets", "Manifest",
                  "Baseline WER", "Tuned WER", "Notes", "95% CI (tuned - baseline)")
MANIFEST_COLUMNS = ("Manifest", "Clips", "Baseline WER", "Tuned WER", "95% CI (tuned - baseline)",
                    "P(tuned better)", "Flags (baseline -> tuned)")


@dataclass(frozen=True)
class Run:
    """One readable run folder."""

    run_id: str  # folder path relative to runs_dir (its name when one level deep)
    path: Path
    metrics: dict

    @property
    def created_at(self) -> str | None:
        return (self.metrics.get("provenance") or {}).get("created_at")

    @property
    def status(self) -> str:
        return str(self.metrics.get("status", "unknown"))


@dataclass(frozen=True)
class SkippedRun:
    """A folder holding experiment_metrics.json that could not be read."""

    path: Path
    reason: str


# --- cells ---------------------------------------------------------------------------------------------------------


def ci_cell(comparison: dict) -> str:
    """Delta with its 95% CI: "-0.8759 [-0.9642, -0.7931]"."""
    return f"{comparison['delta']:+.4f} [{comparison['ci_low']:+.4f}, {comparison['ci_high']:+.4f}]"


def delta_cell(comparison: dict) -> str:
    return f"{ci_cell(comparison)} P(better)={comparison['p_tuned_better']:.3f}"


def manifest_names(metrics: dict) -> list[str]:
    """Scored manifests in plan order: val, main, extras, canary."""
    names = list(dict.fromkeys([*metrics.get("baseline", {}), *metrics.get("tuned", {})]))
    rank = {"val": 0, "main": 1, "canary": 3}
    return sorted(names, key=lambda n: rank.get(n, 2))


def format_lr(lr) -> str:
    """1e-3 style, as the plan writes learning rates."""
    if not isinstance(lr, (int, float)):
        return "-" if lr is None else str(lr)
    mantissa, exponent = f"{lr:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def format_wer(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def wer_of(metrics: dict, side: str, name: str = "main"):
    return (metrics.get(side, {}).get(name) or {}).get("wer")


def steps_cell(metrics: dict) -> str:
    """Steps done, "/max" added when the run ended before max_steps."""
    max_steps = (metrics.get("config", {}).get("train") or {}).get("max_steps")
    steps = (metrics.get("training") or {}).get("steps")
    if steps is None:
        return "-" if max_steps is None else f"-/{max_steps}"
    return f"{steps}/{max_steps}" if max_steps is not None and steps < max_steps else str(steps)


def short(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def run_notes(metrics: dict) -> str:
    """Status, stop reason, best step, canary and extra-manifest deltas."""
    notes = [str(metrics.get("status", "unknown"))]
    if metrics.get("reason"):
        notes[0] += f": {short(metrics['reason'])}"
    training = metrics.get("training") or {}
    if training.get("best_step") is not None:
        best = training.get("best_val_wer")
        notes.append(f"best step {training['best_step']}" + (f" (val WER {best:.4f})" if best is not None else ""))
    comparisons = metrics.get("comparisons", {})
    for name in manifest_names(metrics):
        if name not in ("val", "main") and name in comparisons:
            notes.append(f"{name} {ci_cell(comparisons[name])}")
    return "; ".join(notes)


def matrix_cells(run: Run) -> dict[str, str]:
    """One Test Matrix row as plain text (no Markdown/HTML markup)."""
    metrics, config = run.metrics, run.metrics.get("config", {})
    main = metrics.get("comparisons", {}).get("main")
    return {
        "Run ID": run.run_id, "Date": (run.created_at or "-")[:10], "Command": str(metrics.get("command", "-")),
        "Dataset": str(config.get("dataset_path", "-")), "Steps": steps_cell(metrics),
        "LR": format_lr((config.get("train") or {}).get("learning_rate")),
        "LoRA Targets": ",".join((config.get("lora") or {}).get("target_modules") or []) or "-",
        "Manifest": str(config.get("manifest_path", "-")),
        "Baseline WER": format_wer(wer_of(metrics, "baseline")), "Tuned WER": format_wer(wer_of(metrics, "tuned")),
        "Notes": run_notes(metrics), "95% CI (tuned - baseline)": ci_cell(main) if main else "-",
    }


def flag_changes(before: dict | None, after: dict | None) -> str:
    """"empty_hypothesis 1 -> 0" for every flag seen on either side; "none" when none fired."""
    before, after = before or {}, after or {}
    changes = [f"{flag} {before.get(flag, 0)} -> {after.get(flag, '-') if after else '-'}"
               for flag in dict.fromkeys([*before, *after]) if before.get(flag, 0) or after.get(flag, 0)]
    return ", ".join(changes) or "none"


def manifest_cells(metrics: dict) -> list[dict[str, str]]:
    """Per manifest: clips, baseline, tuned, CI, P(better), flag changes."""
    rows = []
    for name in manifest_names(metrics):
        before = metrics.get("baseline", {}).get(name) or {}
        after = metrics.get("tuned", {}).get(name)
        comparison = metrics.get("comparisons", {}).get(name)
        rows.append({"Manifest": name, "Clips": str(before.get("clips", (after or {}).get("clips", "-"))),
                     "Baseline WER": format_wer(before.get("wer")), "Tuned WER": format_wer((after or {}).get("wer")),
                     "95% CI (tuned - baseline)": ci_cell(comparison) if comparison else "-",
                     "P(tuned better)": f"{comparison['p_tuned_better']:.3f}" if comparison else "-",
                     "Flags (baseline -> tuned)": flag_changes(before.get("flags"), (after or {}).get("flags"))})
    return rows
