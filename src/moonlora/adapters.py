"""Which run an adapter belongs to: one answer for transcribe, export and every command that takes one.

`RUN`, `RUN/adapter`, `RUN/adapter-best` and `RUN/adapter-last` name a run's adapter and resolve
the same way: the adapter folder, the run folder, which of the run's candidates it is, and the
run's ExperimentConfig (its base model, audio and decode settings). Any other folder holding
adapter_config.json is a plain PEFT adapter that no run owns. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moonlora.configs import ExperimentConfig
from moonlora.runfolder import (ADAPTER_DIR, CANDIDATE_ADAPTER_DIRS, CONFIG_FILE, METRICS_FILE, RunRecordError,
                                read_config_dict)

ADAPTER_CONFIG = "adapter_config.json"  # what PEFT's save_pretrained writes into every adapter folder


class AdapterError(ValueError):
    """A path that names neither a run nor an adapter folder (one line, naming it)."""


@dataclass(frozen=True)
class ResolvedAdapter:
    adapter_dir: Path  # the folder PEFT loads
    run_dir: Path | None  # the run it belongs to; None for a plain adapter folder
    which: str | None  # the run's candidate: "best" or "last" (RUN and RUN/adapter: the selected one)
    config: ExperimentConfig | None  # the run's settings: base model, audio, decode

    @property
    def selected(self) -> bool:
        """This is the run's adapter/ (its tuned scores are this adapter's)."""
        return self.config is not None and self.which == self.config.select


def is_run_folder(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() or (folder / METRICS_FILE).is_file()


def run_config(run_dir: Path) -> ExperimentConfig:
    """The run's ExperimentConfig from its experiment_config.json (one-line error when unusable)."""
    data = read_config_dict(run_dir)
    try:
        return ExperimentConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise RunRecordError(f"{run_dir / CONFIG_FILE}: not a run config of this moonlora ({error})") from None


def resolve_adapter(path: str | Path) -> ResolvedAdapter:
    """RUN, RUN/adapter, RUN/adapter-best, RUN/adapter-last, or a plain PEFT adapter folder."""
    folder = Path(path)
    if is_run_folder(folder):
        run_dir, name = folder, ADAPTER_DIR
    elif folder.name in (ADAPTER_DIR, *CANDIDATE_ADAPTER_DIRS.values()) and is_run_folder(folder.parent):
        run_dir, name = folder.parent, folder.name
    elif (folder / ADAPTER_CONFIG).is_file():
        return ResolvedAdapter(folder, None, None, None)
    else:
        raise AdapterError(f"{folder}: neither a run folder ({CONFIG_FILE}) nor an adapter folder ({ADAPTER_CONFIG}); "
                           f"pass RUN, RUN/{ADAPTER_DIR}, RUN/{CANDIDATE_ADAPTER_DIRS['best']}, "
                           f"RUN/{CANDIDATE_ADAPTER_DIRS['last']} or a PEFT adapter folder")
    config = run_config(run_dir)
    which = next((key for key, value in CANDIDATE_ADAPTER_DIRS.items() if value == name), config.select)
    return ResolvedAdapter(run_dir / name, run_dir, which, config)
