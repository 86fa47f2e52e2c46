"""`moonlora demo`: the whole path on the offline default, in one command.

1. synthesize a small air-traffic-control domain (espeak-ng; train and test voices disjoint);
2. build a general-speech canary (the real beckett.wav + Harvard sentences);
3. run the experiment on `bundled:base-en` once per seed (baseline, LoRA, interval WER, tuned,
   paired-bootstrap CIs);
4. decide with the plan's criteria and write the report (Markdown Test Matrix + HTML page).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from moonlora.canary import build_canary
from moonlora.configs import DEFAULT_MODEL, DecodeConfig, ExperimentConfig, TrainConfig
from moonlora.decide import Decision, decide
from moonlora.experiment import run_experiment
from moonlora.synth.build import build_domain


@dataclass(frozen=True)
class DemoConfig:
    output_dir: str | None = None  # default: outputs/demo-<time>
    model: str = DEFAULT_MODEL
    domain_clips: int = 150  # synthetic ATC utterances; a third on the held-out test voices
    canary_sentences: int = 12
    max_steps: int = 30
    # Measured, not guessed: on this domain lr 1e-3 reached held-out WER 0.03 in 100 steps where
    # 1e-4 needed 300 for 0.05 (docs/benchmarks.md, FACTS).
    learning_rate: float = 1e-3
    batch_size: int = 8
    eval_interval: int = 10
    seeds: tuple[int, ...] = (1, 2)  # two runs that differ only by seed: the reproducibility check
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return Path("outputs") / f"demo-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


@dataclass
class DemoResult:
    out_dir: Path
    runs: list[dict]  # experiment metrics per seed
    decision: Decision
    report_markdown: Path
    report_html: Path
    wall_seconds: float


def experiment_config(config: DemoConfig, data: Path, canary: Path, run_dir: Path, seed: int) -> ExperimentConfig:
    return ExperimentConfig(
        output_dir=str(run_dir), dataset_path=str(data / "train.jsonl"), manifest_path=str(data / "test.jsonl"),
        model=config.model, canary_manifest=str(canary), wer_stop_threshold=1.5,
        train=TrainConfig(max_steps=config.max_steps, learning_rate=config.learning_rate,
                          batch_size=config.batch_size, grad_accum=1, warmup_steps=min(5, config.max_steps - 1),
                          eval_interval=config.eval_interval, seed=seed),
        decode=DecodeConfig(device=config.device),
    )


def run_demo(config: DemoConfig, progress: bool = True) -> DemoResult:
    from moonlora.report import build_report

    started = time.perf_counter()
    out_dir = config.resolved_output_dir()
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir}: not empty; pick another --output-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "demo_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    domain = build_domain("atc", n=config.domain_clips, seed=0, out_dir=out_dir / "atc", progress=progress)
    canary = build_canary(out_dir / "canary", sentences=config.canary_sentences, seed=0, progress=progress)
    run_dirs = [out_dir / "runs" / f"atc-seed{seed}" for seed in config.seeds]
    runs = [run_experiment(experiment_config(config, domain.out_dir, canary, run_dir, seed), progress=progress)
            for seed, run_dir in zip(config.seeds, run_dirs)]
    decision = decide(run_dirs)
    (out_dir / "decision.json").write_text(json.dumps(decision.to_dict(), indent=2) + "\n")
    markdown, html = out_dir / "training_report.md", out_dir / "report.html"
    build_report(out_dir / "runs", out_markdown=markdown, out_html=html)
    return DemoResult(out_dir, runs, decision, markdown, html, time.perf_counter() - started)
