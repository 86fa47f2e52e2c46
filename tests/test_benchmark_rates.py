"""The rate arithmetic behind docs/benchmarks.md's training tables (benchmarks/train_speed.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_speed  # noqa: E402


def test_steady_rate_counts_only_steps_after_every_clip_was_drawn():
    # 16 clips, batch 4: steps 1-4 are the first pass; steps 5-8 the second (every clip cached)
    ends = [1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 5.5, 6.0]
    steady = train_speed.steady_rate(ends, clips=16, batch_size=4)
    assert steady["from_step"] == 5 and steady["steps"] == 4
    assert steady["samples_per_second"] == pytest.approx(4 * 4 / (6.0 - 4.0))


def test_steady_rate_is_none_when_the_run_ends_within_the_first_pass():
    assert train_speed.steady_rate([1.0, 2.0, 3.0], clips=16, batch_size=4) is None


def _rows(seconds, steady):
    return [{"seconds": seconds, "samples_per_second": 80 / seconds, "peak_rss_mib": 1000.0, "start_rss_mib": 800.0,
             "load1": 1.0, "busy": False, "steady": steady}]


def test_ratios_are_against_the_best_peer_of_the_group_and_the_best_all_stack_peer():
    runs = {"peer: a": _rows(40.0, None), "peer: b": _rows(20.0, None), "ours: x": _rows(25.0, None),
            "peer: dec": _rows(10.0, {"from_step": 11, "steps": 20, "samples_per_second": 8.0}),
            "ours: dec": _rows(5.0, {"from_step": 11, "steps": 20, "samples_per_second": 20.0})}
    groups = {"peer: a": "all", "peer: b": "all", "ours: x": "all", "peer: dec": "decoder", "ours: dec": "decoder"}
    table = train_speed.summarize(runs, groups)
    assert table["ours: x"]["speed_vs_best_all_stack_peer"] == pytest.approx(20 / 25)  # the faster peer, b
    assert table["ours: dec"]["speed_vs_best_peer_same_targets"] == pytest.approx(10 / 5)
    assert table["ours: dec"]["steady_vs_best_all_stack_peer"] == pytest.approx(20.0 / 4.0)
    assert table["ours: dec"]["steady_vs_best_peer_same_targets"] == pytest.approx(20.0 / 8.0)


def test_the_streaming_ratios_the_readme_and_docs_state_are_the_recorded_runs():
    """README and docs/benchmarks.md quote benchmarks/streaming_train.json: the ratios, rounded as printed."""
    import json

    root = Path(__file__).resolve().parents[1]
    report = json.loads((root / "benchmarks" / "streaming_train.json").read_text())
    training = report["training"]
    stated = [f"{training['ours decoder']['ratio_vs_official']:.2f}×",
              f"{training['ours decoder']['steady_ratio_vs_official']:.2f}×",
              f"{training['ours both']['ratio_vs_official']:.2f}×", f"{report['eval']['rtfx_ratio']:.2f}×"]
    assert stated == ["3.12×", "4.16×", "1.30×", "1.02×"]
    readme, docs = (root / "README.md").read_text(), (root / "docs" / "benchmarks.md").read_text()
    assert all(f"**{ratio}**" in readme and f"**{ratio}**" in docs for ratio in stated)
    assert report["steps"] == {"decoder": 104, "both": 104} and report["ours_group_by_length"] is True
    assert report["ours_lora_dropout"] == 0.0
    assert all(training[f"ours {sites}"]["same_adapted_modules"] for sites in ("decoder", "both"))
