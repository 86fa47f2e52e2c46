"""`moonlora transcribe`: a model (and adapter) on a whole manifest, written to a folder."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from moonlora.audio import AudioConfig
from moonlora.configs import DEFAULT_MODEL, DecodeConfig
from moonlora.evaluate import EvalResult, evaluate_manifest, write_eval
from moonlora.manifest import load_manifest
from moonlora.model import load_model
from moonlora.provenance import provenance

CONFIG_FILE = "transcribe_config.json"


class OutputExists(FileExistsError):
    """Refusing to overwrite earlier results."""


@dataclass(frozen=True)
class TranscribeConfig:
    manifest: str
    model: str = DEFAULT_MODEL
    adapter: str | None = None
    output_dir: str | None = None  # default: outputs/transcribe/<manifest>-<time>
    overwrite: bool = False
    audio: AudioConfig = field(default_factory=AudioConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return Path("outputs") / "transcribe" / f"{Path(self.manifest).stem}-{stamp}"

    def to_dict(self) -> dict:
        return asdict(self)


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a folder that already holds results, before any slow work starts."""
    if (out_dir / "summary.json").exists() and not overwrite:
        raise OutputExists(f"{out_dir}: already holds results (summary.json); pick another --output-dir or pass --overwrite")


def run_transcribe(config: TranscribeConfig, progress: bool = True) -> tuple[EvalResult, Path]:
    manifest = load_manifest(config.manifest)
    out_dir = config.resolved_output_dir()
    check_output_dir(out_dir, config.overwrite)
    loaded = load_model(config.model, device=config.decode.device, dtype=config.decode.dtype, adapter=config.adapter)
    result = evaluate_manifest(loaded, manifest, config.audio, config.decode, progress=progress)
    resolved = {**config.to_dict(), "output_dir": str(out_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(json.dumps(resolved, indent=2) + "\n")
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
