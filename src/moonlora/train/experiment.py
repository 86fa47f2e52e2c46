"""`moonlora experiment`: the seed plan's runner — baseline, LoRA training, tuned, verdict data.

Every WER in a run goes through `evaluate_manifest` with the run's one AudioConfig and
DecodeConfig, so the plan's parity rules hold by construction. The adapter and the stop step
are chosen on the val split (and the canary), never on the main manifest, which is scored at
baseline and once at the end.

The run folder is written only through `moonlora.runfolder`: the run record exists (status
`running`) before the model loads, is updated atomically at each phase and checkpoint, and
holds the final status on any exit. Folder rules:
- a new run needs an empty or new `--output-dir`;
- `--resume` continues the run in it (same settings), from its newest complete checkpoint,
  reusing the baseline already scored;
- a run that failed or was stopped before training started (setup or baseline) may be rerun
  in the same folder with corrected settings: moonlora replaces its own files there and says so;
- `--overwrite` replaces a moonlora run folder (only moonlora's files), never another folder.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shlex
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from moonlora.comparison import Comparison, parity_outcome
from moonlora.train import checklist
from moonlora.configs import ExperimentConfig
from moonlora.eval.contract import EvalContract, require_comparable
from moonlora.eval.evaluate import EvalResult, evaluate_manifest, read_eval, write_eval
from moonlora.model.device import check_device
from moonlora.model.families import check_family_settings, family_for
from moonlora.model.lora import (attach_lora, check_targets, lora_delta_norm, lora_is_identity, trainable_summary,
                                  write_adapter)
from moonlora.data.manifest import Manifest, Utterance, load_manifest
from moonlora.model.loading import LoadedModel, load_model, model_skeleton, require_torch
from moonlora.outputs import OutputError, claim_output_dir
from moonlora.provenance import provenance
from moonlora.runfolder import (ADAPTER_DIR, BASELINE_DIR, CANDIDATE_ADAPTER_DIRS, CANDIDATE_SCORE_DIRS, CANDIDATES,
                                Candidate, Checklist, DataReport, DatasetInfo, DurationFilter, EvalSetInfo, EvalSummary,
                                EXPORT_DIR, ExportParity, LeakageCheck, Leg, LOCK_FILE, LoraSummary, NONSPEECH,
                                NonspeechSide, NonspeechSummary, ParitySet,
                                ReplayInfo, RUN_ENTRIES, RUN_KIND, RunLock, RunRecord, SplitInfo, TENSORBOARD_DIR,
                                TrainingSummary, TUNED_DIR, find_resume_checkpoint, is_main_process, now_iso,
                                remove_path, swap_in_folder, write_config_dict, write_record)
from moonlora.data.splits import split_train_val
from moonlora.eval.metrics import metric_for
from moonlora.eval.stats import compare_nonspeech, compare_results
from moonlora.train.loop import IntervalEval, TrainResult, TrainState, TrainStream, adapter_loaded, train
from moonlora.train.output_dir import check_resumable, validate_run_dir
from moonlora.errors import InputError


def say(line: str) -> None:
    """A one-line finding for the console (stderr, so it never mixes with tables on stdout)."""
    print(f"moonlora: {line}", file=sys.stderr, flush=True)


def filter_by_duration(utterances: list[Utterance], max_seconds: float | None) -> tuple[list[Utterance], DurationFilter]:
    """Keep clips up to max_seconds; report what was dropped in clips and hours."""
    kept, dropped = [], []
    for utterance in utterances:
        (kept if max_seconds is None or utterance.duration <= max_seconds else dropped).append(utterance)
    return kept, DurationFilter(max_seconds=max_seconds, kept_clips=len(kept),
                                kept_hours=sum(u.duration for u in kept) / 3600, dropped_clips=len(dropped),
                                dropped_hours=sum(u.duration for u in dropped) / 3600)


@dataclass
class RunData:
    train: list[Utterance]
    replay: list[Utterance]
    eval_sets: dict[str, Manifest]  # "val", "main", "extra-<stem>", "canary"
    report: DataReport
    checklist: Checklist  # the plan's checklist items known before the model loads (val split, leakage)
    nonspeech: Manifest | None = None  # --nonspeech-manifest: scored by the words emitted, at baseline and tuned


def check_leakage(config: ExperimentConfig, train: list[Utterance], replay: list[Utterance],
                  eval_sets: dict[str, Manifest]) -> LeakageCheck:
    """Refuse training data that an evaluated manifest shares (unless --allow-leakage); the record."""
    training = {"train": Manifest(path=Path(config.dataset_path), utterances=train)}
    if replay:
        training["replay"] = Manifest(path=Path(config.replay_manifest), utterances=replay)
    evaluated = {name: m for name, m in eval_sets.items() if name != "val"}
    leaks = checklist.training_leaks(training, evaluated, config.scoring.language)
    if leaks and not config.allow_leakage:
        paths = {name: str(m.path) for name, m in {**training, **evaluated}.items()}
        raise checklist.LeakageError(checklist.leakage_message(leaks, paths))
    return checklist.leakage_record(leaks, config.allow_leakage, [f"{a} x {b}" for a in training for b in evaluated])


def load_run_data(config: ExperimentConfig) -> RunData:
    language = config.scoring.language
    dataset = load_manifest(config.dataset_path, language)
    kept, filtering = filter_by_duration(dataset.utterances, config.max_seconds)
    if len(kept) < 2:
        raise InputError(f"{config.dataset_path}: {len(kept)} clip(s) left after --max-seconds {config.max_seconds}; "
                         "need at least 2 (train and val)")
    split = split_train_val(kept, config.val_fraction, config.train.seed)
    val_split = checklist.check_val_split(len(split.val), config.min_val_clips, config.dataset_path)
    eval_sets = {"val": Manifest(path=Path(f"{config.dataset_path}#val"), utterances=split.val),
                 "main": load_manifest(config.manifest_path, language)}
    for path in config.extra_manifests:
        eval_sets[f"extra-{Path(path).stem}"] = load_manifest(path, language)
    if config.canary_manifest:
        eval_sets["canary"] = load_manifest(config.canary_manifest, language)
    replay = load_manifest(config.replay_manifest, language).utterances if config.replay_manifest else []
    nonspeech = load_manifest(config.nonspeech_manifest, language, nonspeech=True) if config.nonspeech_manifest else None
    checks = Checklist(val_split=val_split, leakage=check_leakage(config, split.train, replay, eval_sets))
    report = DataReport(
        dataset=DatasetInfo(path=config.dataset_path, clips=len(dataset.utterances), skipped=len(dataset.skipped),
                            skipped_by_kind=dataset.skipped_by_kind(), sha256=dataset.content_hash),
        filter=filtering, split=SplitInfo(**split.to_dict()),
        eval_sets={name: EvalSetInfo(path=str(m.path), clips=len(m.utterances), hours=m.total_seconds / 3600,
                                     skipped=len(m.skipped), skipped_by_kind=m.skipped_by_kind(), sha256=m.content_hash)
                   for name, m in {**eval_sets, **({NONSPEECH: nonspeech} if nonspeech else {})}.items()},
        replay=ReplayInfo(path=config.replay_manifest, clips=len(replay)),
    )
    return RunData(split.train, replay, eval_sets, report, checks, nonspeech)


def data_notes(report: DataReport) -> list[str]:
    """What the data loading skipped or filtered, by kind, with counts (and hours where known)."""
    notes = []
    dataset = report.dataset
    if dataset.skipped:
        kinds = ", ".join(f"{kind} {count}" for kind, count in dataset.skipped_by_kind.items())
        notes.append(f"training manifest {dataset.path}: skipped {dataset.skipped} row(s) ({kinds})")
    dropped = report.filter
    if dropped.dropped_clips:
        notes.append(f"--max-seconds {dropped.max_seconds:g}: dropped {dropped.dropped_clips} training clip(s) "
                     f"({dropped.dropped_hours:.3f} h); kept {dropped.kept_clips} ({dropped.kept_hours:.3f} h)")
    for name, info in report.eval_sets.items():
        if info.skipped:
            kinds = ", ".join(f"{kind} {count}" for kind, count in info.skipped_by_kind.items())
            notes.append(f"{name} manifest {info.path}: skipped {info.skipped} row(s) ({kinds}); "
                         f"scored {info.clips} clip(s)")
    return notes


# --- the run folder --------------------------------------------------------------------------------------------


@dataclass
class RunStart:
    run_dir: Path
    record: RunRecord
    checkpoint: Path | None  # where training continues from (resume)
    lock: RunLock | None


def check_model_settings(config: ExperimentConfig) -> None:
    """The model's family and the LoRA targets, checked on its config alone, before the folder exists."""
    skeleton = model_skeleton(config.model)
    if skeleton is not None:
        check_family_settings(family_for(skeleton.config.model_type), config.export, config.decode.encoder,
                              flag="--export")
        check_targets(skeleton, config.lora.target_modules)


def start_run(config: ExperimentConfig, earlier: RunRecord | None) -> RunStart:
    """Lock the folder, prepare it (new, replaced or resumed) and write the record's first state."""
    run_dir = Path(config.output_dir)
    command = shlex.join(["moonlora", *sys.argv[1:]])
    if not is_main_process():  # other ranks write nothing and follow the main process's checkpoint
        checkpoint = find_resume_checkpoint(run_dir, clean=False)[0] if config.resume else None
        return RunStart(run_dir, RunRecord(run_id=run_dir.name, config=config),
                        checkpoint.path if checkpoint else None, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir).acquire()
    try:
        checkpoint = None
        if config.resume:
            record = check_resumable(run_dir, config)  # again, now that the folder is ours
            checkpoint, notes = find_resume_checkpoint(run_dir)
            for note in notes:
                say(note)
            record.notes += notes
            record.status, record.reason, record.traceback = "running", None, None
            record.pid, record.host = os.getpid(), socket.gethostname()
        else:
            if earlier is not None:
                say(f"{run_dir}: replacing an earlier run that ended at {earlier.phase} before training "
                    f"({earlier.status}); only moonlora's files are removed")
            claim_output_dir(run_dir, "--output-dir", RUN_KIND, RUN_ENTRIES,
                             overwrite=config.overwrite or earlier is not None, require_empty=True, ignore=(LOCK_FILE,))
            write_config_dict(run_dir, config.to_dict())
            record = RunRecord(run_id=run_dir.name, config=config)
        record.command = command
        record.legs.append(Leg(command=command, pid=record.pid, host=record.host, started_at=now_iso(),
                               resumed_from_step=None if not config.resume else
                               (checkpoint.step if checkpoint else 0)))
        write_record(run_dir, record)
    except BaseException:
        lock.release()
        raise
    return RunStart(run_dir, record, checkpoint.path if checkpoint else None, lock)


# --- evaluation ------------------------------------------------------------------------------------------------


def evaluate_sets(loaded: LoadedModel, sets: dict[str, Manifest], config: ExperimentConfig, out_dir: Path | None,
                  progress: bool, label: str) -> dict[str, EvalResult]:
    results = {}
    for name, manifest in sets.items():
        results[name] = evaluate_manifest(loaded, manifest, config.audio, config.decode, progress=progress,
                                          description=f"{label} {name}", scoring=config.scoring)
        if out_dir is not None and is_main_process():
            write_eval(results[name], out_dir / name)
    return results


class BaselineStore:
    """Baseline scores shared by the runs of a sweep: one decode per (manifest, eval contract).

    A stored result is reused only when its contract equals the one the run would measure under
    (manifest hash, audio pipeline, normalizer, decode settings, model hash, runtime): checked,
    not assumed. `decoded` and `reused` count what happened (the sweep records them).
    """

    def __init__(self, folder: Path):
        self.folder, self.decoded, self.reused = Path(folder), 0, 0
        self.decoded_by_manifest: dict[str, int] = {}

    def path(self, manifest: Manifest, contract: EvalContract) -> Path:
        stem = "".join(c if c.isalnum() else "-" for c in manifest.path.name)
        return self.folder / f"{stem}-{contract.fingerprint[:16]}"

    def get(self, manifest: Manifest, contract: EvalContract) -> EvalResult | None:
        stored = read_eval(self.path(manifest, contract), manifest)
        if stored is None or stored.contract != contract:
            return None
        self.reused += 1
        return stored

    def put(self, manifest: Manifest, result: EvalResult) -> None:
        self.decoded += 1
        self.decoded_by_manifest[str(manifest.path)] = self.decoded_by_manifest.get(str(manifest.path), 0) + 1
        if is_main_process():
            write_eval(result, self.path(manifest, result.contract))


def baseline_results(loaded: LoadedModel, data: RunData, config: ExperimentConfig, run_dir: Path,
                     progress: bool, store: BaselineStore | None = None) -> dict[str, EvalResult]:
    """The baseline of every set: read back from the run folder when a first leg scored it under
    this very contract (resume), or from the sweep's shared store; decoded otherwise."""
    results, missing, shared = {}, {}, []
    for name, manifest in data.eval_sets.items():
        expected = EvalContract.build(manifest.content_hash, config.audio, config.decode, loaded.weights_sha256, None,
                                      model_type=loaded.model_type, scoring=config.scoring)
        stored = read_eval(run_dir / BASELINE_DIR / name, manifest) if config.resume else None
        if stored is not None and stored.contract == expected:
            results[name] = stored
        elif store is not None and (from_store := store.get(manifest, expected)) is not None:
            results[name] = from_store
            shared.append(name)
            if is_main_process():
                write_eval(from_store, run_dir / BASELINE_DIR / name)  # every run folder stays complete
        else:
            missing[name] = manifest
    if config.resume and len(results) > len(shared):
        say(f"baseline reused from the run folder for {', '.join(n for n in results if n not in shared)}")
    if shared:
        say(f"baseline reused from the sweep's shared baselines for {', '.join(shared)} (same eval contract)")
    decoded = evaluate_sets(loaded, missing, config, run_dir / BASELINE_DIR, progress, "baseline")
    if store is not None:
        for name, result in decoded.items():
            store.put(data.eval_sets[name], result)
    results.update(decoded)
    return {name: results[name] for name in data.eval_sets}


def nonspeech_side(result: EvalResult) -> NonspeechSide:
    return NonspeechSide(words_per_clip=result.words_per_clip(), text_share=result.text_share(),
                         clips_with_text=sum(bool(c.score.hyp_norm) for c in result.clips), flags=result.flag_counts(),
                         looping_clips=result.looping_clips(), contract=result.contract.to_dict())


def nonspeech_baseline(loaded: LoadedModel, data: RunData, config: ExperimentConfig, run_dir: Path,
                       progress: bool) -> EvalResult | None:
    """The base model on the non-speech manifest (read back on resume when scored under this contract)."""
    if data.nonspeech is None:
        return None
    expected = EvalContract.build(data.nonspeech.content_hash, config.audio, config.decode, loaded.weights_sha256,
                                  None, model_type=loaded.model_type, scoring=config.scoring, nonspeech=True)
    stored = read_eval(run_dir / BASELINE_DIR / NONSPEECH, data.nonspeech) if config.resume else None
    if stored is not None and stored.contract == expected:
        return stored
    return evaluate_sets(loaded, {NONSPEECH: data.nonspeech}, config, run_dir / BASELINE_DIR, progress,
                         "baseline")[NONSPEECH]


def nonspeech_summary(data: RunData, baseline: EvalResult, tuned: EvalResult | None,
                      config: ExperimentConfig) -> NonspeechSummary:
    """Both sides on the non-speech manifest and, with the tuned side, the paired bootstraps of tuned - baseline."""
    comparisons = {}
    if tuned is not None:
        require_comparable(baseline.contract, tuned.contract, allow=("adapter_sha256",))
        comparisons = compare_nonspeech(baseline, tuned, config.bootstrap_resamples, config.train.seed)
    return NonspeechSummary(path=str(data.nonspeech.path), clips=len(baseline.clips), baseline=nonspeech_side(baseline),
                            tuned=None if tuned is None else nonspeech_side(tuned), comparisons=comparisons)


def loop_notes(baseline: dict[str, EvalResult], tuned: dict[str, EvalResult], shown: int = 10) -> list[str]:
    """One note per set on which the tuned model loops (either loop rule), naming the clips."""
    notes = []
    for name, after in tuned.items():
        looping = after.looping_clips()
        if looping:
            before = len(baseline[name].looping_clips()) if name in baseline else 0
            more = f" (+{len(looping) - shown} more)" if len(looping) > shown else ""
            notes.append(f"loops on {name}: baseline {before} -> tuned {len(looping)} clip(s): "
                         f"{', '.join(looping[:shown])}{more}")
    return notes


def make_evaluator(loaded: LoadedModel, data: RunData, baseline: dict[str, EvalResult], config: ExperimentConfig,
                   progress: bool):
    """The interval evaluation: val WER (the choice), canary guard, optional main WER (plots only); the
    primary metric throughout (CER where the run's scoring says so), under the record's `_wer` keys."""
    label = metric_for(config.scoring).label
    names = ["val"] + (["canary"] if "canary" in data.eval_sets else [])
    names += ["main"] if config.log_manifest_interval_wer else []

    def evaluate(model, step: int) -> IntervalEval:
        if step == 0 and lora_is_identity(model):
            results = {name: baseline[name] for name in names}  # LoRA B = 0: the base model, already scored
        else:
            current = dataclasses.replace(loaded, model=model)
            results = evaluate_sets(current, {n: data.eval_sets[n] for n in names}, config, None, progress,
                                    f"step {step}")
        val_wer, reason = results["val"].corpus.primary, None
        details = {"lora_delta_norm": lora_delta_norm(model)}
        base_val = baseline["val"].corpus.primary
        limit = None if config.wer_stop_threshold is None else base_val * config.wer_stop_threshold
        if limit is not None and val_wer > limit and val_wer > base_val:
            reason = f"val {label} {val_wer:.4f} > baseline {base_val:.4f} x {config.wer_stop_threshold}"
        if "canary" in results:
            canary = details["canary_wer"] = results["canary"].corpus.primary
            canary_limit = baseline["canary"].corpus.primary + config.canary_margin
            if canary > canary_limit and reason is None:
                reason = f"canary {label} {canary:.4f} > baseline + {config.canary_margin} ({canary_limit:.4f})"
        if "main" in results:
            details["main_wer_not_used_for_choices"] = results["main"].corpus.primary
        return IntervalEval(val_wer, reason, details)

    return evaluate


def compare(baseline: dict[str, EvalResult], tuned: dict[str, EvalResult], resamples: int,
            seed: int) -> dict[str, Comparison]:
    """Paired bootstrap per manifest, after checking the two results share one contract."""
    comparisons = {}
    for name, before in baseline.items():
        after = tuned[name]
        require_comparable(before.contract, after.contract, allow=("adapter_sha256",))
        comparisons[name] = compare_results(before, after, resamples=resamples, seed=seed)
    return comparisons


def eval_summary(result: EvalResult) -> EvalSummary:
    return EvalSummary(wer=result.corpus.wer, cer=result.corpus.cer, raw_wer=result.corpus.raw_wer,
                       clips=len(result.clips), hours=result.audio_seconds / 3600, flags=result.flag_counts(),
                       wer_by_duration=result.wer_by_duration(), contract=result.contract.to_dict(),
                       skipped_rows=len(result.skipped), metric=result.corpus.metric)


def training_summary(state: TrainState, model, train_clips: int, processes: int, metric: str = "wer") -> TrainingSummary:
    """`metric` names what best_val_wer and the intervals' `_wer` values hold (the run's primary metric)."""
    return TrainingSummary(
        steps=state.step, best_step=state.best_step, best_val_wer=state.best_wer, stop_reason=state.stop_reason,
        skipped_updates=state.skipped_updates, train_clips=train_clips, processes=processes, samples=state.samples,
        epochs=state.samples / max(train_clips, 1), train_seconds=state.train_seconds,
        interval_eval_seconds=state.eval_seconds, checkpoint_seconds=state.checkpoint_seconds,
        samples_per_second=state.samples / state.train_seconds if state.train_seconds > 0 else None,
        lora_delta_norm=lora_delta_norm(model), losses=list(state.losses), intervals=list(state.intervals),
        metric=metric,
    )


def best_step_zero_note(training: TrainingSummary) -> str | None:
    if training.best_step != 0 or training.steps == 0:
        return None
    return ("best step 0: no interval adapter beat the baseline on the val split, so the tuned model is the "
            f"baseline; usual causes: too few updates (--max-steps {training.steps}), a learning rate too low "
            "for the batch (--learning-rate), or a val split too small to move")


def tensorboard_logger(run_dir: Path, purge_step: int | None):
    if not is_main_process():
        return None, None
    from torch.utils.tensorboard import SummaryWriter

    # purge_step drops the events a killed leg logged after its last checkpoint: one stream per run.
    writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR), purge_step=purge_step)

    def log(tag: str, value: float, step: int) -> None:
        writer.add_scalar(tag, value, step)
        writer.flush()  # a killed run's plots end where its record does

    return writer, log


def save_adapter(model, run_dir: Path, folder: str = ADAPTER_DIR) -> None:
    """The model's current adapter, for the original base model (`lora.write_adapter`), written beside its
    final place and swapped in."""
    if not is_main_process():
        return
    target, staging = run_dir / folder, run_dir / f".{folder}.tmp"
    remove_path(staging)
    try:
        write_adapter(model, staging)
    except OSError as error:
        remove_path(staging)
        raise OutputError(f"{run_dir}: cannot write the adapter ({error.strerror or error})") from None
    try:
        swap_in_folder(staging, target)  # the new one in, then the old one out: never no adapter
    except OSError as error:
        raise OutputError(f"{run_dir}: cannot put the new adapter in place ({error.strerror or error})") from None


def candidate_steps(trained: TrainResult) -> dict[str, tuple[int, float | None]]:
    """(step, val WER) of the best and the last adapter."""
    state = trained.state
    last_val = next((row["val_wer"] for row in reversed(state.intervals) if row["step"] == state.step), None)
    return {"best": (state.best_step, state.best_wer), "last": (state.step, last_val)}


def save_candidates(model, trained: TrainResult, run_dir: Path, select: str) -> None:
    """Keep both adapters (adapter-best/, adapter-last/) and the selected one as adapter/; the model
    keeps the weights it had."""
    for name in CANDIDATES:
        with adapter_loaded(model, trained.adapter(name)):
            save_adapter(model, run_dir, CANDIDATE_ADAPTER_DIRS[name])
    with adapter_loaded(model, trained.adapter(select)):
        save_adapter(model, run_dir)


def candidate_main_result(loaded: LoadedModel, data: RunData, trained: TrainResult, name: str,
                          baseline: dict[str, EvalResult], tuned: dict[str, EvalResult], config: ExperimentConfig,
                          run_dir: Path, progress: bool) -> EvalResult:
    """Candidate `name`'s main-manifest score: the run's tuned one when it is selected or equal to the
    selected one, the baseline when it is the identity, else decoded with that adapter loaded for the
    decode only (the model keeps the weights it had)."""
    adapter, selected = trained.adapter(name), trained.adapter(config.select)
    if name == config.select or all(torch.equal(adapter[k], selected[k]) for k in selected):
        return tuned["main"]
    with adapter_loaded(loaded.model, adapter):
        if lora_is_identity(loaded.model):
            return baseline["main"]
        return evaluate_sets(loaded, {"main": data.eval_sets["main"]}, config, run_dir / CANDIDATE_SCORE_DIRS[name],
                             progress, f"{name} adapter")["main"]


def score_candidates(loaded: LoadedModel, data: RunData, trained: TrainResult, baseline: dict[str, EvalResult],
                     tuned: dict[str, EvalResult], config: ExperimentConfig, run_dir: Path,
                     progress: bool) -> dict[str, Candidate]:
    """Both adapters on the main manifest with CIs against the baseline, each scored by naming its
    adapter (`candidate_main_result`); the model is left as it was."""
    steps = candidate_steps(trained)
    candidates = {}
    for name in CANDIDATES:
        result = candidate_main_result(loaded, data, trained, name, baseline, tuned, config, run_dir, progress)
        comparison = compare({"main": baseline["main"]}, {"main": result}, config.bootstrap_resamples,
                             config.train.seed)["main"]
        candidates[name] = Candidate(step=steps[name][0], val_wer=steps[name][1],
                                     adapter_dir=CANDIDATE_ADAPTER_DIRS[name], main=eval_summary(result),
                                     comparison=comparison, selected=name == config.select)
    return candidates


def candidates_note(candidates: dict[str, Candidate]) -> str:
    parts = [f"{name} (step {c.step}{', selected' if c.selected else ''}) main {c.main.label} {c.main.primary:.4f}, delta "
             f"{c.comparison.delta:+.4f} [{c.comparison.ci_low:+.4f}, {c.comparison.ci_high:+.4f}]"
             for name, c in candidates.items()]
    return "adapters: " + "; ".join(parts)


# --- export parity -------------------------------------------------------------------------------------------


def write_shipped(loaded: LoadedModel, folder: Path) -> dict:
    """The deployable int8 ORT folder of the model's adapter, by its family's route: the bundled base-en
    graphs re-weighted (Moonshine), or the runtime's five streaming graphs (Moonshine Streaming); returns
    the route's quantization stats."""
    if "streaming-graphs" not in loaded.family.export_routes:
        from moonlora.ship.ort_export import write_merged_ort

        return write_merged_ort(loaded.model, folder)
    from moonlora.ship.export import adapted_modules, write_ort

    model = loaded.model
    adapted = adapted_modules(model) if hasattr(model, "peft_config") else []
    merged = copy.deepcopy(model).merge_and_unload() if hasattr(model, "peft_config") else model
    return write_ort(merged.eval(), folder, rounding="nearest", route="streaming", precision="int8", adapted=adapted)


def export_parity(loaded: LoadedModel, data: RunData, baseline: dict[str, EvalResult], tuned: dict[str, EvalResult],
                  config: ExperimentConfig, run_dir: Path, progress: bool) -> ExportParity:
    """Export the model's adapter as the deployable int8 `.ort` folder, score it on the main manifest
    (and the canary) under the run's contract, and compare it with the torch model that was measured.

    The contracts may differ only in runtime, model artifact and adapter; the paired bootstrap gives
    the CI of WER(export) - WER(torch) and of WER(export) - WER(baseline). The outcome is decided
    here, once (`comparison.parity_outcome`), and `decide` reports it.
    """
    folder = run_dir / EXPORT_DIR / config.export
    quantization = write_shipped(loaded, folder)
    exported = load_model(f"ort:{folder}")
    decode = dataclasses.replace(config.decode, device="cpu")
    sets = {}
    for name in [name for name in ("main", "canary") if name in data.eval_sets]:
        result = evaluate_manifest(exported, data.eval_sets[name], config.audio, decode, progress=progress,
                                   description=f"export {name}", scoring=config.scoring)
        write_eval(result, run_dir / EXPORT_DIR / "scores" / name)
        require_comparable(tuned[name].contract, result.contract, allow=("runtime", "model_sha256", "adapter_sha256"))
        agree = sum(a.hypothesis == b.hypothesis for a, b in zip(tuned[name].clips, result.clips))
        sets[name] = ParitySet(
            torch_wer=tuned[name].corpus.primary, export_wer=result.corpus.primary,
            export_minus_torch=compare_results(tuned[name], result, config.bootstrap_resamples, config.train.seed),
            export_minus_baseline=compare_results(baseline[name], result, config.bootstrap_resamples,
                                                  config.train.seed),
            text_agreement=agree / max(len(result.clips), 1), contract=result.contract.to_dict())
    main = sets["main"]
    return ExportParity(
        format=config.export, folder=str(folder), runtime=exported.runtime_dict(), margin=config.export_margin,
        outcome=parity_outcome(main.export_minus_torch, main.export_minus_baseline, config.export_margin),
        quantization={key: quantization.get(key) for key in ("rounding", "differing_tensors", "changed_tensors",
                                                             "new_scale", "max_error_in_steps")},
        sets=sets)


def export_note(parity: ExportParity) -> str:
    main = parity.main
    delta, baseline = main.export_minus_torch, main.export_minus_baseline
    return (f"export {parity.format} ({parity.runtime['precision']}): main {delta.label} torch {main.torch_wer:.4f} -> "
            f"export {main.export_wer:.4f}, delta {delta.delta:+.4f} [{delta.ci_low:+.4f}, "
            f"{delta.ci_high:+.4f}], texts identical {main.text_agreement:.0%}; vs baseline "
            f"{baseline.delta:+.4f} [{baseline.ci_low:+.4f}, {baseline.ci_high:+.4f}]; parity "
            f"{parity.outcome} (margin {parity.margin})")


# --- the run ---------------------------------------------------------------------------------------------------


class RunSession:
    """The record of one leg of a run, saved at each phase (main process only)."""

    def __init__(self, start: RunStart):
        self.start, self.record, self.started = start, start.record, time.perf_counter()

    def save(self, **changes) -> None:
        for name, value in changes.items():
            setattr(self.record, name, value)
        if is_main_process():
            write_record(self.start.run_dir, self.record)

    def note(self, line: str) -> None:
        say(line)
        self.record.notes.append(line)

    def note_checklist(self, **items) -> None:
        """Record checklist items (Checklist fields); their warnings become notes."""
        self.record.checklist = dataclasses.replace(self.record.checklist, **items)
        for line in checklist.warnings(Checklist(**items)):
            self.note(line)

    def finish(self) -> None:
        leg = self.record.legs[-1] if self.record.legs else None
        seconds = time.perf_counter() - self.started
        if leg is not None:
            leg.ended_at, leg.status, leg.wall_seconds = now_iso(), self.record.status, seconds
        self.record.wall_seconds = sum(leg.wall_seconds or 0.0 for leg in self.record.legs)
        try:
            self.save()
        except OutputError as error:
            say(f"could not write the run record: {error}")
        finally:
            if self.start.lock is not None:
                self.start.lock.release()


def score_tuned(session: RunSession, tunable: LoadedModel, data: RunData, baseline: dict[str, EvalResult],
                trained: TrainResult, config: ExperimentConfig, processes: int, progress: bool,
                nonspeech_base: EvalResult | None = None) -> None:
    """The tuned model (the selected adapter, loaded by the caller) on every set (and the non-speech one,
    against `nonspeech_base`), both candidates on the main manifest, and with --export the shipped model;
    each result saved in the record, a note for each set the tuned model loops on."""
    record, run_dir = session.record, session.start.run_dir
    training = training_summary(trained.state, tunable.model, len(data.train), processes,
                                config.scoring.primary_metric)
    session.save(training=training, phase="tuned")
    tuned = evaluate_sets(tunable, data.eval_sets, config, run_dir / TUNED_DIR, progress, "tuned")
    record.tuned = {name: eval_summary(r) for name, r in tuned.items()}
    record.comparisons = compare(baseline, tuned, config.bootstrap_resamples, config.train.seed)
    looped_before, looped_after = dict(baseline), dict(tuned)
    if nonspeech_base is not None:
        nonspeech_tuned = evaluate_sets(tunable, {NONSPEECH: data.nonspeech}, config, run_dir / TUNED_DIR, progress,
                                        "tuned")[NONSPEECH]
        record.nonspeech = nonspeech_summary(data, nonspeech_base, nonspeech_tuned, config)
        looped_before[NONSPEECH], looped_after[NONSPEECH] = nonspeech_base, nonspeech_tuned
    for line in loop_notes(looped_before, looped_after):
        session.note(line)
    record.candidates = score_candidates(tunable, data, trained, baseline, tuned, config, run_dir, progress)
    session.note(candidates_note(record.candidates))
    note = best_step_zero_note(training)
    if note:
        session.note(note)
    if config.export and is_main_process():  # the other ranks would read graphs only rank 0 writes
        session.save(phase="export")
        record.export_parity = export_parity(tunable, data, baseline, tuned, config, run_dir, progress)
        session.note(export_note(record.export_parity))


def check_run_settings(config: ExperimentConfig) -> None:
    """What the config cannot check without torch or the model's files, before any data is read or folder
    written: the device exists here, and --export can take the model."""
    check_device(config.decode.device)
    if config.export:
        from moonlora.ship.ort_export import check_export_model

        check_export_model(config.model, config.export)


def run_experiment(config: ExperimentConfig, progress: bool = True,
                   baseline_store: BaselineStore | None = None) -> RunRecord:
    """Run the whole protocol; returns the run record also written to experiment_metrics.json.

    `baseline_store` (sweeps) shares baseline scores between runs measured under one contract.
    """
    check_run_settings(config)
    earlier = validate_run_dir(config) if is_main_process() else None
    data = load_run_data(config)  # bad manifests fail here, before the folder is touched
    check_model_settings(config)  # and a model of another family, or LoRA targets it lacks
    session = RunSession(start_run(config, earlier))
    record, run_dir = session.record, session.start.run_dir
    writer = None
    try:
        record.data = data.report
        for line in data_notes(data.report):
            session.note(line)
        session.note_checklist(val_split=data.checklist.val_split, leakage=data.checklist.leakage)
        base = load_model(config.model, device=config.train.device, dtype=config.train.dtype)
        require_torch(base, "training")
        check_targets(base.model, config.lora.target_modules)  # a typo fails here, before any decode
        record.provenance = {**provenance(), "model_sha256": base.weights_sha256}
        session.save(phase="baseline")
        baseline = baseline_results(base, data, config, run_dir, progress, baseline_store)
        nonspeech_base = nonspeech_baseline(base, data, config, run_dir, progress)
        if nonspeech_base is not None:
            record.nonspeech = nonspeech_summary(data, nonspeech_base, None, config)
        session.note_checklist(headroom=checklist.headroom(baseline["main"].corpus.primary, baseline["main"].corpus.metric),
                               sufficiency=checklist.sufficiency(len(data.train)))
        # attach_lora wraps the base model in place: from here on only `tunable` names it
        tunable = dataclasses.replace(base, model=attach_lora(base.model, config.lora, config.train.seed))
        session.save(baseline={name: eval_summary(r) for name, r in baseline.items()},
                     lora=LoraSummary(**trainable_summary(tunable.model)), phase="training")
        checkpoint = session.start.checkpoint
        resumed_step = int(checkpoint.name.split("-")[-1]) if checkpoint else None
        purge_step = None if not config.resume else (0 if resumed_step is None else resumed_step + 1)
        writer, log = tensorboard_logger(run_dir, purge_step)
        processes = int(os.environ.get("WORLD_SIZE", "1"))

        def on_checkpoint(state: TrainState) -> None:
            session.save(training=training_summary(state, tunable.model, len(data.train), processes,
                                                           config.scoring.primary_metric))

        trained = train(tunable, TrainStream(data.train, data.replay, config.train), config.train, config.audio,
                        make_evaluator(tunable, data, baseline, config, progress), run_dir, checkpoint=checkpoint,
                        progress=progress, log=log, on_checkpoint=on_checkpoint)
        state = trained.state
        save_candidates(tunable.model, trained, run_dir, config.select)
        with adapter_loaded(tunable.model, trained.adapter(config.select)):  # the run's tuned model
            score_tuned(session, tunable, data, baseline, trained, config, processes, progress, nonspeech_base)
        record.status = "stopped_early" if state.stop_reason else "success"
        record.reason, record.phase = state.stop_reason, "done"
    except KeyboardInterrupt:
        record.status, record.reason = "interrupted", f"interrupted at {record.phase}; continue with --resume"
        raise
    except Exception as error:  # the run's record must say why it failed, then the error goes on
        record.status, record.reason = "failed", f"{type(error).__name__}: {error}"
        record.traceback = traceback.format_exc(limit=8)
        raise
    finally:
        if writer is not None:
            writer.close()
        session.finish()
    return record
