"""The run-folder report: plan Test Matrix in Markdown, HTML page with plots and changed clips (no model)."""

import io
import json

from rich.console import Console

from moonlora.report import build_report, discover_runs, print_experiment
from moonlora.report_tables import MATRIX_COLUMNS, ci_cell, format_lr

PLAN_HEADER = ("| Run ID | Date | Command | Dataset | Steps | LR | LoRA Targets | Manifest | Baseline WER | Tuned WER "
               "| Notes | 95% CI (tuned - baseline) |")


def comparison(before, after, low, high):
    return {"baseline_wer": before, "tuned_wer": after, "delta": after - before, "ci_low": low, "ci_high": high,
            "p_tuned_better": 0.99, "excludes_zero": True, "clips": 3}


def summary(wer, clips=3, flags=None):
    return {"wer": wer, "cer": wer / 2, "raw_wer": wer, "clips": clips,
            "flags": flags or {"empty_hypothesis": 0, "token_cap_hit": 0, "repeat_loop": 0},
            "wer_by_duration": [{"bucket": "1-5s", "clips": 2, "wer": wer * 1.2},
                                {"bucket": "5-10s", "clips": 1, "wer": wer * 0.8}]}


def clip(utt, ref, hyp, subs=0, dels=0, ins=0):
    words = len(ref.split())
    return {"utt_id": utt, "audio_filepath": f"/a/{utt}.wav", "duration": 3.5, "ref": ref, "hyp": hyp,
            "ref_norm": ref, "hyp_norm": hyp.lower(), "ref_words": words, "substitutions": subs, "deletions": dels,
            "insertions": ins, "wer": (subs + dels + ins) / words, "flags": []}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def fake_run(root, run_id, created_at, lr, steps, max_steps, main, status="success", reason=None, extras=()):
    """A run folder shaped like run_experiment's: metrics plus main-manifest transcripts."""
    folder = root / run_id
    names = ["val", "main", *extras]
    before = {"val": 0.5, "main": main[0], **{n: 0.2 for n in extras}}
    after = {"val": 0.3, "main": main[1], **{n: 0.26 for n in extras}}
    metrics = {
        "run_id": run_id, "status": status, "reason": reason,
        "command": f"moonlora experiment --output-dir {folder} --learning-rate {lr}",
        "config": {"output_dir": str(folder), "dataset_path": "data/train.jsonl", "manifest_path": "data/test.jsonl",
                   "train": {"max_steps": max_steps, "learning_rate": lr},
                   "lora": {"target_modules": ["q_proj", "v_proj"]}},
        "provenance": {"created_at": created_at},
        "baseline": {n: summary(before[n], flags={"empty_hypothesis": 1} if n == "val" else None) for n in names},
        "tuned": {n: summary(after[n]) for n in names},
        "comparisons": {n: comparison(before[n], after[n], after[n] - before[n] - 0.05, after[n] - before[n] + 0.05)
                        for n in names},
        "training": {"steps": steps, "best_step": steps // 2, "best_val_wer": 0.3, "skipped_updates": 0,
                     "lora_delta_norm": 1.5,
                     "losses": [{"step": s, "loss": 2.0 / s, "lr": lr} for s in range(1, steps + 1)],
                     "intervals": [{"step": s, "val_wer": 0.5 - s / 1000, "lora_delta_norm": s / 10,
                                    "canary_wer": 0.1, "main_wer_not_used_for_choices": 0.4}
                                   for s in range(0, steps + 1, 10)]},
    }
    folder.mkdir(parents=True)
    (folder / "experiment_metrics.json").write_text(json.dumps(metrics))
    write_jsonl(folder / "baseline" / "main" / "transcripts.jsonl", [
        clip("u1", "climb flight level two", "climb flight level <script>alert(1)</script>", subs=1),
        clip("u2", "squawk one two", "squawk one two"),
        clip("u3", "contact tower", "contact power hour", subs=1, ins=1)])
    write_jsonl(folder / "tuned" / "main" / "transcripts.jsonl", [
        clip("u1", "climb flight level two", "climb flight level two"),
        clip("u2", "squawk one two", "squawk one two"),
        clip("u3", "contact tower", "contact power", subs=1)])
    return folder


def make_runs(tmp_path):
    root = tmp_path / "runs"
    fake_run(root, "run-late", "2026-02-03T10:00:00+00:00", 1e-4, 40, 40, (0.4, 0.2))
    fake_run(root, "run-early", "2026-02-01T09:00:00+00:00", 3e-4, 30, 200, (0.5, 0.45), status="stopped_early",
             reason="canary WER 0.2000 > baseline + 0.02 (0.1200)", extras=("extra-clean", "canary"))
    broken = root / "run-broken"
    broken.mkdir()
    (broken / "experiment_metrics.json").write_text("{not json")
    failed = root / "sweep" / "run-failed"
    failed.mkdir(parents=True)
    (failed / "experiment_metrics.json").write_text(json.dumps({
        "run_id": "run-failed", "status": "failed", "reason": "ValueError: data/x.jsonl: no clips",
        "command": "moonlora experiment --output-dir x", "config": {"dataset_path": "data/x.jsonl",
                                                                    "train": {"max_steps": 10, "learning_rate": 1e-3}},
        "provenance": {"created_at": "2026-02-02T00:00:00+00:00"}}))
    (root / "not-a-run").mkdir()
    return root


def row_cells(markdown, run_id):
    lines = [line for line in markdown.splitlines() if line.startswith(f"| {run_id} |")]
    assert len(lines) == 1, lines
    cells = [cell.strip() for cell in lines[0].strip("|").split(" | ")]
    assert len(cells) == len(MATRIX_COLUMNS)
    return dict(zip(MATRIX_COLUMNS, cells))


def test_discovery_sorts_by_date_and_skips_broken(tmp_path):
    runs, skipped = discover_runs(make_runs(tmp_path))
    assert [run.run_id for run in runs] == ["run-early", "sweep/run-failed", "run-late"]
    assert [s.path.name for s in skipped] == ["run-broken"]
    assert "unreadable" in skipped[0].reason


def test_markdown_matrix(tmp_path):
    root = make_runs(tmp_path)
    out = tmp_path / "docs" / "training_report.md"
    result = build_report(root, out_markdown=out)
    markdown = out.read_text()
    assert markdown == result.markdown and result.markdown_path == out
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
    assert late["Notes"].startswith("success; best step 20")

    early = row_cells(markdown, "run-early")
    assert (early["Steps"], early["LR"]) == ("30/200", "3e-4")
    assert (early["Baseline WER"], early["Tuned WER"]) == ("0.5000", "0.4500")
    assert early["Notes"].startswith("stopped_early: canary WER 0.2000 > baseline + 0.02 (0.1200); best step 15")
    assert "canary +0.0600 [+0.0100, +0.1100]" in early["Notes"]
    assert "extra-clean +0.0600 [+0.0100, +0.1100]" in early["Notes"]

    failed = row_cells(markdown, "sweep/run-failed")
    assert failed["Notes"] == "failed: ValueError: data/x.jsonl: no clips"
    assert (failed["Baseline WER"], failed["Tuned WER"], failed["Steps"]) == ("-", "-", "-/10")

    assert "run-broken" not in [line.split(" | ")[0].strip("| ") for line in lines if line.startswith("| ")]
    assert "## Skipped folders" in markdown and "run-broken" in markdown
    assert markdown.index("| run-early |") < markdown.index("| sweep/run-failed |") < markdown.index("| run-late |")
    # the per-manifest table, with flag changes
    assert "| val | 3 | 0.5000 | 0.3000 | -0.2000 [-0.2500, -0.1500] | 0.990 | empty_hypothesis 1 -> 0 |" in lines


def test_html_page(tmp_path):
    root = make_runs(tmp_path)
    result = build_report(root)
    assert result.html_path == root / "report.html" and result.markdown_path is None
    assert [s.path.name for s in result.skipped] == ["run-broken"]
    page = result.html_path.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<h2>Test Matrix</h2><table>" in page
    sections = {chunk.split('"', 1)[0]: chunk for chunk in page.split('<section class="run" id="')[1:]}
    assert set(sections) == {"run-run-late", "run-run-early", "run-sweep-run-failed"}
    for run_id in ("run-run-late", "run-run-early"):
        section = sections[run_id]
        assert section.count("<svg") + section.count("<img") == 3
        assert "Clips that changed most" in section and section.count("<table>") == 2  # manifests, changed clips
        assert section.index("<code>u3</code>") < section.index("<code>u1</code>")  # biggest |change| first
        assert "<code>u2</code>" not in section  # unchanged clips left out
    assert "main WER (not used for choices)" in page and "baseline val WER" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "run-broken" in page and "failed" in sections["run-sweep-run-failed"]
    assert "<svg" not in sections["run-sweep-run-failed"]  # nothing to plot: said in words
    assert list(root.glob("*")) and not (tmp_path / "docs").exists()


def test_run_folder_itself_and_cells(tmp_path):
    folder = fake_run(tmp_path, "solo", "2026-02-03T10:00:00+00:00", 1e-3, 10, 10, (0.3, 0.3))
    runs, skipped = discover_runs(folder)
    assert [run.run_id for run in runs] == ["solo"] and skipped == []
    assert format_lr(0.00025) == "2.5e-4" and format_lr(1e-3) == "1e-3"
    assert ci_cell({"delta": -0.87594, "ci_low": -0.96424, "ci_high": -0.79314}) == "-0.8759 [-0.9642, -0.7931]"


def test_print_experiment_still_works(tmp_path):
    folder = fake_run(tmp_path, "solo", "2026-02-03T10:00:00+00:00", 1e-3, 10, 10, (0.3, 0.2))
    metrics = json.loads((folder / "experiment_metrics.json").read_text())
    buffer = io.StringIO()
    print_experiment(metrics, Console(file=buffer, width=160))
    assert "0.3000" in buffer.getvalue() and "best step 5" in buffer.getvalue()


def test_report_cli_writes_matrix_and_page(tmp_path, capsys):
    from moonlora.cli import main

    make_runs(tmp_path)
    out = tmp_path / "docs" / "training_report.md"
    assert main(["report", str(tmp_path), "--out", str(out), "--html", str(tmp_path / "page.html")]) == 0
    printed = capsys.readouterr().out
    assert PLAN_HEADER in out.read_text() and PLAN_HEADER in printed
    assert (tmp_path / "page.html").read_text().count("<svg") >= 3
    assert "skipped" in printed
    assert main(["report", str(tmp_path / "missing")]) == 2
