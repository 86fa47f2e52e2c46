"""`moonlora transcribe`: a model (and adapter) on a whole manifest, written to a folder.

Loads without torch: the model stack is imported inside `run_transcribe`, after the output
folder has been checked, so a refused --output-dir costs no model load.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from moonlora.adapters import resolve_adapter
from moonlora.configs import TranscribeConfig
from moonlora.outputs import check_output_dir, claim_output_dir, write_json
from moonlora.runfolder import SUMMARY_FILE, TRANSCRIPTS_FILE
from moonlora.runfolder import CONFIG_FILE as CONFIG_OF_RUN
from moonlora.errors import InputError

if TYPE_CHECKING:
    from moonlora.eval.evaluate import EvalResult

__all__ = ["TranscribeConfig", "check_output", "run_transcribe", "print_summary", "summary_table", "with_run_settings"]

CONFIG_FILE = "transcribe_config.json"
OUTPUT_KIND = "transcribe"
OUTPUT_ENTRIES = (TRANSCRIPTS_FILE, SUMMARY_FILE, CONFIG_FILE)


def with_run_settings(config: TranscribeConfig, given: set[str]) -> TranscribeConfig:
    """`transcribe --adapter` of a run's adapter measures under the run's audio and decode settings
    (and its base model); a flag the user gave that contradicts them is refused, naming both."""
    if config.adapter is None:
        return config
    resolved = resolve_adapter(config.adapter)
    if resolved.config is None:  # a plain adapter folder: the flags say how to score it
        return config
    run = resolved.config
    source = resolved.run_dir / CONFIG_OF_RUN
    current = {"--model": (config.model, run.model),
               "--rms-target-dbfs": (config.audio.rms_target_dbfs, run.audio.rms_target_dbfs),
               "--num-beams": (config.decode.num_beams, run.decode.num_beams),
               "--dtype": (config.decode.dtype, run.decode.dtype),
               "--language": (config.scoring.language, run.scoring.language),
               "--metric": (config.scoring.metric, run.scoring.metric)}
    for flag, (given_value, run_value) in current.items():
        if flag in given and given_value != run_value:
            raise InputError(f"{flag} {given_value} conflicts with the run this adapter comes from ({source}: "
                             f"{run_value}); drop {flag} to score the adapter under the run's own settings")
    decode = replace(config.decode, **run.decode.result_dict())
    if "--repetition-guard" in given:  # a decode guard the user turns on or off for this scoring (contract-recorded)
        decode = replace(decode, repetition_guard=config.decode.repetition_guard)
    return replace(config, adapter=str(resolved.adapter_dir), model=run.model,
                   audio=replace(config.audio, rms_target_dbfs=run.audio.rms_target_dbfs), decode=decode,
                   scoring=run.scoring)


def check_output(config: TranscribeConfig) -> Path:
    """Refuse an output folder that is a file or holds results, before anything is loaded or decoded."""
    return check_output_dir(config.resolved_output_dir(), "--output-dir", OUTPUT_KIND, OUTPUT_ENTRIES,
                            config.overwrite)


def run_transcribe(config: TranscribeConfig, progress: bool = True) -> tuple[EvalResult, Path]:
    out_dir = check_output(config)
    from moonlora.eval.evaluate import evaluate_manifest, write_eval
    from moonlora.data.manifest import load_manifest
    from moonlora.model.families import check_family_settings, family_for
    from moonlora.model.loading import load_model, model_skeleton
    from moonlora.provenance import provenance

    skeleton = model_skeleton(config.model)  # the family's limits, from config.json, before any weights load
    if skeleton is not None:
        check_family_settings(family_for(skeleton.config.model_type), encoder=config.decode.encoder)
    manifest = load_manifest(config.manifest, config.scoring.language, nonspeech=config.nonspeech)
    loaded = load_model(config.model, device=config.decode.device, dtype=config.decode.dtype, adapter=config.adapter)
    loaded.decoder().check(config.decode)  # whatever runs it (torch or onnxruntime) takes these settings
    result = evaluate_manifest(loaded, manifest, config.audio, config.decode, progress=progress,
                               scoring=config.scoring)
    # Earlier results go only now that the new ones are ready, and only the files transcribe wrote.
    claim_output_dir(out_dir, "--output-dir", OUTPUT_KIND, OUTPUT_ENTRIES, config.overwrite)
    write_json(out_dir / CONFIG_FILE, {**config.to_dict(), "output_dir": str(out_dir)}, command=OUTPUT_KIND)
    write_eval(result, out_dir, extra={"model": config.model, "adapter": config.adapter, "provenance": provenance()})
    return result, out_dir


def summary_table(result: EvalResult, title: str = "moonlora transcribe") -> Table:
    """WER and CER both; the title names the language and the primary metric (the contract's)."""
    title += f" (language {result.contract.language}, primary metric {result.metric.label})"
    table = Table(title=title, show_header=True)
    for column in ("clips", "hours", "WER", "CER", "skipped", "empty", "cap hits", "loops", "long loops", "RTFx"):
        table.add_column(column, justify="right", no_wrap=True)
    flags = result.flag_counts()
    rtfx = result.audio_seconds / result.decode_seconds if result.decode_seconds else float("nan")
    table.add_row(
        str(len(result.clips)), f"{result.audio_seconds / 3600:.3f}", f"{result.corpus.wer:.4f}",
        f"{result.corpus.cer:.4f}", str(len(result.skipped)), str(flags["empty_hypothesis"]),
        str(flags["token_cap_hit"]), str(flags["repeat_loop"]), str(flags["long_loop"]), f"{rtfx:.1f}x",
    )
    return table


def print_summary(result: EvalResult, out_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(result))
    if result.nonspeech:
        console.print(f"non-speech: {result.words_per_clip():.2f} words per clip, text on "
                      f"{result.text_share():.0%} of the clips (WER does not apply)", highlight=False)
    console.print(f"eval contract {result.contract.fingerprint}", highlight=False)
    for row in result.skipped[:20]:
        console.print(f"[yellow]skipped[/yellow] {row}", highlight=False)
    if len(result.skipped) > 20:
        console.print(f"... and {len(result.skipped) - 20} more skipped rows (see summary.json)")
    console.print(f"results in {out_dir}", highlight=False)
