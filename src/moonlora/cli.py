"""Command line: parses arguments and calls library functions, nothing more."""

from __future__ import annotations

import argparse
import sys

from moonlora.audio import AudioConfig, AudioError
from moonlora.configs import DEFAULT_MODEL, DecodeConfig, ExperimentConfig, LoraSettings, TrainConfig
from moonlora.contract import ContractMismatch
from moonlora.errors import ModelSourceError
from moonlora.manifest import ManifestError

# Errors that come from what the user passed: one line, exit code 2, no traceback.
USER_ERRORS = (ManifestError, ModelSourceError, AudioError, ContractMismatch, FileExistsError,
               FileNotFoundError, ValueError)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"{DEFAULT_MODEL} (offline, default), a hub id such as UsefulSensors/moonshine-tiny, or a save_pretrained folder")


def add_decode_args(parser: argparse.ArgumentParser) -> None:
    defaults = DecodeConfig()
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="clips per decode batch")
    parser.add_argument("--num-beams", type=int, default=defaults.num_beams, help="1 = greedy search")
    parser.add_argument("--device", default=defaults.device, help="auto | cpu | cuda | mps")
    parser.add_argument("--dtype", default=defaults.dtype, help="float32 | bfloat16 | float16")
    parser.add_argument("--rms-target-dbfs", type=float, default=None,
                        help="scale every clip to this RMS level (dBFS) before decoding; default: keep the level")


def decode_config(args: argparse.Namespace) -> DecodeConfig:
    return DecodeConfig(num_beams=args.num_beams, batch_size=args.batch_size, device=args.device, dtype=args.dtype)


def cmd_transcribe(args: argparse.Namespace) -> int:
    from moonlora.transcribe import TranscribeConfig, print_summary, run_transcribe

    config = TranscribeConfig(
        manifest=args.manifest, model=args.model, adapter=args.adapter, output_dir=args.output_dir,
        overwrite=args.overwrite, audio=AudioConfig(rms_target_dbfs=args.rms_target_dbfs), decode=decode_config(args),
    )
    result, out_dir = run_transcribe(config, progress=not args.quiet)
    print_summary(result, out_dir)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from moonlora.decide import render
    from moonlora.demo import DemoConfig, run_demo
    from moonlora.report import print_experiment

    result = run_demo(DemoConfig(output_dir=args.output_dir, model=args.model, max_steps=args.max_steps,
                                 seeds=tuple(args.seeds), device=args.device), progress=not args.quiet)
    for metrics in result.runs:
        print_experiment(metrics)
    print(render(result.decision))
    print(f"\nreport: {result.report_html}\nTest Matrix: {result.report_markdown}\n"
          f"runs: {result.out_dir / 'runs'}\nwall time: {result.wall_seconds / 60:.1f} min")
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    from moonlora.experiment import run_experiment
    from moonlora.report import print_experiment

    config = ExperimentConfig(
        output_dir=args.output_dir, dataset_path=args.dataset_path, manifest_path=args.manifest_path,
        model=args.model, max_seconds=args.max_seconds, val_fraction=args.val_fraction,
        wer_stop_threshold=args.wer_stop_threshold, extra_manifests=tuple(args.extra_manifest),
        canary_manifest=args.canary_manifest, canary_margin=args.canary_margin,
        replay_manifest=args.replay_manifest, log_manifest_interval_wer=args.log_manifest_interval_wer,
        train=TrainConfig(
            max_steps=args.max_steps, learning_rate=args.learning_rate, batch_size=args.batch_size,
            grad_accum=args.grad_accum, warmup_steps=args.warmup_steps, eval_interval=args.eval_interval,
            seed=args.seed, mixed_precision=args.mixed_precision, replay_ratio=args.replay_ratio,
        ),
        lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                          target_modules=tuple(m.strip() for m in args.target_modules.split(",") if m.strip())),
        audio=AudioConfig(rms_target_dbfs=args.rms_target_dbfs),
        decode=DecodeConfig(batch_size=args.decode_batch_size, num_beams=args.num_beams, device=args.device),
        resume=args.resume, overwrite=args.overwrite,
    )
    try:
        metrics = run_experiment(config, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"moonlora: interrupted; a checkpoint is in {args.output_dir}: rerun with --resume", file=sys.stderr)
        return 130
    print_experiment(metrics)
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from moonlora.decide import decide, render

    decision = decide(args.runs)
    print(render(decision))
    if args.json:
        Path(args.json).write_text(json.dumps(decision.to_dict(), indent=2) + "\n")
    return 0 if decision.passed else 1


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from moonlora.report import build_report

    result = build_report(Path(args.runs_dir), out_markdown=Path(args.out), out_html=Path(args.html) if args.html else None)
    print(result.markdown)
    for skipped in result.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}")
    print(f"\nTest Matrix: {result.markdown_path}\nHTML report: {result.html_path}")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    from moonlora.diagnose import DiagnoseConfig, run

    config = DiagnoseConfig(manifests=tuple(args.manifests), max_seconds=args.max_seconds,
                            thresholds=tuple(args.thresholds), seed=args.seed,
                            val_fraction=args.val_fraction, json_path=args.json)
    report, markdown = run(config)
    print(markdown)
    return 1 if report.unloaded else 0


def cmd_synth(args: argparse.Namespace) -> int:
    from pathlib import Path

    from moonlora.synth.build import build_domain

    result = build_domain(args.domain, n=args.n, seed=args.seed, out_dir=Path(args.out),
                          test_fraction=args.test_fraction, overwrite=args.overwrite, progress=not args.quiet)
    print(f"{result.n_train} train clips ({result.train_seconds / 60:.1f} min): {result.train_manifest}")
    print(f"{result.n_test} test clips ({result.test_seconds / 60:.1f} min, unseen voices): {result.test_manifest}")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from moonlora.augment import AugmentConfig, augment_manifest

    result = augment_manifest(AugmentConfig(
        manifest=args.manifest, out_dir=args.out, noise_snr_db=args.snr_db, band=args.band, speed=args.speed,
        seed=args.seed, overwrite=args.overwrite, noise_color=args.noise_color,
    ), progress=not args.quiet)
    print(f"{result.written} clips ({result.total_seconds / 60:.1f} min): {result.manifest_path}")
    for row in result.skipped:
        print(f"skipped {row}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moonlora", description="LoRA for Moonshine speech recognition, with honest WER.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    transcribe = commands.add_parser("transcribe", help="transcribe a manifest and score it (WER, CER, flags)")
    transcribe.add_argument("--manifest", required=True, help="JSONL manifest (audio_filepath, text, ...)")
    add_model_args(transcribe)
    transcribe.add_argument("--adapter", default=None, help="a PEFT LoRA adapter folder to apply")
    transcribe.add_argument("--output-dir", default=None, help="where to write transcripts.jsonl and summary.json")
    transcribe.add_argument("--overwrite", action="store_true", help="replace results already in --output-dir")
    add_decode_args(transcribe)
    transcribe.set_defaults(handler=cmd_transcribe)

    demo = commands.add_parser("demo", help="the main job on the offline default model")
    add_model_args(demo)
    demo.add_argument("--output-dir", default=None, help="default: outputs/demo-<time>")
    demo.add_argument("--max-steps", type=int, default=30, help="LoRA updates per run")
    demo.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="one run per seed")
    demo.add_argument("--device", default="auto")
    demo.set_defaults(handler=cmd_demo)

    experiment = commands.add_parser("experiment", help="baseline, LoRA training with interval WER, tuned, with CIs")
    train_defaults = TrainConfig()
    experiment.add_argument("--output-dir", required=True, help="the run folder (refused if it holds a run)")
    experiment.add_argument("--dataset-path", required=True, help="training manifest (its val split guides choices)")
    experiment.add_argument("--manifest-path", required=True, help="main held-out manifest (scored before and after)")
    experiment.add_argument("--max-steps", type=int, default=train_defaults.max_steps, help="optimizer updates")
    experiment.add_argument("--learning-rate", type=float, default=train_defaults.learning_rate)
    experiment.add_argument("--eval-interval", type=int, default=train_defaults.eval_interval,
                            help="val-split WER every this many steps")
    experiment.add_argument("--max-seconds", type=float, default=30.0, help="drop training clips longer than this")
    experiment.add_argument("--seed", type=int, default=train_defaults.seed)
    experiment.add_argument("--wer-stop-threshold", type=float, default=None,
                            help="stop when val WER exceeds baseline val WER times this (e.g. 1.1)")
    add_model_args(experiment)
    experiment.add_argument("--lora-r", type=int, default=8)
    experiment.add_argument("--lora-alpha", type=float, default=16.0)
    experiment.add_argument("--lora-dropout", type=float, default=0.05)
    experiment.add_argument("--target-modules", default="q_proj,k_proj,v_proj,o_proj,fc1,fc2")
    experiment.add_argument("--batch-size", type=int, default=train_defaults.batch_size, help="training clips per micro-batch")
    experiment.add_argument("--grad-accum", type=int, default=train_defaults.grad_accum, help="micro-batches per update")
    experiment.add_argument("--warmup-steps", type=int, default=train_defaults.warmup_steps)
    experiment.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16"],
                            help="auto: bf16 on a GPU that supports it, else fp32")
    experiment.add_argument("--val-fraction", type=float, default=0.2)
    experiment.add_argument("--extra-manifest", action="append", default=[], help="secondary manifest (repeatable)")
    experiment.add_argument("--canary-manifest", default=None, help="general speech that must not get worse")
    experiment.add_argument("--canary-margin", type=float, default=0.02, help="stop when canary WER rises by more")
    experiment.add_argument("--replay-manifest", default=None, help="general speech mixed into training")
    experiment.add_argument("--replay-ratio", type=float, default=0.0, help="share of training clips from replay")
    experiment.add_argument("--log-manifest-interval-wer", action="store_true",
                            help="also log main-manifest WER at intervals (plots only, never used for choices)")
    experiment.add_argument("--decode-batch-size", type=int, default=DecodeConfig().batch_size)
    experiment.add_argument("--num-beams", type=int, default=1)
    experiment.add_argument("--device", default="auto")
    experiment.add_argument("--rms-target-dbfs", type=float, default=None)
    experiment.add_argument("--resume", action="store_true", help="continue the run in --output-dir")
    experiment.add_argument("--overwrite", action="store_true", help="replace the run in --output-dir")
    experiment.set_defaults(handler=cmd_experiment)

    decide_cmd = commands.add_parser("decide", help="the plan's decision criteria over run folders")
    decide_cmd.add_argument("runs", nargs="+", help="run folders written by moonlora experiment")
    decide_cmd.add_argument("--json", default=None, help="also write the verdicts as JSON here")
    decide_cmd.set_defaults(handler=cmd_decide)

    report = commands.add_parser("report", help="Test Matrix (Markdown) and an HTML page with plots from run folders")
    report.add_argument("runs_dir", help="folder holding run folders")
    report.add_argument("--out", default="docs/training_report.md", help="Markdown Test Matrix")
    report.add_argument("--html", default=None, help="HTML page (default: RUNS_DIR/report.html)")
    report.set_defaults(handler=cmd_report)

    diagnose = commands.add_parser("diagnose", help="duration profile, splits, problems and leakage of manifests")
    diagnose.add_argument("--manifests", nargs="+", required=True, help="one or more JSONL manifests")
    diagnose.add_argument("--max-seconds", type=float, required=True, help="duration cap used for the split table")
    diagnose.add_argument("--thresholds", type=float, nargs="+", default=[5, 8, 10, 15, 20],
                          help="duration thresholds (seconds) for the profile table")
    diagnose.add_argument("--seed", type=int, default=42, help="seed of the train/val split")
    diagnose.add_argument("--val-fraction", type=float, default=0.2, help="share of clips for validation")
    diagnose.add_argument("--json", default=None, help="also write the whole report as JSON here")
    diagnose.set_defaults(handler=cmd_diagnose)

    synth = commands.add_parser("synth", help="build a synthetic domain (espeak-ng voices) with train/test manifests")
    synth.add_argument("--domain", default="atc", help="registered domain (moonlora.synth.domains): atc")
    synth.add_argument("--n", type=int, default=300, help="number of utterances")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True, help="output folder (clips/, train.jsonl, test.jsonl)")
    synth.add_argument("--test-fraction", type=float, default=0.33, help="share of utterances for the test voices")
    synth.add_argument("--overwrite", action="store_true", help="replace a domain already in --out")
    synth.set_defaults(handler=cmd_synth)

    augment = commands.add_parser("augment", help="domain-shifted copies of a manifest: noise, band-limit, speed")
    augment.add_argument("--manifest", required=True)
    augment.add_argument("--out", required=True, help="output folder (clips/, manifest.jsonl)")
    augment.add_argument("--snr-db", type=float, default=None, help="add noise at this SNR (dB)")
    augment.add_argument("--noise-color", default="white", choices=["white", "pink"])
    augment.add_argument("--band", default=None, choices=["telephone", "radio"], help="band-limit like a phone or AM radio")
    augment.add_argument("--speed", type=float, default=None, help="speed factor, e.g. 0.9 or 1.1")
    augment.add_argument("--seed", type=int, default=0)
    augment.add_argument("--overwrite", action="store_true", help="replace an augmented copy already in --out")
    augment.set_defaults(handler=cmd_augment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quiet:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
    try:
        return args.handler(args)
    except USER_ERRORS as error:
        print(f"moonlora: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moonlora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
