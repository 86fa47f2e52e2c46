"""`moonlora demo`: the whole path on the offline default, in one command.

1. synthesize a small air-traffic-control domain (espeak-ng; train and test voices disjoint);
2. build a general-speech canary (the real beckett.wav + Harvard sentences) and the non-speech canary
   (silence, hiss, noise, radio static, hum and tones: words emitted where nobody speaks);
3. run the experiment on `bundled:base-en` once per seed (baseline, LoRA, interval WER, tuned,
   paired-bootstrap CIs), then export the chosen adapter as the deployable int8 `.ort` folder and
   score it against the torch model (export parity; Moonshine base only, so skipped for other
   `--model`s);
4. decide with the plan's criteria and write the report (Markdown Test Matrix + HTML page).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from moonlora.data.canary import build_canary
from moonlora.model import bundled
from moonlora.configs import DEFAULT_MODEL, DecodeConfig, DemoConfig, ExperimentConfig, TrainConfig
from moonlora.outputs import check_output_dir, claim_output_dir, write_json
from moonlora.data.synth.build import build_domain
from moonlora.data.synth.nonspeech import MANIFEST_NAME as NONSPEECH_MANIFEST, build_nonspeech

if TYPE_CHECKING:
    from moonlora.verdict.decide import Decision

__all__ = ["DemoConfig", "DemoResult", "check_output", "experiment_config", "run_demo"]

OUTPUT_KIND = "demo"
OUTPUT_ENTRIES = ("demo_config.json", "atc", "canary", "nonspeech", "runs", "decision.json", "training_report.md", "report.html")


@dataclass
class DemoResult:
    out_dir: Path
    runs: list  # the run record (runfolder.RunRecord) per seed
    decision: Decision
    report_markdown: Path
    report_html: Path
    wall_seconds: float


def check_output(config: DemoConfig) -> Path:
    """A fresh folder per demo: refused when it holds anything (--overwrite: an earlier demo's own entries)."""
    return check_output_dir(config.resolved_output_dir(), "--output-dir", OUTPUT_KIND, OUTPUT_ENTRIES,
                            config.overwrite, require_empty=True)


def experiment_config(config: DemoConfig, data: Path, canary: Path, run_dir: Path, seed: int,
                      nonspeech: Path | None = None) -> ExperimentConfig:
    return ExperimentConfig(
        output_dir=str(run_dir), dataset_path=str(data / "train.jsonl"), manifest_path=str(data / "test.jsonl"),
        model=config.model, canary_manifest=str(canary), wer_stop_threshold=1.5,
        nonspeech_manifest=None if nonspeech is None else str(nonspeech),
        train=TrainConfig(max_steps=config.max_steps, learning_rate=config.learning_rate,
                          batch_size=config.batch_size, grad_accum=1, warmup_steps=min(5, config.max_steps - 1),
                          eval_interval=config.eval_interval, seed=seed, device=config.device),
        decode=DecodeConfig(device=config.device), export="ort" if config.model == DEFAULT_MODEL else None,
    )


def check_settings(config: DemoConfig, out_dir: Path) -> None:
    """Every run's settings and the device, before any data is synthesized: the experiment configs are built
    (and so validated) with the paths they will get."""
    for seed in config.seeds:
        experiment_config(config, out_dir / "atc", out_dir / "canary" / "canary.jsonl", run_dir(out_dir, seed), seed,
                          out_dir / "nonspeech" / NONSPEECH_MANIFEST)
    from moonlora.model.device import check_device

    check_device(config.device)


def run_dir(out_dir: Path, seed: int) -> Path:
    return out_dir / "runs" / f"atc-seed{seed}"


def run_demo(config: DemoConfig, progress: bool = True) -> DemoResult:
    started = time.perf_counter()
    out_dir = check_output(config)  # before torch loads
    check_settings(config, out_dir)
    claim_output_dir(out_dir, "--output-dir", OUTPUT_KIND, OUTPUT_ENTRIES, config.overwrite, require_empty=True)
    from moonlora.verdict.decide import decide
    from moonlora.train.experiment import run_experiment
    from moonlora.verdict.report import build_report

    write_json(out_dir / "demo_config.json", asdict(config), command=OUTPUT_KIND)
    domain = build_domain("atc", n=config.domain_clips, seed=0, out_dir=out_dir / "atc", progress=progress)
    beckett = {"audio_filepath": str(bundled.beckett_wav_path()), "text": bundled.BECKETT_TEXT, "speaker": "beckett"}
    canary = build_canary(out_dir / "canary", [beckett], sentences=config.canary_sentences, seed=0, progress=progress)
    nonspeech = build_nonspeech(out_dir / "nonspeech", seed=0, progress=progress).manifest
    run_dirs = [run_dir(out_dir, seed) for seed in config.seeds]
    runs = [run_experiment(experiment_config(config, domain.out_dir, canary, folder, seed, nonspeech),
                           progress=progress)
            for seed, folder in zip(config.seeds, run_dirs)]
    decision = decide(run_dirs)
    write_json(out_dir / "decision.json", decision.to_dict(), command=OUTPUT_KIND)
    markdown, html = out_dir / "training_report.md", out_dir / "report.html"
    build_report(out_dir / "runs", out_markdown=markdown, out_html=html)
    return DemoResult(out_dir, runs, decision, markdown, html, time.perf_counter() - started)
