"""Command line: parses arguments and calls library functions, nothing more.

Light on purpose: importing this module, `moonlora --help` and the data and verdict commands
load no torch, transformers, peft or accelerate; a command that runs a model imports them inside
its handler, after its output path has been checked. Every default shown by `--help` (and in the
README's commands table, rendered by `commands_markdown`) comes from the config dataclasses.
"""

from __future__ import annotations

import argparse
import errno
import inspect
import shlex
import signal
import sys
import threading
import traceback
from dataclasses import replace
from pathlib import Path

from moonlora import markdown
from moonlora.data.audio import AudioConfig
from moonlora.data.augment import BANDS, NOISE_COLORS, AugmentConfig
from moonlora.configs import (DTYPE_NAMES, ENCODER_MODES, EXPERIMENT_FLAGS, FLAG_ALIASES, LORA_INITS, LORA_VARIANTS, METRIC_NAMES,
                              DecodeConfig, DemoConfig, ExperimentConfig, ExportConfig, ScoringConfig, StudioConfig, SynthConfig,
                              TranscribeConfig,
                              default_of, flag_default, flag_type, parse_targets)
from moonlora.eval.compare import DEFAULT_MARGIN, DEFAULT_TOP
from moonlora.verdict.decide import DecideConfig
from moonlora.data.diagnose import DiagnoseConfig
from moonlora.data.importers.items import TEXT_MODES
from moonlora.data.importers.layouts import FORMATS
from moonlora.data.importers.run import ImportConfig
from moonlora.errors import MoonloraError, one_line
from moonlora.outputs import check_output_file, write_json
from moonlora.runfolder import CONFIG_FILE, METRICS_FILE, is_main_process, latest_checkpoint_step
from moonlora.sweep import AXES, RUN_CONTROL, GridFile, SweepConfig, load_grid, run_sweep, verdict_table
from moonlora.sweep import check_output as check_sweep_output
from moonlora.data.synth.build import build_domain
from moonlora.data.synth.domains import DOMAINS
from moonlora.data.synth.nonspeech import DOMAIN as NONSPEECH_DOMAIN, build_nonspeech
from moonlora.train.output_dir import validate_run_dir

# Errors that come from what the user passed (moonlora.errors): one line, exit code 2, no traceback.
# Anything else is a bug in moonlora: its traceback, one line saying so, exit code BUG_EXIT.
USER_ERRORS = (MoonloraError,)
# What the machine refuses (permissions, a read-only or full disk, a path through a file) is no bug either:
# one line naming the file, with what to check.
ENVIRONMENT_ERRNOS = {
    errno.EACCES: "check its permissions", errno.EPERM: "check its permissions",
    errno.EROFS: "the file system is read-only", errno.ENOSPC: "free some disk space", errno.EDQUOT: "over quota",
    errno.ENOTDIR: "a part of the path is a file", errno.EISDIR: "it is a folder, not a file",
    errno.ENAMETOOLONG: "shorten the path", errno.ELOOP: "the path's symlinks loop",
}
BUG_EXIT = 70  # sysexits' EX_SOFTWARE

EXIT_CODES = (
    (0, "success"),
    (1, "`decide`: the verdict is FAIL; `sweep`: a group's verdict is FAIL or a run did not finish; `compare`: B is not non-inferior to A within --margin; "
        "`diagnose`: a manifest could not be loaded"),
    (2, "a user error (bad value, missing or unreadable input, an output that would replace earlier results): "
        "one line on stderr"),
    (BUG_EXIT, "a bug in moonlora: the traceback, then one line saying so and where the run's log is"),
    (130, "interrupted (Ctrl-C or SIGTERM): one line on stderr; an experiment resumes with --resume"),
)


# --- help: every flag has a help line and shows its default -------------------------------------------------------

DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"


def default_text(action: argparse.Action) -> str:
    """How a flag's default reads in --help and in the README table."""
    if action.required or not action.option_strings:
        return "required"
    if action.nargs == 0:  # a switch
        return "on" if action.default else "off"
    if action.default is None or action.default == []:
        return "none"
    if isinstance(action.default, (list, tuple)):
        return " ".join(str(value) for value in action.default)
    return str(action.default)


class HelpFormatter(argparse.HelpFormatter):
    """Appends `(default: ...)` or `(required)` to the help line of every flag."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        shown = "required" if action.required else f"default: {default_text(action)}"
        return f"{text} ({shown.replace('%', '%%')})"


class TopHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """`moonlora --help`: the epilog (exit codes) keeps its lines."""


def add_command(commands, name: str, summary: str, details: str, handler) -> argparse.ArgumentParser:
    """A subcommand: `summary` in `moonlora --help`, summary and details in `moonlora NAME --help`."""
    # No abbreviated flags: commands compare the flags a user gave with a run's settings by name.
    parser = commands.add_parser(name, help=summary, description=f"{summary[:1].upper()}{summary[1:]}. {details}",
                                 formatter_class=HelpFormatter, allow_abbrev=False)
    parser.set_defaults(handler=handler)
    return parser


def add_model_args(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--model", default=default,
                        help="bundled:base-en (offline), a hub id such as UsefulSensors/moonshine-tiny or "
                             "UsefulSensors/moonshine-streaming-tiny (family read from its config), "
                             "a save_pretrained folder, or ort:DIR / ort:bundled:base-en (deployed int8 .ort "
                             "graphs, scored through onnxruntime on the CPU; no --adapter)")


GUARD_HELP = ("0: off; N: stop a hypothesis once it ends in a loop (two copies of a phrase of N or more tokens, or "
              "three or more holding N tokens) and keep one copy; recorded in the eval contract when on")


def add_decode_args(parser: argparse.ArgumentParser) -> None:
    defaults = DecodeConfig()
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="clips per decode batch")
    parser.add_argument("--num-beams", type=int, default=defaults.num_beams, help="1 = greedy search")
    parser.add_argument("--repetition-guard", type=int, default=defaults.repetition_guard, help=GUARD_HELP)
    parser.add_argument("--device", default=defaults.device, help=DEVICE_HELP)
    parser.add_argument("--dtype", default=defaults.dtype, choices=DTYPE_NAMES, help="model weights and inputs")
    add_encoder_arg(parser)
    add_rms_arg(parser)


def add_encoder_arg(parser) -> None:
    parser.add_argument("--encoder", default=DecodeConfig().encoder, choices=ENCODER_MODES,
                        help="how clips are encoded: each on its own, or one exact padded pass per batch (same "
                             "transcripts, a speed setting); auto = per-clip on CPU, batched on a GPU")


def add_rms_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rms-target-dbfs", type=float, default=AudioConfig().rms_target_dbfs,
                        help="scale every clip to this RMS level (dBFS) before the model hears it; none keeps the level")


LANGUAGE_HELP = ("ISO code of the transcripts (en, es, de, zh, ja, ...): picks the scoring normalizer (Whisper's "
                 "English one for en, its basic one otherwise, spaces removed for zh/ja/ko/yue) and the primary metric; "
                 "recorded in the eval contract")
METRIC_HELP = "the primary metric: wer or cer; none: cer for zh, ja, ko, yue and wer otherwise"


def add_scoring_args(parser: argparse.ArgumentParser) -> None:
    defaults = ScoringConfig()
    parser.add_argument("--language", default=defaults.language, help=LANGUAGE_HELP)
    parser.add_argument("--metric", default=defaults.metric, choices=list(METRIC_NAMES), help=METRIC_HELP)


def add_overwrite_arg(parser: argparse.ArgumentParser, flag: str) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace moonlora's earlier results at {flag} (only files moonlora wrote there)")


def add_json_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", default=None, help=f"also write {what} as JSON to this file")
    add_overwrite_arg(parser, "--json")


# --- handlers -----------------------------------------------------------------------------------------------------


def quiet_model_logs(args: argparse.Namespace) -> None:
    """--quiet, or a log that is not a terminal, also silences transformers' progress bars (their
    carriage returns would litter the log); only commands that load a model call this."""
    if args.quiet or not sys.stderr.isatty():
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def cmd_transcribe(args: argparse.Namespace) -> int:
    from moonlora.eval.transcribe import check_output, print_summary, run_transcribe, with_run_settings

    config = TranscribeConfig(
        manifest=args.manifest, model=args.model, adapter=args.adapter, output_dir=args.output_dir,
        overwrite=args.overwrite, nonspeech=args.nonspeech, audio=AudioConfig(rms_target_dbfs=args.rms_target_dbfs),
        decode=DecodeConfig(num_beams=args.num_beams, batch_size=args.batch_size, device=args.device,
                            dtype=args.dtype, encoder=args.encoder, repetition_guard=args.repetition_guard),
        scoring=ScoringConfig(language=args.language, metric=args.metric),
    )
    config = with_run_settings(config, args.given_flags)  # a run's adapter: the run's audio and decode settings
    config = replace(config, output_dir=str(check_output(config)))  # refused before torch loads
    quiet_model_logs(args)
    result, out_dir = run_transcribe(config, progress=not args.quiet)
    print_summary(result, out_dir)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from moonlora.demo import check_output, run_demo

    config = DemoConfig(output_dir=args.output_dir, model=args.model, max_steps=args.max_steps,
                        seeds=tuple(args.seeds), device=args.device, overwrite=args.overwrite)
    config = replace(config, output_dir=str(check_output(config)))  # refused before torch loads
    quiet_model_logs(args)
    from moonlora.verdict.decide import render
    from moonlora.verdict.report import print_experiment

    result = run_demo(config, progress=not args.quiet)
    for metrics in result.runs:
        print_experiment(metrics)
    print(render(result.decision))
    print(f"\nreport: {result.report_html}\nTest Matrix: {result.report_markdown}\n"
          f"runs: {result.out_dir / 'runs'}\nwall time: {result.wall_seconds / 60:.1f} min")
    return 0


def experiment_settings(args: argparse.Namespace) -> dict:
    """The experiment flags among parsed arguments (those given, for sweep), by flag name."""
    return {name: value for name, value in vars(args).items() if name in EXPERIMENT_FLAGS}


def cmd_experiment(args: argparse.Namespace) -> int:
    config = ExperimentConfig.from_flags(experiment_settings(args))
    if is_main_process():
        validate_run_dir(config)  # refused before the model stack loads (run_experiment checks again)
    quiet_model_logs(args)
    from moonlora.train.experiment import run_experiment
    from moonlora.verdict.report import print_experiment

    try:
        metrics = run_experiment(config, progress=not args.quiet)
    except KeyboardInterrupt:
        print(interrupted_run_line(Path(args.output_dir)), file=sys.stderr)
        return 130
    if is_main_process():  # other ranks of a multi-process run stay quiet
        print_experiment(metrics)
    return 0


def interrupted_run_line(run_dir: Path) -> str:
    """What an interrupted experiment left: a checkpoint to resume from, a run that resumes from step 0, or nothing."""
    if latest_checkpoint_step(run_dir) is not None:
        return f"moonlora: interrupted; a checkpoint is in {run_dir}: rerun with --resume"
    if (run_dir / METRICS_FILE).is_file() and (run_dir / CONFIG_FILE).is_file():
        return (f"moonlora: interrupted before the first checkpoint; rerun with --resume to continue the run in "
                f"{run_dir} (training starts at step 0)")
    return "moonlora: interrupted before the run folder was written; nothing to resume"


def cmd_sweep(args: argparse.Namespace) -> int:
    grid = load_grid(args.grid) if args.grid else GridFile(None, {}, {})
    overrides = {name: value for name, value in experiment_settings(args).items() if name not in RUN_CONTROL}
    config = SweepConfig.from_grid(grid, overrides, output_dir=args.output_dir, resume=args.resume,
                                   overwrite=args.overwrite)
    check_sweep_output(config)  # refused before the model stack loads (run_sweep checks again)
    quiet_model_logs(args)
    from moonlora.train.experiment import check_run_settings

    check_run_settings(config.base)  # device and export, before any run: the axes vary neither
    try:
        result = run_sweep(config, progress=not args.quiet, command=shlex.join(["moonlora", *args.argv]))
    except KeyboardInterrupt:
        print(f"moonlora: interrupted; continue the sweep with: moonlora sweep ... --output-dir {args.output_dir} "
              "--resume", file=sys.stderr)
        return 130
    print(verdict_table(result))
    failed = [row.name for row in result.state.runs if row.status not in ("success", "stopped_early")]
    print(f"\nruns: {len(result.state.runs) - len(failed)}/{len(result.state.runs)} finished"
          + (f" (not finished: {', '.join(failed)})" if failed else "")
          + f"; baselines decoded {result.state.baselines.decoded}, reused {result.state.baselines.reused}; "
          f"wall time {result.state.wall_seconds / 60:.1f} min\nsweep record: {result.out_dir / 'sweep.json'}"
          + (f"\nTest Matrix: {result.report_markdown}\nHTML report: {result.report_html}" if result.report_markdown else ""))
    return 0 if not failed and all(d.passed for d in result.decisions.values()) else 1


def cmd_decide(args: argparse.Namespace) -> int:
    json_path = check_output_file(args.json, "--json", args.overwrite, "decide") if args.json else None
    from moonlora.verdict.decide import decide, render

    decision = decide(args.runs, DecideConfig(margin=args.margin, h3_band=args.h3_band,
                                              regression_factor=args.regression_factor,
                                              nonspeech_margin=args.nonspeech_margin))
    print(render(decision))
    if json_path is not None:
        write_json(json_path, decision.to_dict(), command="decide")
    return 0 if decision.passed else 1


def cmd_compare(args: argparse.Namespace) -> int:
    json_path = check_output_file(args.json, "--json", args.overwrite, "compare") if args.json else None
    from moonlora.eval.compare import compare_folders, render

    comparison = compare_folders(args.a, args.b, allow=tuple(args.allow), margin=args.margin, top=args.top)
    print(render(comparison))
    if json_path is not None:
        write_json(json_path, comparison.to_dict(), command="compare")
    return 0 if comparison.non_inferior else 1


def cmd_report(args: argparse.Namespace) -> int:
    from moonlora.verdict.report import build_report

    # build_report checks both outputs (default: inside RUNS_DIR) before it reads any run.
    result = build_report(Path(args.runs_dir), out_markdown=Path(args.out) if args.out else None,
                          out_html=Path(args.html) if args.html else None, overwrite=args.overwrite)
    print(result.markdown)
    for skipped in result.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}")
    print(f"\nTest Matrix: {result.markdown_path}\nHTML report: {result.html_path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from moonlora.ship.export import check_output, export, lost_adapter_warning

    check_output(args.out, args.format, args.overwrite)  # refused before torch loads (export checks again)
    quiet_model_logs(args)
    result = export(args.source, args.out, export_format=args.format, model=args.model, overwrite=args.overwrite,
                    rounding=args.rounding, precision=args.precision)
    for name, manifest in result.manifests.items():
        print(f"{name} ({manifest['precision']}): {result.folders[name]} — base {manifest['base_model']} + adapter "
              f"{(manifest['adapter_sha256'] or '-')[:12]} -> merged weights {manifest['merged_weights_sha256'][:12]}")
        warning = lost_adapter_warning(manifest["quantization"] or {})
        if warning:
            print(f"moonlora: warning: {warning}", file=sys.stderr)
    print("provenance: manifest.json in each folder; score an export with transcribe --model DIR (hf) or "
          "--model ort:DIR (ort), then moonlora compare")
    return 0


def cmd_diagnose(args: argparse.Namespace) -> int:
    if args.json:
        check_output_file(args.json, "--json", args.overwrite, "diagnose")
    from moonlora.data.diagnose import run

    config = DiagnoseConfig(manifests=tuple(args.manifests), max_seconds=args.max_seconds,
                            thresholds=tuple(args.thresholds), seed=args.seed,
                            val_fraction=args.val_fraction, json_path=args.json, language=args.language)
    report, markdown = run(config)
    print(markdown)
    return 1 if report.unloaded else 0


def cmd_synth(args: argparse.Namespace) -> int:
    if args.domain == NONSPEECH_DOMAIN:
        canary = build_nonspeech(Path(args.out), seed=args.seed, overwrite=args.overwrite, progress=not args.quiet)
        print(f"{canary.clips} non-speech clips ({canary.seconds / 60:.1f} min, no transcripts): {canary.manifest}")
        return 0
    result = build_domain(args.domain, n=args.n, seed=args.seed, out_dir=Path(args.out),
                          test_fraction=args.test_fraction, overwrite=args.overwrite, progress=not args.quiet)
    print(f"{result.n_train} train clips ({result.train_seconds / 60:.1f} min): {result.train_manifest}")
    print(f"{result.n_test} test clips ({result.test_seconds / 60:.1f} min, unseen voices): {result.test_manifest}")
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from moonlora.data.augment import augment_manifest

    result = augment_manifest(AugmentConfig(
        manifest=args.manifest, out_dir=args.out, noise_snr_db=args.snr_db, band=args.band, speed=args.speed,
        seed=args.seed, overwrite=args.overwrite, noise_color=args.noise_color,
    ), progress=not args.quiet)
    print(f"{result.written} clips ({result.total_seconds / 60:.1f} min): {result.manifest_path}")
    for row in result.skipped:
        print(f"skipped {row}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from moonlora.data.importers.run import render, run_import

    splits = tuple(part.strip() for value in args.split for part in value.split(",") if part.strip()) or None
    config = ImportConfig(
        source=args.source, out_dir=args.out, format=args.format, mode="link" if args.link else "copy",
        config=args.config, splits=splits, audio_column=args.audio_column, text_column=args.text_column,
        speaker_column=args.speaker_column, limit=args.limit, max_seconds=args.max_seconds, seed=args.seed,
        text_mode=args.text_mode, overwrite=args.overwrite, language=args.language)
    try:
        result = run_import(config, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"moonlora: interrupted; the clips written so far are kept: rerun the same command to continue the "
              f"import into {args.out}", file=sys.stderr)
        return 130
    print(render(result))
    return 0


def add_import_command(commands) -> None:
    imports = add_command(
        commands, "import", "a corpus you have as 16 kHz WAV clips and one manifest per split",
        "Reads a LibriSpeech tree (*.trans.txt), Multilingual LibriSpeech (transcripts.txt + audio/), Common Voice (*.tsv + clips/), a Kaldi data folder (wav.scp, text, "
        "utt2spk, segments cut), the official fine-tuner's {audio, text} rows (JSONL, JSON, TSV, or a folder of them; inline "
        "audio arrays become files), audio with same-name .txt files, an audiofolder with metadata.csv, or a Hugging Face dataset "
        "(save_to_disk folder, parquet or arrow files, a hub id where the hub is reachable). Writes clips/SPLIT/*.wav "
        "(16 kHz mono PCM), SPLIT.jsonl (audio_filepath, duration, text, speaker) and import_report.json (counts, "
        "hours, skipped items with reasons, duplicates by audio hash). The same input gives the same manifests; an "
        "interrupted import continues when rerun with the same arguments.", cmd_import)
    imports.add_argument("source", metavar="SOURCE", help="a folder, a file, or a Hugging Face hub id")
    imports.add_argument("--out", required=True, help="a new folder for clips/, the manifests and the report")
    imports.add_argument("--format", default=default_of(ImportConfig, "format"), choices=FORMATS,
                         help="the source's layout; auto: detected from its files (a name that is no path is a hub id)")
    how = imports.add_mutually_exclusive_group()
    how.add_argument("--copy", action="store_true", default=True,
                     help="write every clip as a 16 kHz mono 16-bit WAV under clips/")
    how.add_argument("--link", action="store_true",
                     help="point the manifest at originals that are already 16 kHz mono 16-bit WAV or FLAC (others "
                          "are still converted)")
    imports.add_argument("--config", default=default_of(ImportConfig, "config"),
                         help="a hub dataset's configuration, e.g. clean for librispeech_asr")
    imports.add_argument("--split", action="append", default=[],
                         help="splits to import (comma-separated or repeated): a hub split, a Common Voice TSV name, a "
                              "dataset's or folder's split; none: all (a hub id needs one)")
    imports.add_argument("--audio-column", default=None, help="column holding the audio; none: detected")
    imports.add_argument("--text-column", default=None, help="column holding the transcript; none: detected")
    imports.add_argument("--speaker-column", default=None, help="column holding the speaker; none: detected")
    imports.add_argument("--limit", type=int, default=default_of(ImportConfig, "limit"),
                         help="at most this many clips per split, a random sample drawn with --seed")
    imports.add_argument("--max-seconds", type=float, default=default_of(ImportConfig, "max_seconds"),
                         help="skip clips longer than this (counted in the report)")
    imports.add_argument("--seed", type=int, default=default_of(ImportConfig, "seed"), help="seed of the --limit sample")
    imports.add_argument("--text-mode", default=default_of(ImportConfig, "text_mode"), choices=TEXT_MODES,
                         help="auto: lowercase a corpus whose transcripts are more than 90 percent upper case "
                              "(LibriSpeech), as the official fine-tuner does; none: keep; lower: always")
    imports.add_argument("--language", default=default_of(ImportConfig, "language"),
                         help="ISO code of the transcripts (en, es, zh, ...), recorded in the import report: "
                              "diagnose shows it; experiment and transcribe take their own --language")
    add_overwrite_arg(imports, "--out")


# --- the parser ---------------------------------------------------------------------------------------------------


def cmd_studio(args: argparse.Namespace) -> int:
    config = StudioConfig(root=args.root, port=args.port, host=args.host, model=args.model, device=args.device,
                          max_upload_mb=args.max_upload_mb, open_browser=args.open)
    from moonlora.studio.server import serve

    serve(config)
    return 0


def add_studio_command(commands) -> None:
    studio = add_command(
        commands, "studio", "the local web app: runs, listening, recording, corrections, training",
        "Serves a browser app on this machine (no network needed, nothing loaded from elsewhere): every run and "
        "sweep under --root with live progress, verdicts and plots; clip-by-clip listening with word diffs and "
        "two runs side by side; a prompted recorder writing 16 kHz WAV clips and manifest rows; corrections and "
        "try-outs through the base model or a run's adapter; experiments and sweeps started, stopped (as Ctrl-C) "
        "and resumed from a form. Only files under --root are served, read or written.", cmd_studio)
    defaults = StudioConfig()
    studio.add_argument("--root", default=defaults.root, help="the folder the studio serves, reads and writes in")
    studio.add_argument("--port", type=int, default=defaults.port, help="TCP port; 0: any free port")
    studio.add_argument("--host", default=defaults.host,
                        help="address to listen on; any but 127.0.0.1/localhost/::1 serves other machines and "
                             "prints an access token every request must carry")
    add_model_args(studio, defaults.model)
    studio.add_argument("--device", default=defaults.device, help=DEVICE_HELP)
    studio.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_mb,
                        help="largest recorded or dropped take accepted (MiB)")
    studio.add_argument("--open", action="store_true", help="open the studio in this machine's browser")


def build_parser() -> argparse.ArgumentParser:
    epilog = "exit codes:\n" + "\n".join(f"  {code:<4} {meaning.replace('`', '')}" for code, meaning in EXIT_CODES)
    parser = argparse.ArgumentParser(prog="moonlora", formatter_class=TopHelpFormatter, epilog=epilog,
                                     description="LoRA for Moonshine speech recognition, with honest WER.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    transcribe = add_command(
        commands, "transcribe", "transcribe a manifest and score it (WER, CER, flags)",
        "Writes transcripts.jsonl (ref, hyp, duration, errors, flags per clip) and summary.json (WER, CER, hours, "
        "skipped rows with reasons, flag counts, WER by duration, RTFx, eval contract).", cmd_transcribe)
    transcribe.add_argument("--manifest", required=True, help="JSONL manifest (audio_filepath, text, ...)")
    transcribe.add_argument("--nonspeech", action="store_true",
                            help="the manifest holds clips without speech (no transcripts; moonlora synth --domain "
                                 "nonspeech): scored by the words emitted per clip, not WER")
    add_model_args(transcribe, default_of(TranscribeConfig, "model"))
    transcribe.add_argument("--adapter", default=default_of(TranscribeConfig, "adapter"),
                            help="a PEFT LoRA adapter folder to apply; a run's adapter (RUN/adapter, RUN/adapter-best, "
                                 "RUN/adapter-last, or RUN itself) is scored under the run's model, audio and decode "
                                 "settings, and a flag contradicting them is refused")
    transcribe.add_argument("--output-dir", default=default_of(TranscribeConfig, "output_dir"),
                            help="folder for transcripts.jsonl, summary.json, transcribe_config.json; "
                                 "none: outputs/transcribe/<manifest>-<time>")
    add_overwrite_arg(transcribe, "--output-dir")
    add_decode_args(transcribe)
    add_scoring_args(transcribe)

    demo_defaults = DemoConfig()
    demo = add_command(commands, "demo", "the main job on the offline default model",
                       "Synthesizes an ATC domain and a general-speech canary, runs one experiment per seed, "
                       "then decide and report, all in one new folder.", cmd_demo)
    add_model_args(demo, demo_defaults.model)
    demo.add_argument("--output-dir", default=demo_defaults.output_dir,
                      help="a new folder for the whole demo; none: outputs/demo-<time>")
    demo.add_argument("--max-steps", type=int, default=demo_defaults.max_steps, help="LoRA updates per run")
    demo.add_argument("--seeds", type=int, nargs="+", default=list(demo_defaults.seeds), help="one run per seed")
    demo.add_argument("--device", default=demo_defaults.device, help=DEVICE_HELP)
    add_overwrite_arg(demo, "--output-dir")

    add_experiment_args(add_command(
        commands, "experiment", "baseline, LoRA training with interval WER, tuned, with CIs",
        "The experiment plan's runner: baseline, LoRA training with interval WER on a speaker-disjoint val split, "
        "WER- and canary-guarded early stop, best adapter restored, tuned WER with paired-bootstrap 95% CIs; "
        "exact resume from checkpoints.", cmd_experiment))

    sweep = add_command(
        commands, "sweep", "the plan's run matrix: a grid of experiments, shared baselines, verdicts per seed group",
        "A grid over learning rates, steps, seeds, LoRA targets, ranks, variants and inits, and main manifests (a TOML "
        "file with "
        "[experiment] and [grid] tables, or repeated axis flags) runs as one experiment per combination in "
        "OUTPUT_DIR/runs/<what varies>. Finished runs are skipped, interrupted ones resumed, a failed one recorded "
        "while the sweep goes on; each baseline is decoded once per (manifest, eval contract) and shared. At the "
        "end: decide per group of runs that differ only by seed, and the report; sweep.json records it all.",
        cmd_sweep)
    sweep.add_argument("grid", nargs="?", default=None, metavar="GRID",
                       help="TOML grid file; flags given on the command line override its values")
    sweep.add_argument("--output-dir", required=True, help="the sweep folder (runs/, baselines/, sweep.json, reports)")
    sweep.add_argument("--resume", action="store_true",
                       help="continue the sweep in --output-dir: finished runs skipped, unfinished ones resumed")
    sweep.add_argument("--overwrite", action="store_true",
                       help="replace the sweep in --output-dir (only moonlora's files)")
    add_experiment_args(SweepArguments(sweep))

    decide_cmd = add_command(commands, "decide", "the plan's decision criteria over run folders",
                             "Primary (CI excludes 0), secondary as non-inferiority per extra manifest and canary, "
                             "H3's band, reproducibility across seeds and sanity, non-speech (words emitted where "
                             "nobody speaks) for runs made with --nonspeech-manifest, plus export parity for "
                             "runs made with --export (pass, fail, or inconclusive when the CI straddles the "
                             "margin), as a verdict; an unfinished run gets a line saying where it stands (died, "
                             "resumable from step N); refuses runs measured under different eval contracts.",
                             cmd_decide)
    decide_cmd.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by moonlora experiment")
    decide_cmd.add_argument("--margin", type=float, default=default_of(DecideConfig, "margin"),
                            help="non-inferiority margin (absolute WER) of the secondary criterion, per manifest; "
                                 "also how far a 0.0 baseline may rise before sanity fails")
    decide_cmd.add_argument("--h3-band", type=float, default=default_of(DecideConfig, "h3_band"),
                            help="H3: tuned main WER must improve or stay within this share of the baseline")
    decide_cmd.add_argument("--regression-factor", type=float, default=default_of(DecideConfig, "regression_factor"),
                            help="sanity fails when a manifest's WER exceeds its baseline times this")
    decide_cmd.add_argument("--nonspeech-margin", type=float, default=default_of(DecideConfig, "nonspeech_margin"),
                            help="non-speech: the CI high end of words per clip (tuned - baseline) on the "
                                 "--nonspeech-manifest must be at most this")
    add_json_arg(decide_cmd, "the verdicts")

    compare = add_command(
        commands, "compare", "whether B is as good as A: two transcribe folders of one manifest, clip by clip",
        "Checks the eval contracts (every differing field is named; --allow accepts one), pairs the clips, and "
        "gives a paired-bootstrap 95% CI of WER(B) - WER(A), how often the transcripts agree, and the clips that "
        "differ most. Exit code 0: B is non-inferior to A (the CI's high end is at most --margin), 1: it is not.",
        cmd_compare)
    compare.add_argument("a", metavar="A", help="reference folder written by moonlora transcribe --output-dir")
    compare.add_argument("b", metavar="B", help="candidate folder, the same manifest scored another way")
    compare.add_argument("--allow", action="append", default=[], metavar="FIELD",
                         help="accept a difference in this top-level contract field, e.g. runtime or "
                              "adapter_sha256 (repeatable)")
    compare.add_argument("--margin", type=float, default=DEFAULT_MARGIN,
                         help="non-inferiority margin on WER(B) - WER(A); 0.005 = 0.5 WER points")
    compare.add_argument("--top", type=int, default=DEFAULT_TOP, help="how many of the most different clips to show")
    add_json_arg(compare, "the comparison")

    report = add_command(commands, "report", "Test Matrix (Markdown) and an HTML page with plots from run folders",
                         "The plan's Test Matrix generated from run folders; both files land in RUNS_DIR unless "
                         "--out and --html say otherwise.", cmd_report)
    report.add_argument("runs_dir", metavar="RUNS_DIR", help="folder holding run folders")
    report.add_argument("--out", default=None, help="Markdown Test Matrix; none: RUNS_DIR/training_report.md")
    report.add_argument("--html", default=None, help="HTML page with plots; none: RUNS_DIR/report.html")
    add_overwrite_arg(report, "--out and --html")

    export = add_command(commands, "export", "the model a user ships: the run's adapter merged into its base model",
                         "--format hf merges the LoRA adapter (PEFT merge_and_unload) and writes a save_pretrained "
                         "folder (model, tokenizer, feature extractor, generation config) that from_pretrained and "
                         "--model DIR load; --format ort writes encoder_model.ort, decoder_model_merged.ort and "
                         "tokenizer.bin with the bundled base-en graphs' names, inputs/outputs and int8 scheme "
                         "(Moonshine base: the bundled graphs re-weighted; other shapes: moonlora's ONNX export), "
                         "for the moonshine-voice runtime; a Moonshine Streaming run gets the runtime's five "
                         "streaming graphs (frontend, encoder, adapter, cross_kv, decoder_kv .ort), "
                         "streaming_config.json and tokenizer.bin. Each folder gets manifest.json: source run and its eval "
                         "contracts, base, adapter and merged-weights hashes, precision and quantization, tool "
                         "versions.", cmd_export)
    export.add_argument("source", metavar="RUN_OR_ADAPTER",
                        help="a finished run's adapter (RUN, RUN/adapter, RUN/adapter-best or RUN/adapter-last: on "
                             "the run's own base model), a run whose training finished and whose --export failed "
                             "(the export is finished here, without retraining), or a plain adapter folder")
    export.add_argument("--out", required=True, help="a new folder for the exported model")
    export_defaults = ExportConfig()
    export.add_argument("--format", default=export_defaults.format, choices=list(ExportConfig.formats),
                        help="hf: merged transformers checkpoint; ort: int8 .ort graphs for the moonshine-voice "
                             "runtime; both: hf/ and ort/")
    export.add_argument("--rounding", default=export_defaults.rounding, choices=["stochastic", "nearest"],
                        help="int8 rounding of the merged weights (ort, Moonshine base): stochastic keeps small "
                             "LoRA changes unbiased; nearest drops every change under half a step. Moonshine "
                             "Streaming's graphs always round to nearest, per channel (measured best from a float "
                             "base, docs/benchmarks.md)")
    export.add_argument("--precision", default=export_defaults.precision, choices=list(ExportConfig.precisions),
                        help="of the ort graphs: int8 (what ships) or float32 (Moonshine Streaming, and moonlora's "
                             "ONNX route; the re-weighted bundled base-en graphs are int8 only)")
    export.add_argument("--model", default=export_defaults.model,
                        help="base model of an adapter folder (a run folder names its own); none: bundled:base-en")
    add_overwrite_arg(export, "--out")

    diagnose = add_command(
        commands, "diagnose", "duration profile, splits, problems and leakage of manifests",
        "Duration profile and train/val split tables (the experiment plan's layout), speakers and language, "
        "problems (missing or corrupt audio, empty text, clips under 1 s or over 30 s, format mix, duration "
        "mismatch, duplicates, transcripts that look un-normalized: mostly all caps, digits mixed with spelled-out "
        "numbers) and leakage across manifests.", cmd_diagnose)
    diagnose.add_argument("--manifests", nargs="+", required=True, help="one or more JSONL manifests")
    diagnose.add_argument("--max-seconds", type=float, required=True, help="duration cap used for the split table")
    diagnose.add_argument("--thresholds", type=float, nargs="+", default=list(default_of(DiagnoseConfig, "thresholds")),
                          help="duration thresholds (seconds) for the profile table")
    diagnose.add_argument("--seed", type=int, default=default_of(DiagnoseConfig, "seed"),
                          help="seed of the train/val split")
    diagnose.add_argument("--val-fraction", type=float, default=default_of(DiagnoseConfig, "val_fraction"),
                          help="share of clips for validation")
    diagnose.add_argument("--language", default=default_of(DiagnoseConfig, "language"),
                          help="ISO code of the transcripts; none: the one an import report beside the manifest "
                               "records (moonlora import --language), else unknown")
    add_json_arg(diagnose, "the whole report")

    synth = add_command(commands, "synth", "build a synthetic domain (espeak-ng voices) with train/test manifests",
                        "Templated text spoken by espeak-ng voices (pip-installed, no system package); train and "
                        "test voices disjoint; deterministic for a seed.", cmd_synth)
    synth_defaults = SynthConfig()
    synth.add_argument("--domain", default=synth_defaults.domain, choices=(*DOMAINS, NONSPEECH_DOMAIN),
                       help="registered domain; nonspeech: the non-speech canary (a fixed set of clips of silence, "
                            "hiss, noise, radio static, hum and tones; nonspeech.jsonl; --n and --test-fraction "
                            "do not apply)")
    synth.add_argument("--n", type=int, default=synth_defaults.n, help="number of utterances")
    synth.add_argument("--seed", type=int, default=synth_defaults.seed, help="seed of texts, voices, rates and pitches")
    synth.add_argument("--out", required=True,
                       help="output folder (clips/, train.jsonl, test.jsonl, synth_config.json)")
    synth.add_argument("--test-fraction", type=float,
                       default=inspect.signature(build_domain).parameters["test_fraction"].default,
                       help="share of utterances for the test voices")
    add_overwrite_arg(synth, "--out")

    add_import_command(commands)

    augment = add_command(commands, "augment", "domain-shifted copies of a manifest: noise, band-limit, speed",
                          "Copies go through the one audio pipeline, then speed, band and noise in that order; "
                          "the originals are only read.", cmd_augment)
    augment.add_argument("--manifest", required=True, help="JSONL manifest to copy (its files are only read)")
    augment.add_argument("--out", required=True, help="output folder (clips/, manifest.jsonl, augment_config.json)")
    augment.add_argument("--snr-db", type=float, default=default_of(AugmentConfig, "noise_snr_db"),
                         help="add noise at this SNR (dB); none: no noise")
    augment.add_argument("--noise-color", default=default_of(AugmentConfig, "noise_color"), choices=NOISE_COLORS,
                         help="spectrum of the added noise")
    augment.add_argument("--band", default=default_of(AugmentConfig, "band"), choices=tuple(BANDS),
                         help="band-limit like a phone or AM radio; none: full band")
    augment.add_argument("--speed", type=float, default=default_of(AugmentConfig, "speed"),
                         help="speed factor, e.g. 0.9 or 1.1; none: unchanged")
    augment.add_argument("--seed", type=int, default=default_of(AugmentConfig, "seed"), help="seed of the noise")
    add_overwrite_arg(augment, "--out")
    add_studio_command(commands)
    return parser


class SweepArguments:
    """`sweep` takes every experiment flag: an axis flag is repeatable (one run per value); any other
    flag is a setting all runs share and shows no default of its own (the experiment's applies)."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser

    def add_argument(self, *flags, **options):
        dest = options.get("dest") or flags[0].lstrip("-").replace("-", "_")
        if dest in RUN_CONTROL:
            return None
        options.update(default=argparse.SUPPRESS, required=False)
        if dest in AXES:
            options.update(action="append", help=f"{options['help']}; an axis, repeatable: one run per value "
                                                 "(default: the experiment's, one run)")
        else:
            options["help"] = f"{options['help']}; shared by every run (default: as in experiment)"
        return self.parser.add_argument(*flags, **options)


def add_setting(parser, name: str, help: str, **options) -> None:
    """Experiment flag `name` of configs.EXPERIMENT_FLAGS (and its aliases): dest, default and type come
    from the table and the config field it maps to."""
    flags = [f"--{flag.replace('_', '-')}" for flag in (name, *[a for a, n in FLAG_ALIASES.items() if n == name])]
    kind = flag_type(name)
    if kind is bool:
        options.setdefault("action", "store_true")
    elif kind is not tuple:
        options.setdefault("type", kind)
    if "default" not in options and "required" not in options:
        options["default"] = flag_default(name)
    parser.add_argument(*flags, dest=name, help=help, **options)


def add_experiment_args(experiment: argparse.ArgumentParser) -> None:
    """The experiment plan's flags keep their names; defaults and types follow the config dataclasses."""
    add_setting(experiment, "output_dir", "the run folder (refused if it holds a run)", required=True)
    add_setting(experiment, "dataset_path", "training manifest (its val split guides choices)", required=True)
    add_setting(experiment, "manifest_path", "main held-out manifest (scored before and after)", required=True)
    add_setting(experiment, "max_steps", "optimizer updates")
    add_setting(experiment, "learning_rate", "peak learning rate")
    add_setting(experiment, "eval_interval", "val-split WER every this many steps")
    add_setting(experiment, "max_seconds", "drop training clips longer than this")
    add_setting(experiment, "seed", "seed of the split, LoRA init and batches")
    add_setting(experiment, "wer_stop_threshold",
                "stop when val WER exceeds baseline val WER times this (e.g. 1.1); none: never (WER here and below: the "
                "primary metric, CER for --language zh/ja/ko/yue or --metric cer)")
    add_model_args(experiment, flag_default("model"))
    add_setting(experiment, "lora_r", "LoRA rank")
    add_setting(experiment, "lora_alpha", "LoRA scaling numerator")
    add_setting(experiment, "lora_dropout", "dropout on the LoRA input")
    add_setting(experiment, "target_modules",
                "comma-separated module names that get LoRA, or one preset of the model's family: all "
                "(q/k/v/o_proj, fc1, fc2 in encoder and decoder), decoder or encoder. Moonshine: decoder = "
                "the same in the decoder only, encoder = the encoder's self-attention and MLP; Moonshine "
                "Streaming: decoder = decoder self-attention q/k/v (the official fine-tuner's default), "
                "encoder = encoder self-attention q/k/v. With decoder the frozen encoder's output is "
                "computed once per clip and cached: about 3x faster training and less memory, but a "
                "higher WER on new voices, see docs/benchmarks.md",
                type=parse_targets, default=",".join(flag_default("target_modules")))
    add_setting(experiment, "lora_variant", "lora, or dora (PEFT use_dora: a learned magnitude per output row of "
                "each adapted weight; merges like LoRA)", choices=LORA_VARIANTS)
    add_setting(experiment, "init_lora_weights", "how the adapter starts (PEFT init_lora_weights): default or "
                "gaussian (B = 0), pissa (the top-r SVD of each weight, full SVD) or olora (QR); pissa and olora "
                "train on the residual weights and save the adapter as a plain LoRA of rank 2r for the original "
                "base", choices=LORA_INITS)
    add_setting(experiment, "train_batch_size", "training clips per micro-batch")
    add_setting(experiment, "grad_accum", "micro-batches per update")
    add_setting(experiment, "warmup_steps", "linear warmup, then linear decay to 0")
    add_setting(experiment, "mixed_precision", "auto: bf16 on a GPU that supports it, else fp32",
                choices=("auto", "no", "bf16"))
    add_setting(experiment, "gradient_checkpointing",
                "recompute the encoder's layers in backward instead of keeping their activations: "
                "same loss and gradients, less memory (worst batch of 8 x 25 s clips on CPU: 7.0 -> "
                "3.8 GB), 10-20 percent slower; auto: on the CPU, for micro-batches over 60 s of audio "
                "when encoder weights train", choices=("auto", "on", "off"))
    add_setting(experiment, "val_fraction", "share of training clips held out as the val split")
    add_setting(experiment, "extra_manifest", "secondary held-out manifest (repeatable)", action="append", default=[])
    add_setting(experiment, "canary_manifest", "general speech that must not get worse")
    add_setting(experiment, "canary_margin", "stop when canary WER rises by more than this")
    add_setting(experiment, "nonspeech_manifest", "clips without speech (moonlora synth --domain nonspeech, or "
                "recorded room noise; no transcripts): words emitted per clip and share of clips with text, "
                "baseline vs tuned with paired-bootstrap CIs; decide's non-speech criterion")
    add_setting(experiment, "replay_manifest", "general speech mixed into training")
    add_setting(experiment, "replay_ratio", "share of training clips from --replay-manifest")
    add_setting(experiment, "group_by_length", "batch clips of similar duration (each epoch: sorted by duration, "
                "batches shuffled), as transformers' group_by_length and moonshine_voice.lora do: less padding, "
                "and Moonshine Streaming's encoder then trains in exact padded batches instead of clip by clip")
    add_setting(experiment, "log_manifest_interval_wer",
                "also log main-manifest WER at intervals (plots only, never used for choices)")
    add_setting(experiment, "export", "at the end, export the chosen adapter as int8 .ort graphs (export/ort/), score "
                "them on the main manifest and canary, and record export parity; none: no export", choices=["ort"])
    add_setting(experiment, "export_margin",
                "export parity holds when the CI high end of WER(export) - WER(torch) is at most this")
    add_setting(experiment, "select", "which adapter becomes adapter/ and the tuned scores: best (lowest val WER) or "
                "last (after the final update); both are kept and scored on the main manifest",
                choices=["best", "last"])
    add_setting(experiment, "min_val_clips", "refuse a val split smaller than this (it drives the best step and "
                "early stops)")
    add_setting(experiment, "allow_leakage", "accept training audio, transcripts or speakers that an evaluated "
                "manifest shares (refused otherwise, naming the rows)")
    add_setting(experiment, "decode_batch_size", "clips per decode batch (baseline, interval and tuned WER)")
    add_setting(experiment, "num_beams", "1 = greedy search")
    add_setting(experiment, "repetition_guard", GUARD_HELP)
    add_setting(experiment, "device", DEVICE_HELP)
    add_encoder_arg(experiment)
    add_rms_arg(experiment)
    add_setting(experiment, "language", LANGUAGE_HELP)
    add_setting(experiment, "metric", METRIC_HELP, choices=list(METRIC_NAMES))
    add_setting(experiment, "resume", "continue the run in --output-dir")
    add_setting(experiment, "overwrite", "replace the run in --output-dir (only a moonlora run folder)")


# --- the README's commands table ------------------------------------------------------------------------------------


def _flag_cell(action: argparse.Action) -> str:
    names = " / ".join(action.option_strings) or (action.metavar or action.dest.upper())
    if action.choices:
        names += " {" + ",".join(str(choice) for choice in action.choices) + "}"
    if action.nargs in ("+", "*"):
        names += " ..."
    return f"`{markdown.text(names)}`"


def _flag_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = ["| flag | default | what it does |", "| --- | --- | --- |"]
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue  # -h/--help and the command slot
        shown = "as in experiment" if action.default is argparse.SUPPRESS else default_text(action)
        rows.append(f"| {_flag_cell(action)} | {markdown.text(shown)} | {markdown.text(action.help)} |")
    return rows


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the order `--help` lists them."""
    (slot,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return [(choice.dest, choice.help, slot.choices[choice.dest]) for choice in slot._choices_actions]


def commands_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The README's commands section, rendered from the parser (tests/test_cli_light.py compares them)."""
    parser = parser or build_parser()
    commands = _subcommands(parser)
    lines = ["| command | what it does |", "| --- | --- |"]
    lines += [f"| [`moonlora {name}`](#moonlora-{name}) | {markdown.text(summary)} |" for name, summary, _ in commands]
    lines += ["", "Options of `moonlora` itself go before the command (`moonlora --quiet synth ...`):", ""]
    lines += _flag_table(parser)
    for name, _, sub in commands:
        lines += ["", f"### `moonlora {name}`", "", markdown.text(sub.description), ""]
        lines += _flag_table(sub)
    lines += ["", "### Exit codes", ""]
    lines += [f"- `{code}`: {meaning}" for code, meaning in EXIT_CODES]
    return "\n".join(lines) + "\n"


# --- entry point ----------------------------------------------------------------------------------------------------


def _interrupt_on_sigterm():
    """SIGTERM (timeout, kill, docker stop, Slurm) is handled like Ctrl-C; a second one terminates at once.

    Returns the handler to restore, or None where signals cannot be handled (not the main thread).
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return signal.SIG_DFL if previous is None else previous


def run_log(args: argparse.Namespace | None) -> Path | None:
    """The file that keeps the failed run's record (experiment: the run record; sweep: sweep.json), if written."""
    for folder in (getattr(args, "output_dir", None), getattr(args, "out", None)):
        for name in (METRICS_FILE, "sweep.json"):
            if folder and (Path(folder) / name).is_file():
                return Path(folder) / name
    return None


def bug_line(error: BaseException, args: argparse.Namespace | None) -> str:
    """The line after a bug's traceback: what happened, that it is moonlora's fault, where the log is."""
    log = run_log(args)
    where = f"the run's log (with this traceback) is {log}" if log else "no run log was written"
    return (f"moonlora: bug: {type(error).__name__}: {one_line(error)} — this is a bug in moonlora, not in your "
            f"input; please report it with the traceback above; {where}")


def bug(error: BaseException, args: argparse.Namespace | None) -> int:
    traceback.print_exc()
    print(bug_line(error, args), file=sys.stderr)
    return BUG_EXIT


def main(argv: list[str] | None = None) -> int:
    previous = _interrupt_on_sigterm()
    args = None
    try:
        argv = sys.argv[1:] if argv is None else argv
        args = build_parser().parse_args(argv)
        args.given_flags = {token.split("=")[0] for token in argv if token.startswith("--")}
        args.argv = list(argv)
        return args.handler(args)
    except USER_ERRORS as error:
        print(f"moonlora: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("moonlora: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRNOS:
            return bug(error, args)
        print(f"moonlora: error: {error.filename or 'a file'}: {error.strerror} ({ENVIRONMENT_ERRNOS[error.errno]})",
              file=sys.stderr)
        return 2
    except Exception as error:  # not moonlora's own error type: a bug, keep the traceback
        return bug(error, args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
