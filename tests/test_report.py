"""The run-folder report: plan Test Matrix in Markdown, HTML page with plots and changed clips (no model).

Run folders are written with moonlora.runfolder's writer, as `moonlora experiment` writes them.
"""

import io
import json
import socket

import pytest
from rich.console import Console

from moonlora.comparison import Comparison
from moonlora.configs import ExperimentConfig, LoraSettings, TrainConfig
from moonlora.outputs import OutputExists
from moonlora.verdict.report import build_report, print_experiment
from moonlora.verdict.tables import MATRIX_COLUMNS, ci_cell, format_lr
from moonlora.runfolder import (CHECKPOINT_STATE, METRICS_FILE, EvalSummary, Leg, RunRecord,
                                TrainingSummary, checkpoint_staging, discover_runs, process_alive,
                                publish_checkpoint, read_record, write_config_dict, write_record)

PLAN_HEADER = ("| Run ID | Date | Command | Dataset | Steps | LR | LoRA Targets | Manifest | Baseline WER | Tuned WER "
               "| Notes | 95% CI (tuned - baseline) |")
SIGNATURE_LINE = "<!-- written by moonlora report -->"


def comparison(before, after, low, high):
    return Comparison(baseline_wer=before, tuned_wer=after, delta=after - before, ci_low=low, ci_high=high,
                      p_tuned_better=0.99, resamples=1000, seed=0, clips=3, confidence=0.95)


def summary(wer, clips=3, flags=None):
    return EvalSummary(wer=wer, cer=wer / 2, raw_wer=wer, clips=clips, hours=0.003,
                       flags=flags or {"empty_hypothesis": 0, "token_cap_hit": 0, "repeat_loop": 0},
                       wer_by_duration=[{"bucket": "1-5s", "clips": 2, "wer": wer * 1.2},
                                        {"bucket": "5-10s", "clips": 1, "wer": wer * 0.8}],
                       contract={"manifest_sha256": "m" * 64})


def training(steps, lr):
    return TrainingSummary(
        steps=steps, best_step=steps // 2, best_val_wer=0.3, stop_reason=None, skipped_updates=0, train_clips=40,
        processes=1, samples=4 * steps, epochs=steps / 10, train_seconds=12.0, interval_eval_seconds=2.0,
        checkpoint_seconds=0.5, samples_per_second=4 * steps / 12.0, lora_delta_norm=1.5,
        losses=[{"step": s, "loss": 2.0 / s, "lr": lr, "skipped": False} for s in range(1, steps + 1)],
        intervals=[{"step": s, "val_wer": 0.5 - s / 1000, "lora_delta_norm": s / 10, "canary_wer": 0.1,
                    "main_wer_not_used_for_choices": 0.4} for s in range(0, steps + 1, 10)])


def clip(utt, ref, hyp, subs=0, dels=0, ins=0):
    words = len(ref.split())
    return {"utt_id": utt, "audio_filepath": f"/a/{utt}.wav", "duration": 3.5, "ref": ref, "hyp": hyp,
            "ref_norm": ref, "hyp_norm": hyp.lower(), "ref_words": words, "substitutions": subs, "deletions": dels,
            "insertions": ins, "wer": (subs + dels + ins) / words, "flags": []}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def run_config(folder, lr, max_steps, dataset="data/train.jsonl"):
    return ExperimentConfig(output_dir=str(folder), dataset_path=dataset, manifest_path="data/test.jsonl",
                            train=TrainConfig(max_steps=max_steps, learning_rate=lr, seed=0),
                            lora=LoraSettings(target_modules=("q_proj", "v_proj")))


def save(folder, record):
    """Write a run folder the way `moonlora experiment` does: config file, then the record."""
    folder.mkdir(parents=True, exist_ok=True)
    write_config_dict(folder, record.config.to_dict())
    write_record(folder, record)
    return folder


def fake_run(root, run_id, started_at, lr, steps, max_steps, main, status="success", reason=None, extras=(),
             notes=(), transcripts=True, **record_fields):
    """A finished run folder: the record plus main-manifest transcripts."""
    folder = root / run_id
    names = ["val", "main", *extras]
    before = {"val": 0.5, "main": main[0], **{n: 0.2 for n in extras}}
    after = {"val": 0.3, "main": main[1], **{n: 0.26 for n in extras}}
    command = f"moonlora experiment --output-dir {folder} --learning-rate {lr}"
    record = RunRecord(
        run_id=run_id, config=run_config(folder, lr, max_steps), status=status, reason=reason, phase="done",
        command=command, started_at=started_at,
        baseline={n: summary(before[n], flags={"empty_hypothesis": 1} if n == "val" else None) for n in names},
        tuned={n: summary(after[n]) for n in names},
        comparisons={n: comparison(before[n], after[n], after[n] - before[n] - 0.05, after[n] - before[n] + 0.05)
                     for n in names},
        training=training(steps, lr), notes=list(notes), wall_seconds=600.0,
        **{"legs": [Leg(command=command, pid=1234, host="trainer", started_at=started_at, status=status,
                        ended_at=started_at, wall_seconds=600.0)], **record_fields})
    save(folder, record)
    if transcripts:
        write_jsonl(folder / "baseline" / "main" / "transcripts.jsonl", [
            clip("u1", "climb flight level two", "climb flight level <script>alert(1)</script>", subs=1),
            clip("u2", "squawk one two", "squawk one two"),
            clip("u3", "contact tower", "contact power hour", subs=1, ins=1)])
        write_jsonl(folder / "tuned" / "main" / "transcripts.jsonl", [
            clip("u1", "climb flight level two", "climb flight level two"),
            clip("u2", "squawk one two", "squawk one two"),
            clip("u3", "contact tower", "contact power", subs=1)])
    return folder


def old_schema_run(root, name="run-old-schema"):
    """A folder from an older moonlora: plain JSON metrics without schema_version."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / METRICS_FILE).write_text(json.dumps({
        "run_id": name, "status": "success", "config": {"dataset_path": "data/old.jsonl"},
        "provenance": {"created_at": "2025-12-01T00:00:00+00:00"}}))
    return folder


def dead_pid():
    """A pid (near the top of Linux's pid range) that no process has."""
    pid = 4194000
    while process_alive(pid):
        pid += 1
    return pid


def died_run(root, run_id="run-died", step=4):
    """A `running` record whose process is gone (dead pid, no lock held), with a checkpoint at `step`."""
    folder = root / run_id
    pid = dead_pid()
    record = RunRecord(run_id=run_id, config=run_config(folder, 1e-3, 50), status="running", phase="training",
                       pid=pid, host=socket.gethostname(), started_at="2026-02-04T08:00:00+00:00",
                       command=f"moonlora experiment --output-dir {folder}",
                       baseline={"val": summary(0.5), "main": summary(0.4)})
    save(folder, record)
    staging = checkpoint_staging(folder, step)
    (staging / CHECKPOINT_STATE).write_bytes(b"trainer state")
    publish_checkpoint(folder, staging, step)
    return folder, f"died at training (pid {pid} on {socket.gethostname()}), resumable from step {step} with --resume"


def make_runs(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "run-late", "2026-02-03T10:00:00+00:00", 1e-4, 40, 40, (0.4, 0.2),
             notes=["val set has only 3 clips"])
    fake_run(root, "run-early", "2026-02-01T09:00:00+00:00", 3e-4, 30, 200, (0.5, 0.45), status="stopped_early",
             reason="canary WER 0.2000 > baseline + 0.02 (0.1200)", extras=("extra-clean", "canary"))
    broken = root / "run-broken"
    broken.mkdir()
    (broken / METRICS_FILE).write_text("{not json")
    old_schema_run(root)
    failed = root / "sweep" / "run-failed"
    save(failed, RunRecord(run_id="run-failed", config=run_config(failed, 1e-3, 10, dataset="data/x.jsonl"),
                           status="failed", reason="ValueError: data/x.jsonl: no clips", phase="setup",
                           command="moonlora experiment --output-dir x", started_at="2026-02-02T00:00:00+00:00"))
    (root / "not-a-run").mkdir()
    return root


def row_cells(markdown, run_id):
    lines = [line for line in markdown.splitlines() if line.startswith(f"| {run_id} |")]
    assert len(lines) == 1, lines
    cells = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    assert len(cells) == len(MATRIX_COLUMNS)
    return dict(zip(MATRIX_COLUMNS, cells))


def run_sections(page):
    return {chunk.split('"', 1)[0]: chunk for chunk in page.split('<section class="run" id="')[1:]}


def test_discovery_sorts_by_start_and_skips_unreadable(tmp_path):
    runs, skipped = discover_runs(make_runs(tmp_path))
    assert [run.run_id for run in runs] == ["run-early", "sweep/run-failed", "run-late"]
    assert [type(run.record) for run in runs] == [RunRecord] * 3
    assert [s.path.name for s in skipped] == ["run-broken", "run-old-schema"]
    assert "unreadable run record" in skipped[0].reason
    assert "schema version 1 was written by an older moonlora" in skipped[1].reason


def test_same_start_time_sorts_by_run_id(tmp_path):
    for run_id in ("b", "c", "a"):
        fake_run(tmp_path, run_id, "2026-02-01T09:00:00+00:00", 1e-3, 10, 10, (0.3, 0.2), transcripts=False)
    fake_run(tmp_path, "z-first", "2026-01-31T23:59:59+00:00", 1e-3, 10, 10, (0.3, 0.2), transcripts=False)
    runs, _ = discover_runs(tmp_path)
    assert [run.run_id for run in runs] == ["z-first", "a", "b", "c"]


def test_markdown_matrix(tmp_path):
    root = make_runs(tmp_path)
    out = tmp_path / "docs" / "training_report.md"
    result = build_report(root, out_markdown=out, out_html=tmp_path / "docs" / "page.html")
    written = out.read_text()
    assert written == SIGNATURE_LINE + "\n" + result.markdown and result.markdown_path == out
    markdown = result.markdown
    lines = markdown.splitlines()
    assert PLAN_HEADER in lines
    assert lines[lines.index(PLAN_HEADER) + 1] == "| " + " | ".join(["---"] * 12) + " |"

    late = row_cells(markdown, "run-late")
    assert late["Date"] == "2026-02-03"
    assert late["Command"] == f"`moonlora experiment --output-dir {root / 'run-late'} --learning-rate 0.0001`"
    assert (late["Dataset"], late["Manifest"]) == ("data/train.jsonl", "data/test.jsonl")
    assert (late["Steps"], late["LR"], late["LoRA Targets"]) == ("40", "1e-4", "q_proj,v_proj")
    assert (late["Baseline WER"], late["Tuned WER"]) == ("0.4000", "0.2000")
    assert late["95% CI (tuned - baseline)"] == "-0.2000 [-0.2500, -0.1500]"
    assert late["Notes"] == "success; best step 20 (val WER 0.3000); val set has only 3 clips"

    early = row_cells(markdown, "run-early")
    assert (early["Date"], early["Steps"], early["LR"]) == ("2026-02-01", "30/200", "3e-4")
    assert (early["Baseline WER"], early["Tuned WER"]) == ("0.5000", "0.4500")
    assert early["Notes"].startswith("stopped_early: canary WER 0.2000 > baseline + 0.02 (0.1200); best step 15")
    assert "canary +0.0600 [+0.0100, +0.1100]" in early["Notes"]
    assert "extra-clean +0.0600 [+0.0100, +0.1100]" in early["Notes"]
    # plan order: extras before the canary
    assert early["Notes"].index("extra-clean") < early["Notes"].index("canary +")

    failed = row_cells(markdown, "sweep/run-failed")
    assert failed["Notes"] == "failed at setup: ValueError: data/x.jsonl: no clips"
    assert (failed["Baseline WER"], failed["Tuned WER"], failed["Steps"]) == ("-", "-", "-/10")
    assert (failed["Date"], failed["Command"]) == ("2026-02-02", "`moonlora experiment --output-dir x`")

    matrix_ids = [line.split(" | ")[0].strip("| ") for line in lines if line.startswith("| ")]
    assert "run-broken" not in matrix_ids and "run-old-schema" not in matrix_ids
    skipped = lines[lines.index("## Skipped folders"):lines.index("## Per-manifest results")]
    assert [line.split("`")[1] for line in skipped if line.startswith("- ")] == [
        str(root / "run-broken"), str(root / "run-old-schema")]
    assert "2 folder(s) skipped." in markdown
    assert markdown.index("| run-early |") < markdown.index("| sweep/run-failed |") < markdown.index("| run-late |")
    # the per-manifest table, with flag changes; the run's notes under it
    assert "| val | 3 | 0.5000 | 0.3000 | -0.2000 [-0.2500, -0.1500] | 0.990 | empty_hypothesis 1 -> 0 |" in lines
    assert "- val set has only 3 clips" in lines
    assert "No scored manifests (failed at setup: ValueError: data/x.jsonl: no clips)." in lines


def test_html_page(tmp_path):
    root = make_runs(tmp_path)
    result = build_report(root)
    assert result.html_path == root / "report.html" and result.markdown_path == root / "training_report.md"
    assert result.markdown_path.read_text().startswith(SIGNATURE_LINE + "\n# Training report\n")
    assert [s.path.name for s in result.skipped] == ["run-broken", "run-old-schema"]
    page = result.html_path.read_text()
    assert page.startswith(SIGNATURE_LINE + "\n<!DOCTYPE html>") and "<h2>Test Matrix</h2><table>" in page
    sections = run_sections(page)
    assert list(sections) == ["run-run-early", "run-sweep-run-failed", "run-run-late"]
    for run_id in ("run-run-late", "run-run-early"):
        section = sections[run_id]
        assert section.count("<svg") + section.count("<img") == 3
        assert "Clips that changed most" in section and section.count("<table>") == 2  # manifests, changed clips
        assert section.index("<code>u3</code>") < section.index("<code>u1</code>")  # biggest |change| first
        assert "<code>u2</code>" not in section  # unchanged clips left out
        assert "2 clip(s) improved, 0 got worse; top 2 by |WER change|." in section
    assert "main WER (not used for choices)" in page and "baseline val WER" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert '<strong>2 folder(s) skipped</strong>' in page
    assert f"<code>{root / 'run-broken'}</code>" in page and f"<code>{root / 'run-old-schema'}</code>" in page
    assert "schema version 1 was written by an older moonlora" in page
    failed = sections["run-sweep-run-failed"]
    assert '<span class="badge bad">failed</span>' in failed
    assert '<div class="alert">failed at setup: ValueError: data/x.jsonl: no clips</div>' in failed
    assert "<svg" not in failed  # nothing to plot: said in words
    assert '<span class="badge ok">success</span>' in sections["run-run-late"]
    assert '<div class="alert">val set has only 3 clips</div>' in sections["run-run-late"]
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["report.html", "training_report.md"]


def test_died_run_is_shown_with_its_badge_and_where_to_resume(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "run-done", "2026-02-03T10:00:00+00:00", 1e-3, 10, 10, (0.3, 0.2))
    _, died_line = died_run(root)
    result = build_report(root)
    assert [run.run_id for run in result.runs] == ["run-done", "run-died"] and result.skipped == []
    assert [run.state for run in result.runs] == ["success", "died"]
    row = row_cells(result.markdown, "run-died")
    assert row["Notes"] == died_line
    assert (row["Date"], row["Steps"], row["Baseline WER"], row["Tuned WER"]) == ("2026-02-04", "-/50", "0.4000", "-")
    section = run_sections(result.html_path.read_text())["run-run-died"]
    assert '<span class="badge bad">died</span>' in section
    assert f'<div class="alert">{died_line}</div>' in section


def test_resumed_run_shows_its_history(tmp_path):
    started = "2026-02-03T10:00:00+00:00"
    legs = [Leg(command="moonlora experiment --output-dir runs/r", pid=101, host="trainer", started_at=started,
                ended_at="2026-02-03T10:05:00+00:00", status="interrupted", wall_seconds=300.0),
            Leg(command="moonlora experiment --output-dir runs/r --resume", pid=202, host="trainer",
                started_at="2026-02-03T11:00:00+00:00", resumed_from_step=2, ended_at="2026-02-03T11:10:00+00:00",
                status="success", wall_seconds=600.0)]
    fake_run(tmp_path, "r", started, 1e-3, 10, 10, (0.3, 0.2), legs=legs)
    section = run_sections(build_report(tmp_path).html_path.read_text())["run-r"]
    assert "<h3>History (2 leg(s))</h3>" in section
    items = section.split("<ol>", 1)[1].split("</ol>", 1)[0].split("<li>")[1:]
    assert len(items) == 2
    assert items[0] == ("<code>moonlora experiment --output-dir runs/r</code><br>"
                        "2026-02-03T10:00:00+00:00 · interrupted, 5.0 min</li>")
    assert items[1] == ("<code>moonlora experiment --output-dir runs/r --resume</code><br>"
                        "2026-02-03T11:00:00+00:00 · resumed from step 2 · success, 10.0 min</li>")
    assert "wall 10.0 min over 2 legs" in section


def test_build_report_refuses_files_it_did_not_write(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "solo", "2026-02-03T10:00:00+00:00", 1e-3, 10, 10, (0.3, 0.2), transcripts=False)
    mine = root / "training_report.md"
    mine.write_text("# my own notes\n")
    for overwrite in (False, True):
        with pytest.raises(OutputExists, match="training_report.md"):
            build_report(root, overwrite=overwrite)
    assert mine.read_text() == "# my own notes\n"
    assert not (root / "report.html").exists()  # refused before anything was written


def test_build_report_replaces_its_own_files_only_with_overwrite(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "solo", "2026-02-03T10:00:00+00:00", 1e-3, 10, 10, (0.3, 0.2), transcripts=False)
    first = build_report(root)
    with pytest.raises(OutputExists, match="--overwrite"):
        build_report(root)
    fake_run(root, "second", "2026-02-04T10:00:00+00:00", 1e-3, 10, 10, (0.3, 0.2), transcripts=False)
    again = build_report(root, overwrite=True)
    assert (again.markdown_path, again.html_path) == (first.markdown_path, first.html_path)
    assert [run.run_id for run in again.runs] == ["solo", "second"]
    assert again.markdown_path.read_text() == SIGNATURE_LINE + "\n" + again.markdown
    assert "| second |" in again.markdown_path.read_text()
    assert 'id="run-second"' in again.html_path.read_text()


def test_run_folder_itself_and_cells(tmp_path):
    folder = fake_run(tmp_path, "solo", "2026-02-03T10:00:00+00:00", 1e-3, 10, 10, (0.3, 0.3))
    runs, skipped = discover_runs(folder)
    assert [run.run_id for run in runs] == ["solo"] and skipped == []
    assert runs[0].path == folder and runs[0].record.config.dataset_path == "data/train.jsonl"
    assert format_lr(0.00025) == "2.5e-4" and format_lr(1e-3) == "1e-3"
    close = Comparison(baseline_wer=0.9, tuned_wer=0.02406, delta=-0.87594, ci_low=-0.96424, ci_high=-0.79314,
                       p_tuned_better=1.0, resamples=1000, seed=0, clips=3, confidence=0.95)
    assert ci_cell(close) == "-0.8759 [-0.9642, -0.7931]"


def test_print_experiment_takes_the_record(tmp_path):
    folder = fake_run(tmp_path, "solo", "2026-02-03T10:00:00+00:00", 1e-3, 10, 10, (0.3, 0.2),
                      notes=["main manifest overlaps train"])
    buffer = io.StringIO()
    print_experiment(read_record(folder), Console(file=buffer, width=160))
    printed = buffer.getvalue()
    assert "moonlora experiment solo: success" in printed
    assert "0.3000" in printed and "0.2000" in printed and "best step 5 (val WER 0.3000)" in printed
    assert "note: main manifest overlaps train" in printed


def test_report_cli_exit_codes(tmp_path):
    # cli.py's printed text is not pinned here: only exit codes and the files build_report writes.
    from moonlora.cli import main

    root = make_runs(tmp_path)
    out = tmp_path / "docs" / "training_report.md"
    assert main(["report", str(root), "--out", str(out), "--html", str(tmp_path / "page.html")]) == 0
    assert PLAN_HEADER in out.read_text()
    assert (tmp_path / "page.html").read_text().count("<svg") >= 3
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert main(["report", str(root), "--out", str(out), "--html", str(tmp_path / "page.html")]) == 2  # exists


def test_zero_wer_lines_are_drawn_above_the_x_axis():
    from moonlora.verdict.html import new_figure, show_zero_lines

    figure, axes = new_figure()
    axes.plot([0, 10], [0.0, 0.0])  # a canary at WER 0 all along
    show_zero_lines(axes)
    assert axes.get_ylim()[0] < 0 < axes.get_ylim()[1]


def test_a_transcripts_line_that_is_not_json_is_a_one_line_error_naming_file_and_line(tmp_path, capsys):
    """report reads transcripts.jsonl as every command does (runfolder.read_transcripts): no line skipped."""
    from moonlora.cli import main

    folder = fake_run(tmp_path / "runs", "solo", "2026-02-03T10:00:00+00:00", 1e-3, 10, 10, (0.3, 0.2))
    transcripts = folder / "tuned" / "main" / "transcripts.jsonl"
    lines = transcripts.read_text().splitlines()
    transcripts.write_text("\n".join([lines[0], '{"utt_id": "u2", "hyp": "squawk', *lines[2:]]) + "\n")
    assert main(["report", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{transcripts}:2: not valid JSON" in err
