"""`moonlora transcribe`: a model (and adapter) on a whole manifest, written to a folder.

Loads without torch: the model stack is imported inside `run_transcribe`, after the output
folder has been checked, so a refused --output-dir costs no model load.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from moonlora.configs import ExperimentConfig, TranscribeConfig
from moonlora.outputs import check_output_dir, claim_output_dir, write_json
from moonlora.runfolder import ADAPTER_DIR, read_config_dict
from moonlora.runfolder import CONFIG_FILE as CONFIG_OF_RUN
from moonlora.errors import InputError

if TYPE_CHECKING:
    from moonlora.eval.evaluate import EvalResult

__all__ = ["TranscribeConfig", "check_output", "run_transcribe", "print_summary", "summary_table", "with_run_settings"]

CONFIG_FILE = "transcribe_config.json"
OUTPUT_KIND = "transcribe"
OUTPUT_ENTRIES = ("transcripts.jsonl", "summary.json", CONFIG_FILE)


@dataclass(frozen=True)
class RunSettings:
    """What a run folder fixes for anyone scoring its adapter: the parity the plan's protocol asks for."""

    run_dir: Path
    adapter: str  # the adapter folder itself (a run folder given as --adapter means its adapter/)
    model: str
    rms_target_dbfs: float | None
    decode: dict  # DecodeConfig.result_fields of the run


def run_settings(adapter: str | None) -> RunSettings | None:
    """The settings of the run an adapter folder belongs to (RUN/adapter, RUN/adapter-best, ...), or None
    for an adapter that no moonlora run folder holds."""
    if adapter is None:
        return None
    folder = Path(adapter)
    run_dir = folder if (folder / CONFIG_OF_RUN).is_file() else folder.parent
    if not (run_dir / CONFIG_OF_RUN).is_file():
        return None
    config = ExperimentConfig.from_dict(read_config_dict(run_dir), source=str(run_dir / CONFIG_OF_RUN))
    chosen = folder / ADAPTER_DIR if run_dir == folder else folder
    return RunSettings(run_dir, str(chosen), config.model, config.audio.rms_target_dbfs,
                       config.decode.result_dict())


def with_run_settings(config: TranscribeConfig, given: set[str]) -> TranscribeConfig:
    """`transcribe --adapter` of a run's adapter measures under the run's audio and decode settings
    (and its base model); a flag the user gave that contradicts them is refused, naming both."""
    settings = run_settings(config.adapter)
    if settings is None:
        return config
    source = settings.run_dir / CONFIG_OF_RUN
    current = {"--model": (config.model, settings.model),
               "--rms-target-dbfs": (config.audio.rms_target_dbfs, settings.rms_target_dbfs),
               "--num-beams": (config.decode.num_beams, settings.decode["num_beams"]),
               "--dtype": (config.decode.dtype, settings.decode["dtype"])}
    for flag, (given_value, run_value) in current.items():
        if flag in given and given_value != run_value:
            raise InputError(f"{flag} {given_value} conflicts with the run this adapter comes from ({source}: "
                             f"{run_value}); drop {flag} to score the adapter under the run's own settings")
    decode = replace(config.decode, **settings.decode)
    return replace(config, adapter=settings.adapter, model=settings.model,
                   audio=replace(config.audio, rms_target_dbfs=settings.rms_target_dbfs), decode=decode)


def check_output(config: TranscribeConfig) -> Path:
    """Refuse an output folder that is a file or holds results, before anything is loaded or decoded."""
    return check_output_dir(config.resolved_output_dir(), "--output-dir", OUTPUT_KIND, OUTPUT_ENTRIES,
                            config.overwrite)


def run_transcribe(config: TranscribeConfig, progress: bool = True) -> tuple[EvalResult, Path]:
    out_dir = check_output(config)
    from moonlora.eval.evaluate import evaluate_manifest, write_eval
    from moonlora.data.manifest import load_manifest
    from moonlora.model.loading import load_model
    from moonlora.provenance import provenance

    manifest = load_manifest(config.manifest)
    loaded = load_model(config.model, device=config.decode.device, dtype=config.decode.dtype, adapter=config.adapter)
    result = evaluate_manifest(loaded, manifest, config.audio, config.decode, progress=progress)
    # Earlier results go only now that the new ones are ready, and only the files transcribe wrote.
    claim_output_dir(out_dir, "--output-dir", OUTPUT_KIND, OUTPUT_ENTRIES, config.overwrite)
    write_json(out_dir / CONFIG_FILE, {**config.to_dict(), "output_dir": str(out_dir)}, command=OUTPUT_KIND)
    write_eval(result, out_dir, extra={"model": config.model, "adapter": config.adapter, "provenance": provenance()})
    return result, out_dir


def summary_table(result: EvalResult, title: str = "moonlora transcribe") -> Table:
    table = Table(title=title, show_header=True)
    for column in ("clips", "hours", "WER", "CER", "skipped", "empty", "cap hits", "loops", "RTFx"):
        table.add_column(column, justify="right", no_wrap=True)
    flags = result.flag_counts()
    rtfx = result.audio_seconds / result.decode_seconds if result.decode_seconds else float("nan")
    table.add_row(
        str(len(result.clips)), f"{result.audio_seconds / 3600:.3f}", f"{result.corpus.wer:.4f}",
        f"{result.corpus.cer:.4f}", str(len(result.skipped)), str(flags["empty_hypothesis"]),
        str(flags["token_cap_hit"]), str(flags["repeat_loop"]), f"{rtfx:.1f}x",
    )
    return table


def print_summary(result: EvalResult, out_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    console.print(summary_table(result))
    console.print(f"eval contract {result.contract.fingerprint}", highlight=False)
    for row in result.skipped[:20]:
        console.print(f"[yellow]skipped[/yellow] {row}", highlight=False)
    if len(result.skipped) > 20:
        console.print(f"... and {len(result.skipped) - 20} more skipped rows (see summary.json)")
    console.print(f"results in {out_dir}", highlight=False)
