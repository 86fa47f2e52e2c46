"""What the report shows of a run, as plain text: the Test Matrix and per-manifest cells.

Shared by the Markdown/console report (`moonlora.verdict.report`) and the HTML page
(`moonlora.verdict.html`), which each add their own markup. Runs are `runfolder.FoundRun`s:
the typed record, read through the run folder module.

"WER" in a column or note is the run's primary metric: `headers` and `run_metric` put "CER" there for
runs scored by CER (Chinese, Japanese, Korean, `--metric cer`); the cells' keys stay the WER names.
"""

from __future__ import annotations

from moonlora.comparison import Comparison
from moonlora.markdown import ci_cell, short
from moonlora.runfolder import FoundRun, RunRecord, describe_state

MATRIX_COLUMNS = ("Run ID", "Date", "Command", "Dataset", "Steps", "LR", "LoRA Targets", "Manifest",
                  "Baseline WER", "Tuned WER", "Notes", "95% CI (tuned - baseline)")
CANDIDATE_COLUMNS = ("Adapter", "Step", "Val WER", "Main WER", "95% CI (main - baseline)", "Folder")
MANIFEST_COLUMNS = ("Manifest", "Clips", "Baseline WER", "Tuned WER", "95% CI (tuned - baseline)",
                    "P(tuned better)", "Flags (baseline -> tuned)")


def run_metric(record: RunRecord) -> str:
    """The run's primary metric as tables print it: WER or CER (from its config's scoring)."""
    return record.config.scoring.primary_metric.upper()


def metric_label(records: list[RunRecord]) -> str:
    """One label for a table over several runs: WER, CER, or "WER/CER" when they differ."""
    return "/".join(dict.fromkeys(run_metric(record) for record in records)) or "WER"


def headers(columns: tuple[str, ...], label: str) -> tuple[str, ...]:
    """The column names as printed: "WER" replaced by the metric's label."""
    return tuple(column.replace("WER", label) for column in columns)

CER_NOTE = (" CER (character error rate) is the primary metric of Chinese, Japanese and Korean runs and of runs "
            "made with --metric cer: character edits over the normalized texts, spaces removed for zh/ja/ko/yue.")


def delta_cell(comparison: Comparison) -> str:
    return f"{ci_cell(comparison)} P(better)={comparison.p_tuned_better:.3f}"


def manifest_names(record: RunRecord) -> list[str]:
    """Scored manifests in plan order: val, main, extras, canary."""
    names = list(dict.fromkeys([*record.baseline, *record.tuned]))
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


def wer_of(record: RunRecord, side: str, name: str = "main") -> float | None:
    """The primary metric's rate of one scored manifest (WER, or CER for a CER run)."""
    summary = getattr(record, side).get(name)
    return summary.primary if summary is not None else None


def steps_cell(record: RunRecord) -> str:
    """Steps done, "/max" added when the run ended before max_steps."""
    max_steps = record.config.train.max_steps
    if record.training is None:
        return f"-/{max_steps}"
    steps = record.training.steps
    return f"{steps}/{max_steps}" if steps < max_steps else str(steps)


def status_text(run: FoundRun) -> str:
    """"success", "stopped_early: <reason>", or for an unfinished run where it stands."""
    record = run.record
    if record.finished:
        return record.status + (f": {short(record.reason)}" if record.reason else "")
    return describe_state(record, run.path)  # never cut: its end says how to resume


def run_notes(run: FoundRun) -> str:
    """Status, stop reason, best step, canary and extra-manifest deltas, and the run's findings."""
    record = run.record
    notes = [status_text(run)]
    if record.training is not None:
        best = record.training.best_val_wer
        notes.append(f"best step {record.training.best_step}"
                     + (f" (val {run_metric(record)} {best:.4f})" if best is not None else ""))
    last = record.candidates.get("last")
    if last is not None and not last.selected:
        notes.append(f"last adapter (step {last.step}) main {last.main.label} {last.main.primary:.4f} "
                     f"{ci_cell(last.comparison)}")
    for name in manifest_names(record):
        if name not in ("val", "main") and name in record.comparisons:
            notes.append(f"{name} {ci_cell(record.comparisons[name])}")
    notes += [short(note) for note in record.notes]
    return "; ".join(notes)


def matrix_cells(run: FoundRun, mixed: bool = False) -> dict[str, str]:
    """One Test Matrix row as plain text (no Markdown/HTML markup); `mixed`: the matrix holds runs of
    different metrics, so each rate names its own."""
    record, config = run.record, run.record.config
    main = record.comparisons.get("main")
    suffix = f" {run_metric(record)}" if mixed else ""
    return {
        "Run ID": run.run_id, "Date": record.started_at[:10], "Command": record.command or "-",
        "Dataset": config.dataset_path, "Steps": steps_cell(record),
        "LR": format_lr(config.train.learning_rate),
        "LoRA Targets": ",".join(config.lora.target_modules),
        "Manifest": config.manifest_path,
        "Baseline WER": format_wer(wer_of(record, "baseline")) + suffix,
        "Tuned WER": format_wer(wer_of(record, "tuned")) + suffix,
        "Notes": run_notes(run), "95% CI (tuned - baseline)": ci_cell(main) if main else "-",
    }


def flag_changes(before: dict | None, after: dict | None) -> str:
    """"empty_hypothesis 1 -> 0" for every flag seen on either side; "none" when none fired."""
    before, after = before or {}, after or {}
    changes = [f"{flag} {before.get(flag, 0)} -> {after.get(flag, '-') if after else '-'}"
               for flag in dict.fromkeys([*before, *after]) if before.get(flag, 0) or after.get(flag, 0)]
    return ", ".join(changes) or "none"


def manifest_cells(record: RunRecord) -> list[dict[str, str]]:
    """Per manifest: clips, baseline, tuned, CI, P(better), flag changes."""
    rows = []
    for name in manifest_names(record):
        before, after = record.baseline.get(name), record.tuned.get(name)
        comparison = record.comparisons.get(name)
        clips = before.clips if before else (after.clips if after else "-")
        rows.append({"Manifest": name, "Clips": str(clips),
                     "Baseline WER": format_wer(before.primary if before else None),
                     "Tuned WER": format_wer(after.primary if after else None),
                     "95% CI (tuned - baseline)": ci_cell(comparison) if comparison else "-",
                     "P(tuned better)": f"{comparison.p_tuned_better:.3f}" if comparison else "-",
                     "Flags (baseline -> tuned)": flag_changes(before.flags if before else None,
                                                               after.flags if after else None)})
    return rows


def flag_list(flags: dict[str, int]) -> str:
    """"token_cap_hit 3, long_loop 2": the flags that fired; "none" when none did."""
    return ", ".join(f"{flag} {count}" for flag, count in flags.items() if count) or "none"


NONSPEECH_COLUMNS = ("Non-speech", "Baseline", "Tuned", "95% CI (tuned - baseline)")


def nonspeech_cells(record: RunRecord) -> list[dict[str, str]]:
    """The --nonspeech-manifest, base and tuned: words per clip, share of clips with text (each with its
    paired-bootstrap CI), looping clips and flags; no rows for a run without one."""
    summary = record.nonspeech
    if summary is None:
        return []
    before, after, comparisons = summary.baseline, summary.tuned, summary.comparisons

    def row(name: str, base: str, tuned: str, comparison: Comparison | None = None, digits: int = 2) -> dict:
        ci = "-" if comparison is None else (f"{comparison.delta:+.{digits}f} [{comparison.ci_low:+.{digits}f}, "
                                             f"{comparison.ci_high:+.{digits}f}]")
        return dict(zip(NONSPEECH_COLUMNS, (name, base, tuned, ci)))

    def cells(cell) -> tuple[str, str]:
        """(baseline, tuned) of one measure; "-" for a tuned side not scored yet."""
        return cell(before), "-" if after is None else cell(after)

    return [
        row(f"words/clip ({summary.clips} clips)", *cells(lambda side: f"{side.words_per_clip:.2f}"),
            comparisons.get("words_per_clip")),
        row("clips with text", *cells(lambda side: f"{side.clips_with_text} ({side.text_share:.0%})"),
            comparisons.get("text_share"), 3),
        row("looping clips", *cells(lambda side: str(len(side.looping_clips)))),
        row("flags", *cells(lambda side: flag_list(side.flags))),
    ]


def candidate_cells(record: RunRecord) -> list[dict[str, str]]:
    """The best-val and the last adapter on the main manifest (the selected one marked)."""
    rows = []
    for name, candidate in record.candidates.items():
        rows.append({"Adapter": name + (" (selected)" if candidate.selected else ""), "Step": str(candidate.step),
                     "Val WER": format_wer(candidate.val_wer), "Main WER": format_wer(candidate.main.primary),
                     "95% CI (main - baseline)": ci_cell(candidate.comparison), "Folder": candidate.adapter_dir})
    return rows
