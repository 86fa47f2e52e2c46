"""Human-readable views of run folders: console tables, the plan's Markdown Test Matrix, an HTML page.

`build_report(runs_dir)` reads every run folder under `runs_dir` (one or two levels deep, any
folder holding `experiment_metrics.json`) and writes the seed plan's "Test Matrix" as Markdown
plus a self-contained HTML page with plots (see `moonlora.html_report`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moonlora.report_tables import (MANIFEST_COLUMNS, MATRIX_COLUMNS, Run, SkippedRun, delta_cell, manifest_cells,
                                    matrix_cells, run_notes)

METRICS_FILE = "experiment_metrics.json"  # same name as moonlora.experiment.METRICS_FILE (not imported: torch-heavy)
DEFAULT_MARKDOWN = Path("docs/training_report.md")
HTML_NAME = "report.html"


def experiment_table(metrics: dict) -> Table:
    table = Table(title=f"moonlora experiment {metrics['run_id']}: {metrics['status']}")
    for column in ("manifest", "clips", "baseline WER", "tuned WER", "delta [95% CI]"):
        table.add_column(column, justify="left" if column in ("manifest", "delta [95% CI]") else "right", no_wrap=True)
    for name, before in metrics.get("baseline", {}).items():
        after = metrics.get("tuned", {}).get(name)
        comparison = metrics.get("comparisons", {}).get(name)
        table.add_row(name, str(before["clips"]), f"{before['wer']:.4f}",
                      "-" if after is None else f"{after['wer']:.4f}",
                      "-" if comparison is None else delta_cell(comparison))
    return table


def print_experiment(metrics: dict, console: Console | None = None) -> None:
    console = console or Console(width=max(Console().width, 120))  # the CI column needs room
    console.print(experiment_table(metrics))
    training = metrics.get("training", {})
    if training:
        console.print(f"steps {training['steps']}, best step {training['best_step']} "
                      f"(val WER {training['best_val_wer']:.4f}), LoRA delta norm {training['lora_delta_norm']:.3f}, "
                      f"{training['skipped_updates']} skipped updates", highlight=False)
    if metrics.get("reason"):
        console.print(f"{metrics['status']}: {metrics['reason']}", highlight=False)


# --- run folders -------------------------------------------------------------------------------------------------


@dataclass
class ReportResult:
    runs: list[Run]
    skipped: list[SkippedRun]
    markdown: str
    markdown_path: Path | None
    html_path: Path


def candidate_dirs(runs_dir: Path) -> list[Path]:
    """runs_dir itself if it is a run folder, else its sub-folders (one or two levels) holding metrics."""
    if (runs_dir / METRICS_FILE).is_file():
        return [runs_dir]
    found = []
    for child in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        if (child / METRICS_FILE).is_file():
            found.append(child)
        else:
            found += sorted(g for g in child.iterdir() if g.is_dir() and (g / METRICS_FILE).is_file())
    return found


def read_metrics(folder: Path) -> dict:
    """The folder's metrics; ValueError saying why when unreadable."""
    try:
        metrics = json.loads((folder / METRICS_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{METRICS_FILE} unreadable: {type(error).__name__}: {error}") from error
    if not isinstance(metrics, dict):
        raise ValueError(f"{METRICS_FILE} is not a JSON object")
    for key in ("config", "provenance", "baseline", "tuned", "comparisons", "training"):
        if key in metrics and not isinstance(metrics[key], dict):
            raise ValueError(f"{METRICS_FILE}: {key!r} is not an object")
    return metrics


def run_sort_key(run: Run) -> tuple:
    return (run.created_at is None, run.created_at or "", run.run_id)


def discover_runs(runs_dir: Path) -> tuple[list[Run], list[SkippedRun]]:
    """Readable runs sorted by created_at then run id, and the skipped folders with reasons."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"{runs_dir}: no such folder")
    runs, skipped = [], []
    for folder in candidate_dirs(runs_dir):
        run_id = folder.name if folder == runs_dir else folder.relative_to(runs_dir).as_posix()
        try:
            runs.append(Run(run_id, folder, read_metrics(folder)))
        except ValueError as error:
            skipped.append(SkippedRun(folder, str(error)))
    return sorted(runs, key=run_sort_key), skipped


# --- Markdown ----------------------------------------------------------------------------------------------------


def md_text(text: str) -> str:
    text = " ".join(str(text).split()).replace("&", "&amp;").replace("<", "&lt;")  # no raw HTML tags
    return text.replace("|", "\\|")


def md_code(text: str) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def md_table(columns: tuple[str, ...], rows: list[str | list[str]]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def matrix_markdown_row(run: Run) -> list[str]:
    cells = matrix_cells(run)
    return [md_code(cells[c]) if c == "Command" else md_text(cells[c]) for c in MATRIX_COLUMNS]


def markdown_report(runs: list[Run], skipped: list[SkippedRun], runs_dir: Path) -> str:
    """The plan's Test Matrix (+ CI column), skipped folders, then a per-manifest table per run."""
    lines = ["# Training report", "",
             f"Generated by `moonlora report` from `{runs_dir}`: {len(runs)} run(s)"
             + (f", {len(skipped)} folder(s) skipped." if skipped else "."), "",
             "WER is corpus WER on the main held-out manifest; the CI is the paired-bootstrap 95% interval "
             "of tuned - baseline (negative = tuned better).", "", "## Test Matrix", ""]
    lines += md_table(MATRIX_COLUMNS, [matrix_markdown_row(run) for run in runs])
    if skipped:
        lines += ["", "## Skipped folders", ""]
        lines += [f"- `{s.path}`: {md_text(s.reason)}" for s in skipped]
    lines += ["", "## Per-manifest results"]
    for run in runs:
        lines += ["", f"### {md_text(run.run_id)}", ""]
        rows = manifest_cells(run.metrics)
        lines += md_table(MANIFEST_COLUMNS, [[md_text(r[c]) for c in MANIFEST_COLUMNS] for r in rows]) if rows \
            else [f"No scored manifests ({md_text(run_notes(run.metrics))})."]
    return "\n".join(lines) + "\n"


# --- entry point -------------------------------------------------------------------------------------------------


def build_report(runs_dir: Path, out_markdown: Path | None = None, out_html: Path | None = None) -> ReportResult:
    """Write the HTML page (default <runs_dir>/report.html) and, when out_markdown is given, the Markdown."""
    from moonlora.html_report import render_html  # matplotlib loads only here

    runs_dir = Path(runs_dir)
    runs, skipped = discover_runs(runs_dir)
    markdown = markdown_report(runs, skipped, runs_dir)
    if out_markdown is not None:
        out_markdown = Path(out_markdown)
        out_markdown.parent.mkdir(parents=True, exist_ok=True)
        out_markdown.write_text(markdown, encoding="utf-8")
    out_html = Path(out_html) if out_html is not None else runs_dir / HTML_NAME
    page = render_html(runs, skipped, runs_dir)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(page, encoding="utf-8")
    return ReportResult(runs, skipped, markdown, out_markdown, out_html)
