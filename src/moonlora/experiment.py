"""`moonlora experiment`: the seed plan's runner — baseline, LoRA training, tuned, verdict data.

Every WER in a run goes through `evaluate_manifest` with the run's one AudioConfig and
DecodeConfig, so the plan's parity rules hold by construction. The adapter and the stop step
are chosen on the val split (and the canary), never on the main manifest, which is scored at
baseline and once at the end.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from moonlora.configs import ExperimentConfig
from moonlora.contract import require_comparable
from moonlora.evaluate import EvalResult, evaluate_manifest, write_eval
from moonlora.lora import attach_lora, lora_delta_norm, trainable_summary
from moonlora.manifest import Manifest, Utterance, load_manifest
from moonlora.model import LoadedModel, load_model
from moonlora.provenance import provenance
from moonlora.splits import split_train_val
from moonlora.stats import compare_results
from moonlora.train import IntervalEval, TrainStream, is_main_process, train

CONFIG_FILE = "experiment_config.json"
METRICS_FILE = "experiment_metrics.json"
RUN_CONTROL_FIELDS = ("resume", "overwrite")  # how to run, not what: may differ on resume


class RunFolderExists(FileExistsError):
    """Refusing to overwrite a run folder."""


def _config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    differing = []
    for key in sorted(set(saved) | set(current)):
        if not prefix and key in RUN_CONTROL_FIELDS:
            continue
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            differing += _config_differences(a, b, f"{prefix}{key}.")
        elif (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            differing.append(f"{prefix}{key} ({a!r} -> {b!r})")
    return differing


def prepare_run_dir(config: ExperimentConfig) -> Path:
    """Create the run folder; refuse to reuse one unless resuming (same config) or overwriting."""
    run_dir = Path(config.output_dir)
    saved_config = run_dir / CONFIG_FILE
    occupied = run_dir.exists() and any(run_dir.iterdir())
    if occupied and config.overwrite:
        shutil.rmtree(run_dir)
    elif occupied and not config.resume:
        raise RunFolderExists(f"{run_dir}: already holds a run; pass --resume to continue it, "
                              "--overwrite to replace it, or pick another --output-dir")
    elif config.resume:
        if not saved_config.is_file():
            raise ValueError(f"{run_dir}: nothing to resume (no {CONFIG_FILE}); drop --resume")
        differing = _config_differences(json.loads(saved_config.read_text()), config.to_dict())
        if differing:
            raise ValueError(f"{saved_config}: --resume needs the same settings; differing: {', '.join(differing)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    saved_config.write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return run_dir


def filter_by_duration(utterances: list[Utterance], max_seconds: float | None) -> tuple[list[Utterance], dict]:
    """Keep clips up to max_seconds; report what was dropped in clips and hours."""
    kept, dropped = [], []
    for utterance in utterances:
        (kept if max_seconds is None or utterance.duration <= max_seconds else dropped).append(utterance)
    return kept, {"max_seconds": max_seconds, "kept_clips": len(kept), "kept_hours": sum(u.duration for u in kept) / 3600,
                  "dropped_clips": len(dropped), "dropped_hours": sum(u.duration for u in dropped) / 3600}


@dataclass
class RunData:
    train: list[Utterance]
    replay: list[Utterance]
    eval_sets: dict[str, Manifest]  # "val", "main", "extra-<stem>", "canary"
    report: dict


def load_run_data(config: ExperimentConfig) -> RunData:
    dataset = load_manifest(config.dataset_path)
    kept, filtering = filter_by_duration(dataset.utterances, config.max_seconds)
    if len(kept) < 2:
        raise ValueError(f"{config.dataset_path}: {len(kept)} clip(s) left after --max-seconds {config.max_seconds}; "
                         "need at least 2 (train and val)")
    split = split_train_val(kept, config.val_fraction, config.train.seed)
    eval_sets = {"val": Manifest(path=Path(f"{config.dataset_path}#val"), utterances=split.val),
                 "main": load_manifest(config.manifest_path)}
    for path in config.extra_manifests:
        eval_sets[f"extra-{Path(path).stem}"] = load_manifest(path)
    if config.canary_manifest:
        eval_sets["canary"] = load_manifest(config.canary_manifest)
    replay = load_manifest(config.replay_manifest).utterances if config.replay_manifest else []
    report = {
        "dataset": {"path": config.dataset_path, "clips": len(dataset.utterances), "skipped": len(dataset.skipped),
                    "skipped_by_kind": dataset.skipped_by_kind(), "sha256": dataset.content_hash},
        "filter": filtering, "split": split.to_dict(),
        "eval_sets": {name: {"path": str(m.path), "clips": len(m.utterances), "hours": m.total_seconds / 3600,
                             "skipped": len(m.skipped), "sha256": m.content_hash} for name, m in eval_sets.items()},
        "replay": {"path": config.replay_manifest, "clips": len(replay)},
    }
    return RunData(split.train, replay, eval_sets, report)


def evaluate_sets(loaded: LoadedModel, sets: dict[str, Manifest], config: ExperimentConfig, out_dir: Path | None,
                  progress: bool, label: str) -> dict[str, EvalResult]:
    results = {}
    for name, manifest in sets.items():
        results[name] = evaluate_manifest(loaded, manifest, config.audio, config.decode, progress=progress,
                                          description=f"{label} {name}")
        if out_dir is not None and is_main_process():
            write_eval(results[name], out_dir / name)
    return results


def make_evaluator(loaded: LoadedModel, data: RunData, baseline: dict[str, EvalResult], config: ExperimentConfig,
                   progress: bool):
    """The interval evaluation: val WER (the choice), canary guard, optional main WER (plots only)."""
    names = ["val"] + (["canary"] if "canary" in data.eval_sets else [])
    names += ["main"] if config.log_manifest_interval_wer else []

    def evaluate(model, step: int) -> IntervalEval:
        current = dataclasses.replace(loaded, model=model)
        results = evaluate_sets(current, {n: data.eval_sets[n] for n in names}, config, None, progress, f"step {step}")
        val_wer, reason = results["val"].corpus.wer, None
        details = {"lora_delta_norm": lora_delta_norm(model)}
        limit = None if config.wer_stop_threshold is None else baseline["val"].corpus.wer * config.wer_stop_threshold
        if limit is not None and val_wer > limit and val_wer > baseline["val"].corpus.wer:
            reason = f"val WER {val_wer:.4f} > baseline {baseline['val'].corpus.wer:.4f} x {config.wer_stop_threshold}"
        if "canary" in results:
            details["canary_wer"] = results["canary"].corpus.wer
            canary_limit = baseline["canary"].corpus.wer + config.canary_margin
            if results["canary"].corpus.wer > canary_limit and reason is None:
                reason = f"canary WER {results['canary'].corpus.wer:.4f} > baseline + {config.canary_margin} ({canary_limit:.4f})"
        if "main" in results:
            details["main_wer_not_used_for_choices"] = results["main"].corpus.wer
        return IntervalEval(val_wer, reason, details)

    return evaluate


def compare(baseline: dict[str, EvalResult], tuned: dict[str, EvalResult], resamples: int, seed: int) -> dict:
    """Paired bootstrap per manifest, after checking the two results share one contract."""
    comparisons = {}
    for name, before in baseline.items():
        after = tuned[name]
        require_comparable(before.contract, after.contract, allow=("adapter_sha256",))
        comparisons[name] = compare_results(before, after, resamples=resamples, seed=seed).to_dict()
    return comparisons


def eval_summary(result: EvalResult) -> dict:
    return {"wer": result.corpus.wer, "cer": result.corpus.cer, "raw_wer": result.corpus.raw_wer,
            "clips": len(result.clips),
            "hours": result.audio_seconds / 3600, "flags": result.flag_counts(),
            "wer_by_duration": result.wer_by_duration(), "contract": result.contract.to_dict()}


def tensorboard_logger(run_dir: Path):
    if not is_main_process():
        return None, None
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
    return writer, (lambda tag, value, step: writer.add_scalar(tag, value, step))


def write_metrics(run_dir: Path, metrics: dict) -> None:
    if not is_main_process():
        return
    (run_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2, default=str) + "\n")


def run_experiment(config: ExperimentConfig, progress: bool = True) -> dict:
    """Run the whole protocol; returns the metrics also written to experiment_metrics.json."""
    run_dir = prepare_run_dir(config) if is_main_process() else Path(config.output_dir)
    started = time.perf_counter()
    metrics = {"run_id": run_dir.name, "status": "running", "reason": None,
               "command": shlex.join(["moonlora", *sys.argv[1:]]), "config": config.to_dict(),
               "provenance": provenance()}
    writer = None
    try:
        data = load_run_data(config)
        metrics["data"] = data.report
        loaded = load_model(config.model, device=config.decode.device, dtype=config.decode.dtype)
        metrics["provenance"]["model_sha256"] = loaded.weights_sha256
        baseline = evaluate_sets(loaded, data.eval_sets, config, run_dir / "baseline", progress, "baseline")
        metrics["baseline"] = {name: eval_summary(r) for name, r in baseline.items()}
        loaded.model = attach_lora(loaded.model, config.lora, config.train.seed)
        metrics["lora"] = trainable_summary(loaded.model)
        writer, log = tensorboard_logger(run_dir)
        state = train(loaded, TrainStream(data.train, data.replay, config.train), config.train, config.audio,
                      make_evaluator(loaded, data, baseline, config, progress), run_dir,
                      resume=config.resume, progress=progress, log=log)
        if is_main_process():
            loaded.model.save_pretrained(str(run_dir / "adapter"))
        tuned = evaluate_sets(loaded, data.eval_sets, config, run_dir / "tuned", progress, "tuned")
        metrics["tuned"] = {name: eval_summary(r) for name, r in tuned.items()}
        metrics["comparisons"] = compare(baseline, tuned, config.bootstrap_resamples, config.train.seed)
        metrics["training"] = training_summary(state, loaded, config, len(data.train))
        metrics["status"] = "stopped_early" if state.stop_reason else "success"
        metrics["reason"] = state.stop_reason
    except KeyboardInterrupt:
        metrics.update(status="interrupted", reason="interrupted; continue with --resume")
        raise
    except Exception as error:  # the run's record must say why it failed, then the error goes on
        metrics.update(status="failed", reason=f"{type(error).__name__}: {error}",
                       traceback=traceback.format_exc(limit=8))
        raise
    finally:
        if writer is not None:
            writer.close()
        metrics["wall_seconds"] = time.perf_counter() - started
        write_metrics(run_dir, metrics)
    return metrics


def training_summary(state, loaded: LoadedModel, config: ExperimentConfig, train_clips: int) -> dict:
    samples = state.step * config.train.batch_size * config.train.grad_accum
    return {
        "steps": state.step, "best_step": state.best_step, "best_val_wer": state.best_wer,
        "stop_reason": state.stop_reason, "skipped_updates": state.skipped_updates,
        "train_clips": train_clips, "epochs": samples / max(train_clips, 1),
        "train_seconds": state.train_seconds, "interval_eval_seconds": state.eval_seconds,
        "samples_per_second": samples / (state.train_seconds - state.eval_seconds)
        if state.train_seconds > state.eval_seconds else None,
        "lora_delta_norm": lora_delta_norm(loaded.model),
        "losses": state.losses, "intervals": state.intervals,
    }
