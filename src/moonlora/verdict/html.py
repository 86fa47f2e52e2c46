"""The self-contained HTML report: Test Matrix, and per run the plots and the clips that changed most.

Plots are matplotlib figures (no pyplot, so no global backend state) embedded as inline SVG.
Every piece of text from a run folder goes through `html.escape`.
"""

from __future__ import annotations

import difflib
import html
import io
import math
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from moonlora.verdict.tables import (CANDIDATE_COLUMNS, CER_NOTE, MANIFEST_COLUMNS, MATRIX_COLUMNS, NONSPEECH_COLUMNS,
                                    candidate_cells, format_wer, headers, metric_label, run_metric,
                                    manifest_cells, matrix_cells, nonspeech_cells, status_text)
from moonlora.runfolder import (BASELINE_DIR, TRANSCRIPTS_FILE, TUNED_DIR, FoundRun, RunRecord, TrainingSummary,
                                UnreadableRun, read_transcripts)

TOP_CLIPS = 10
COLORS = {"baseline": "#8c8c8c", "tuned": "#1f6feb", "val": "#1f6feb", "canary": "#d9822b", "main": "#2da44e",
          "loss": "#6e40c9"}
SVG_RC = {"svg.fonttype": "none", "svg.hashsalt": "moonlora-report", "font.size": 9,
          "axes.spines.top": False, "axes.spines.right": False}
STATUS_CLASS = {"success": "ok", "stopped_early": "warn", "failed": "bad", "interrupted": "bad", "died": "bad",
                "running": "unknown"}

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f6f8fa;color:#1f2328;font-size:14px}
main{max-width:1240px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:24px;margin:4px 0 2px}h2{font-size:19px;margin:0 0 6px}h3{font-size:15px;margin:18px 0 6px}
p.lead{color:#59636e;margin:0 0 16px}
section{background:#fff;border:1px solid #d1d9e0;border-radius:8px;padding:16px 18px;margin:0 0 18px}
table{border-collapse:collapse;width:100%;font-size:12.5px}
th,td{border:1px solid #d1d9e0;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f0f3f6;font-weight:600}
tbody tr:nth-child(even){background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.wrap,td code{overflow-wrap:anywhere}
td.clip{white-space:nowrap}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:11.5px}
pre.cmd{background:#f6f8fa;border:1px solid #d1d9e0;border-radius:6px;padding:6px 8px;white-space:pre-wrap;word-break:break-all;margin:6px 0}
.badge{display:inline-block;border-radius:10px;padding:1px 8px;font-size:12px;font-weight:600;margin-left:8px;vertical-align:middle}
.ok{background:#dafbe1;color:#116329}.warn{background:#fff1c2;color:#7d4e00}.bad{background:#ffebe9;color:#a40e26}.unknown{background:#eaeef2;color:#59636e}
.facts{color:#59636e;margin:2px 0 8px}
.alert{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:6px 10px;margin:8px 0}
.plots{display:grid;grid-template-columns:repeat(3,1fr);gap:10px;margin:10px 0}
figure{margin:0;border:1px solid #e4e8ec;border-radius:6px;padding:6px;background:#fff}
figcaption{font-size:12px;color:#59636e;text-align:center}
figure svg{width:100%;height:auto;display:block}
.noplot{display:flex;align-items:center;justify-content:center;min-height:160px;color:#8c959f;font-style:italic}
mark.err{background:#ffd8d3;color:inherit;border-radius:2px}
del{color:#a40e26;background:#ffebe9;text-decoration:line-through}
.better{color:#116329;font-weight:600}.worse{color:#a40e26;font-weight:600}
td.text{width:24%}
"""


class Html(str):
    """Markup that html_table inserts as is (everything else is escaped)."""


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def html_table(columns, rows: list[list], classes: dict[str, str] | None = None, metric: str = "WER") -> str:
    """A table; cells that are Html go in raw, others escaped; `classes` gives a column's td class;
    `metric` replaces "WER" in the column headers (a CER run's tables say CER)."""
    classes = classes or {}
    head = "".join(f"<th>{esc(c)}</th>" for c in headers(tuple(columns), metric))
    body = []
    for row in rows:
        cells = "".join((f'<td class="{classes[c]}">' if c in classes else "<td>")
                        + (cell if isinstance(cell, Html) else esc(cell)) + "</td>" for c, cell in zip(columns, row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


# --- plots -------------------------------------------------------------------------------------------------------


def svg_of(figure: Figure) -> Html:
    """The figure as an inline <svg> element (no XML prolog, no date: deterministic)."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    return Html(text[text.index("<svg"):])


def new_figure() -> tuple[Figure, object]:
    figure = Figure(figsize=(4.4, 3.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.grid(True, color="#e4e8ec", linewidth=0.6)
    axes.set_axisbelow(True)
    return figure, axes


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def loss_plot(training: TrainingSummary) -> Html | None:
    """Training loss per step (raw, faint) with a moving average; best step marked."""
    losses = [row for row in training.losses if isinstance(row.get("loss"), (int, float)) and math.isfinite(row["loss"])]
    if not losses:
        return None
    figure, axes = new_figure()
    steps, values = [r["step"] for r in losses], [r["loss"] for r in losses]
    window = max(1, len(values) // 20)
    axes.plot(steps, values, color=COLORS["loss"], alpha=0.3 if window > 1 else 1.0,
              linewidth=0.8 if window > 1 else 1.6, label="loss")
    if window > 1:
        axes.plot(steps, moving_average(values, window), color=COLORS["loss"], linewidth=1.6,
                  label=f"moving average ({window})")
    axes.axvline(training.best_step, color="#59636e", linestyle=":", linewidth=1, label="best step")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.legend(frameon=False, fontsize=8)
    return svg_of(figure)


def interval_plot(record: RunRecord) -> Html | None:
    """Interval val WER (and canary, and main "not used for choices") vs step, baselines dashed; CER for a CER run."""
    intervals = record.training.intervals if record.training else []
    if not intervals:
        return None
    figure, axes = new_figure()
    metric = run_metric(record)
    series = (("val_wer", f"val {metric}", "val"), ("canary_wer", f"canary {metric}", "canary"),
              ("main_wer_not_used_for_choices", f"main {metric} (not used for choices)", "main"))
    for key, label, color in series:
        points = [(r["step"], r[key]) for r in intervals if isinstance(r.get(key), (int, float))]
        if points:
            axes.plot(*zip(*points), marker="o", markersize=3.5, linewidth=1.5, color=COLORS[color], label=label,
                      linestyle="--" if color == "main" else "-")
    for name, label in (("val", f"baseline val {metric}"), ("canary", f"baseline canary {metric}")):
        baseline = record.baseline[name].primary if name in record.baseline else None
        if isinstance(baseline, (int, float)) and (name == "val" or any("canary_wer" in r for r in intervals)):
            axes.axhline(baseline, color=COLORS[name], linestyle=(0, (5, 3)), linewidth=1, alpha=0.7, label=label)
    axes.axvline(record.training.best_step, color="#59636e", linestyle=":", linewidth=1, label="best step")
    last = record.candidates.get("last")
    if last is not None and last.step != record.training.best_step:
        axes.axvline(last.step, color="#59636e", linestyle="-.", linewidth=1, label="last step")
    axes.set_xlabel("step")
    axes.set_ylabel(metric)
    show_zero_lines(axes)
    axes.legend(fontsize=7.5, framealpha=0.9, edgecolor="#d1d9e0")
    return svg_of(figure)


def show_zero_lines(axes) -> None:
    """Start the y axis a little below 0, so a WER line at 0 is drawn above the x axis, not on it."""
    top = axes.get_ylim()[1]
    axes.set_ylim(bottom=-0.04 * max(top, 0.05))


def duration_buckets(run: FoundRun, side: str, name: str = "main") -> list[dict]:
    """wer_by_duration from the run record."""
    summary = getattr(run.record, side).get(name)
    return [b for b in (summary.wer_by_duration if summary else []) if isinstance(b, dict) and "bucket" in b]


def duration_plot(run: FoundRun, name: str = "main") -> Html | None:
    """Baseline vs tuned WER per clip-duration bucket, as grouped bars."""
    before, after = duration_buckets(run, "baseline", name), duration_buckets(run, "tuned", name)
    labels = list(dict.fromkeys([b["bucket"] for b in before] + [b["bucket"] for b in after]))
    if not labels:
        return None
    figure, axes = new_figure()
    width = 0.38
    metric = run.record.config.scoring.primary_metric
    for offset, (side, buckets) in zip((-width / 2, width / 2), (("baseline", before), ("tuned", after))):
        by_label = {b["bucket"]: b for b in buckets}
        xs = [i + offset for i, label in enumerate(labels) if label in by_label]
        heights = [by_label[label].get(metric) or 0.0 for label in labels if label in by_label]
        bars = axes.bar(xs, heights, width, color=COLORS[side], label=side)
        axes.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    clips = {b["bucket"]: b.get("clips") for b in before + after}
    axes.set_xticks(range(len(labels)), [f"{label}\n(n={clips.get(label, '?')})" for label in labels])
    axes.set_ylabel(f"{metric.upper()} ({name})")
    axes.margins(y=0.12)
    axes.grid(False, axis="x")
    axes.legend(frameon=False, fontsize=8)
    return svg_of(figure)


def figure_block(svg: Html | None, caption: str, missing: str) -> str:
    body = svg if svg is not None else f'<div class="noplot">{esc(missing)}</div>'
    return f"<figure>{body}<figcaption>{esc(caption)}</figcaption></figure>"


def plots_block(run: FoundRun) -> str:
    training = run.record.training
    with matplotlib.rc_context(SVG_RC):
        blocks = [figure_block(loss_plot(training) if training else None, "Training loss", "no training log"),
                  figure_block(interval_plot(run.record), "Interval WER (the stop/choice signal)",
                               "no interval evals"),
                  figure_block(duration_plot(run), "WER by clip duration, main manifest", "no main-manifest results")]
    return f'<div class="plots">{"".join(blocks)}</div>'


# --- clips that changed --------------------------------------------------------------------------------------------


def transcripts_by_id(path: Path) -> dict[str, dict]:
    """utt_id -> row of a transcripts.jsonl (runfolder.read_transcripts: a bad line is an error)."""
    return {str(row["utt_id"]): row for row in read_transcripts(path) if "utt_id" in row}


# A transcripts row's counts of each metric: (error count fields, reference unit field).
ROW_COUNTS = {"wer": (("substitutions", "deletions", "insertions"), "ref_words"),
              "cer": (("char_errors",), "ref_chars")}


def clip_errors(row: dict, metric: str = "wer") -> int:
    return sum(int(row.get(key) or 0) for key in ROW_COUNTS[metric][0])


def clip_rate(row: dict, metric: str = "wer") -> float:
    """The clip's rate of the run's primary metric (its `wer` or `cer`, else from its counts)."""
    rate = row.get(metric)
    if isinstance(rate, (int, float)) and math.isfinite(rate):
        return float(rate)
    return clip_errors(row, metric) / max(int(row.get(ROW_COUNTS[metric][1]) or 0), 1)


def changed_clips(run_path: Path, name: str = "main", top: int = TOP_CLIPS,
                  metric: str = "wer") -> tuple[list[tuple[dict, dict]], int, int]:
    """Top clips by |tuned - baseline WER| (changed ones only), plus counts (improved, worsened)."""
    before = transcripts_by_id(run_path / BASELINE_DIR / name / TRANSCRIPTS_FILE)
    after = transcripts_by_id(run_path / TUNED_DIR / name / TRANSCRIPTS_FILE)

    def rate(row: dict) -> float:
        return clip_rate(row, metric)

    pairs = [(before[u], after[u]) for u in before if u in after and rate(after[u]) != rate(before[u])]
    improved = sum(rate(a) < rate(b) for b, a in pairs)
    pairs.sort(key=lambda p: (-abs(rate(p[1]) - rate(p[0])), str(p[0]["utt_id"])))
    return pairs[:top], improved, len(pairs) - improved


def words(row: dict, key: str, characters: bool = False) -> list[str]:
    """The normalized text's words, or its characters (a CER run over text without spaces: zh/ja/ko)."""
    text = str(row.get(f"{key}_norm") if row.get(f"{key}_norm") is not None else row.get(key, ""))
    return list(text) if characters else text.split()


def highlight(ref: list[str], hyp: list[str]) -> Html:
    """The hypothesis with wrong/inserted words marked and dropped reference words struck through."""
    parts = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        if tag in ("replace", "delete"):
            parts.append(f"<del>{esc(' '.join(ref[i1:i2]))}</del>" if tag == "delete" else "")
        if tag in ("replace", "insert"):
            parts.append(f'<mark class="err">{esc(" ".join(hyp[j1:j2]))}</mark>')
        if tag == "equal":
            parts.append(esc(" ".join(hyp[j1:j2])))
    return Html(" ".join(p for p in parts if p) or "<em>(empty)</em>")


def text_cell(row: dict, marked: Html, key: str) -> Html:
    return Html(f'<span title="{esc(row.get(key, ""))}">{marked}</span>')


def change_cell(before: float, after: float) -> Html:
    cls = "better" if after < before else "worse"
    return Html(f'{before:.3f} &rarr; {after:.3f} <span class="{cls}">({after - before:+.3f})</span>')


def changed_clips_block(run: FoundRun) -> str:
    """The changed-clips table for the main manifest (or why it is missing)."""
    metric = run.record.config.scoring.primary_metric
    label = metric.upper()
    try:
        pairs, improved, worsened = changed_clips(run.path, metric=metric)
    except FileNotFoundError:
        return '<p class="facts">No main-manifest transcripts for both baseline and tuned.</p>'
    intro = (f'<p class="facts">{improved} clip(s) improved, {worsened} got worse; top {len(pairs)} by |{label} change|. '
             "Normalized text as scored: <mark class=\"err\">wrong or inserted</mark> words, "
             "<del>missed</del> reference words; hover for the raw text.</p>")
    if not pairs:
        return intro + f'<p class="facts">No clip changed {label}.</p>'
    columns = ("#", "Clip", "Reference", "Baseline hyp", "Tuned hyp", "Errors", "WER before → after")
    rows = []
    for index, (before, after) in enumerate(pairs, 1):
        characters = metric == "cer" and " " not in str(before.get("ref_norm") or "")
        ref = words(before, "ref", characters)
        joiner = "" if characters else " "
        rows.append([str(index), Html(f"<code>{esc(before['utt_id'])}</code><br>{esc(before.get('duration', '?'))} s"),
                     text_cell(before, Html(esc(joiner.join(ref))), "ref"),
                     text_cell(before, highlight(ref, words(before, "hyp", characters)), "hyp"),
                     text_cell(after, highlight(ref, words(after, "hyp", characters)), "hyp"),
                     f"{clip_errors(before, metric)} → {clip_errors(after, metric)}",
                     change_cell(clip_rate(before, metric), clip_rate(after, metric))])
    classes = {"#": "num", "Clip": "clip", "Reference": "text", "Baseline hyp": "text", "Tuned hyp": "text",
               "Errors": "num", "WER before → after": "num"}
    return intro + html_table(columns, rows, classes, label)


# --- page ----------------------------------------------------------------------------------------------------------


def breakable(text: str) -> Html:
    """Escaped text that may wrap after "/" and "," (paths, module lists)."""
    return Html(esc(text).replace("/", "/<wbr>").replace(",", ",<wbr>"))


def matrix_block(runs: list[FoundRun]) -> str:
    rows = []
    label = metric_label([run.record for run in runs])
    for run in runs:
        cells = matrix_cells(run, "/" in label)
        cells.update({c: breakable(cells[c]) for c in ("Dataset", "Manifest", "LoRA Targets")})
        cells["Command"] = Html(f"<code>{esc(cells['Command'])}</code>")
        cells["Run ID"] = Html(f'<a href="#{esc(anchor(run))}">{esc(run.run_id)}</a>')
        rows.append([cells[c] for c in MATRIX_COLUMNS])
    classes = {c: "wrap" for c in ("Command", "Dataset", "Manifest", "LoRA Targets", "Notes")}
    classes["Run ID"] = "clip"
    numeric = ("Date", "Steps", "LR", "Baseline WER", "Tuned WER", "95% CI (tuned - baseline)")
    classes.update({c: "num" for c in numeric})
    return html_table(MATRIX_COLUMNS, rows, classes, label)


def anchor(run: FoundRun) -> str:
    return "run-" + "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in run.run_id)


def facts_line(run: FoundRun) -> str:
    record, training = run.record, run.record.training
    facts = [f"started {record.started_at}"]
    if training is not None:
        facts.append(f"{training.steps} steps, best step {training.best_step} "
                     f"(val {run_metric(record)} {format_wer(training.best_val_wer)})")
        facts.append(f"LoRA delta norm {training.lora_delta_norm:.3f}")
        if training.samples_per_second is not None:
            facts.append(f"{training.samples_per_second:.2f} samples/s over {training.train_seconds:.0f} s of steps")
        if training.skipped_updates:
            facts.append(f"{training.skipped_updates} skipped updates")
    facts.append(f"wall {record.wall_seconds / 60:.1f} min" + (f" over {len(record.legs)} legs" if len(record.legs) > 1 else ""))
    return esc(" · ".join(facts))


def history_block(run: FoundRun) -> str:
    """Every leg of the run (a resumed run has several): command, start, where it resumed, how it ended."""
    record, lines = run.record, []
    for index, leg in enumerate(run.record.legs, 1):
        resumed = "" if leg.resumed_from_step is None else f" · resumed from step {leg.resumed_from_step}"
        status = leg.status or (run.state if index == len(record.legs) else "ended without a status")
        ended = f" · {status}" + (f", {leg.wall_seconds / 60:.1f} min" if leg.wall_seconds else "")
        lines.append(f"<li><code>{esc(leg.command)}</code><br>{esc(leg.started_at)}{esc(resumed)}{esc(ended)}</li>")
    return f"<h3>History ({len(record.legs)} leg(s))</h3><ol>{''.join(lines)}</ol>" if lines else ""


def run_section(run: FoundRun) -> str:
    """One run: header, history, reason and notes, per-manifest table, 3 plots, changed clips."""
    record, status = run.record, run.state
    parts = [f'<section class="run" id="{esc(anchor(run))}">',
             f'<h2>{esc(run.run_id)}<span class="badge {STATUS_CLASS.get(status, "unknown")}">'
             f'{esc(status)}</span></h2>',
             f'<p class="facts">{facts_line(run)}</p>', history_block(run)]
    if record.reason or not record.finished:
        parts.append(f'<div class="alert">{esc(status_text(run))}</div>')
    parts += [f'<div class="alert">{esc(note)}</div>' for note in record.notes]
    rows = manifest_cells(record)
    if rows:
        table = html_table(MANIFEST_COLUMNS, [[r[c] for c in MANIFEST_COLUMNS] for r in rows],
                           {c: "num" for c in MANIFEST_COLUMNS[1:6]}, run_metric(record))
        parts.append("<h3>Manifests</h3>" + table)
    candidates = candidate_cells(record)
    if candidates:
        table = html_table(CANDIDATE_COLUMNS, [[r[c] for c in CANDIDATE_COLUMNS] for r in candidates],
                           {c: "num" for c in CANDIDATE_COLUMNS[1:5]}, run_metric(record))
        parts.append("<h3>Best and last adapter (main manifest)</h3>" + table)
    nonspeech = nonspeech_cells(record)
    if nonspeech:
        table = html_table(NONSPEECH_COLUMNS, [[r[c] for c in NONSPEECH_COLUMNS] for r in nonspeech],
                           {c: "num" for c in NONSPEECH_COLUMNS[1:]})
        parts.append("<h3>Non-speech canary (words emitted where nobody speaks)</h3>" + table)
    parts.append(plots_block(run))
    parts.append("<h3>Clips that changed most (main manifest)</h3>" + changed_clips_block(run))
    return "\n".join(parts) + "\n</section>"


def skipped_block(skipped: list[UnreadableRun]) -> str:
    items = "".join(f"<li><code>{esc(s.path)}</code>: {esc(s.reason)}</li>" for s in skipped)
    return f'<div class="alert"><strong>{len(skipped)} folder(s) skipped</strong><ul>{items}</ul></div>'


def render_html(runs: list[FoundRun], skipped: list[UnreadableRun], runs_dir: Path) -> str:
    """The whole page; a run's missing pieces are said on the page."""
    label = metric_label([run.record for run in runs])
    body = ["<h1>moonlora training report</h1>",
            f'<p class="lead">{len(runs)} run(s) from <code>{esc(runs_dir)}</code>. {label} is corpus {label} on the '
            "main held-out manifest; the CI is the paired-bootstrap 95% interval of tuned - baseline (negative = tuned "
            "better)." + (esc(CER_NOTE) if "CER" in label else "") + "</p>"]
    if skipped:
        body.append(skipped_block(skipped))
    body.append(f'<section class="matrix"><h2>Test Matrix</h2>{matrix_block(runs)}</section>')
    body += [run_section(run) for run in runs]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>moonlora training report</title><style>{CSS}</style></head>\n"
            f"<body><main>\n{chr(10).join(body)}\n</main></body></html>\n")
    return page
