"""The experiment plan's checklist, run inside every experiment and recorded in its run record.

- val split size: a val split of a few clips silently drives every choice (stop step, best
  adapter), so one below `min_val_clips` is refused;
- leakage: training audio, transcripts or speakers that also appear in an evaluated manifest
  make the tuned WER a memory test; refused with the rows named unless allowed;
- headroom: a main baseline WER under 5 % leaves little room to show a gain (the plan's
  LibriSpeech-clean finding): a warning;
- data sufficiency: fewer than 200 training clips (the plan's 200-500 target): a warning.
Torch-free: it runs before the folder is touched or a model loaded.
"""

from __future__ import annotations

from moonlora.data.leakage import Leak, find_leaks
from moonlora.data.manifest import Manifest
from moonlora.errors import InputError, MoonloraError
from moonlora.runfolder import Checklist, HeadroomCheck, LeakageCheck, SufficiencyCheck, ValSplitCheck

HEADROOM_WER = 0.05  # the plan: "flag if < 5%"
SUFFICIENT_TRAIN_CLIPS = 200  # the plan: "minimum viable sample count (e.g., 200-500)"
MAX_NAMED_ROWS = 3


class LeakageError(MoonloraError, ValueError):
    """Training data shared with an evaluated manifest (one line, naming the rows)."""


def check_val_split(val_clips: int, min_val_clips: int, dataset_path: str) -> ValSplitCheck:
    if val_clips < min_val_clips:
        raise InputError(f"{dataset_path}: the val split has {val_clips} clip(s), fewer than --min-val-clips "
                         f"{min_val_clips}; every choice (best step, early stop) would rest on it — add clips, raise "
                         "--val-fraction, or lower --min-val-clips knowingly")
    return ValSplitCheck(clips=val_clips, minimum=min_val_clips)


def training_leaks(training: dict[str, Manifest], evaluated: dict[str, Manifest], language: str) -> list[Leak]:
    """Audio, transcripts and speakers shared between a training-side and an evaluated manifest."""
    leaks = []
    for train_name, train_manifest in training.items():
        for eval_name, eval_manifest in evaluated.items():
            leaks += find_leaks({train_name: train_manifest, eval_name: eval_manifest}, language)
    return leaks


def _rows(leak: Leak, paths: dict[str, str]) -> str:
    a, b = leak.manifests
    shown = ", ".join(f"{paths[a]}:{line_a} = {paths[b]}:{line_b}" for _, line_a, line_b in leak.examples)
    more = f" and {leak.shared - len(leak.examples)} more" if leak.shared > len(leak.examples) else ""
    return f"{leak.shared} {leak.kind}(s) shared by {a} and {b} ({shown}{more})"


def leakage_message(leaks: list[Leak], paths: dict[str, str]) -> str:
    return ("leakage between training and evaluated data: " + "; ".join(_rows(leak, paths) for leak in leaks)
            + " — remove those rows (moonlora diagnose lists them all), or pass --allow-leakage to accept it")


def leakage_record(leaks: list[Leak], allowed: bool, checked: list[str]) -> LeakageCheck:
    return LeakageCheck(checked=checked, allowed=allowed,
                        found=[{"kind": leak.kind, "manifests": list(leak.manifests), "shared": leak.shared,
                                "examples": [list(example) for example in leak.examples]} for leak in leaks])


def headroom(main_baseline_wer: float, metric: str = "wer") -> HeadroomCheck:
    """`main_baseline_wer` is the run's primary metric (`metric`: wer, or cer for a CER run)."""
    return HeadroomCheck(main_baseline_wer=main_baseline_wer, threshold=HEADROOM_WER,
                         ok=main_baseline_wer >= HEADROOM_WER, metric=metric)


def sufficiency(train_clips: int) -> SufficiencyCheck:
    return SufficiencyCheck(train_clips=train_clips, target=SUFFICIENT_TRAIN_CLIPS,
                            ok=train_clips >= SUFFICIENT_TRAIN_CLIPS)


def warnings(checklist: Checklist) -> list[str]:
    """The checklist's warnings as one-line notes."""
    notes = []
    room = checklist.headroom
    if room and not room.ok:
        notes.append(f"headroom: main baseline {room.metric.upper()} {room.main_baseline_wer:.4f} is below {room.threshold:.0%}; "
                     "little room to show a gain (the plan's clean-set saturation) — add a harder or domain manifest")
    data = checklist.sufficiency
    if data and not data.ok:
        notes.append(f"data sufficiency: {data.train_clips} training clips, below the plan's target of "
                     f"{data.target}; results may not hold on more data")
    leakage = checklist.leakage
    if leakage and leakage.found:
        notes.append(f"leakage accepted (--allow-leakage): {len(leakage.found)} kind(s) of shared training and "
                     "evaluated data; the tuned WER partly measures memory")
    return notes
