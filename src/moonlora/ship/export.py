"""`moonlora export`: the model a user ships, from a run (or an adapter folder).

`hf` merges the LoRA adapter into the base weights (PEFT `merge_and_unload`) and writes a complete
`save_pretrained` folder — model, tokenizer, feature extractor, generation config — that plain
`MoonshineForConditionalGeneration.from_pretrained` and moonlora's `--model DIR` load.

`ort` writes the folder the edge runtime (moonshine-voice, C++ over onnxruntime) loads:
`encoder_model.ort`, `decoder_model_merged.ort`, `tokenizer.bin`, with the same file names, graph
inputs/outputs and int8 scheme as the bundled `base-en` folder. Route: the merged weights are
re-quantized with the bundled per-tensor min/max scheme (stochastic rounding by default: nearest
rounding erased most of a trained adapter, see `moonlora.ship.ort_export`) and patched into copies of
the bundled graphs (`moonlora.ship.ort_export`, route (a) of the issue). Chosen by measurement for
Moonshine base: it reproduces the bundled files byte for byte for an identity adapter, so the only
thing an export can change is the weights. Any other architecture (moonshine-tiny from the hub)
takes route (b), `moonlora.ship.onnx_export`: moonlora's own torch.onnx export of the encoder and of a
merged decoder with the bundled graphs' inputs/outputs, onnxruntime dynamic int8 quantization and
ORT-format conversion (optimum-onnx is not an option: it requires transformers < 4.58).
A Moonshine Streaming run takes its family's one route, "streaming-graphs" (`moonlora.ship.streaming_export`):
the runtime's five streaming graphs, `streaming_config.json` and `tokenizer.bin`, int8 or float32
(`--precision`); the graphs an adapter does not touch are byte-identical to an identity export's.

`both` writes `hf/` and `ort/` side by side. Every export carries `manifest.json`: the source run
and its eval contracts, the base model, adapter and merged-weights hashes, the precision and
quantization, and the tool versions, so a later score of the exported model is tied to the run that
measured it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moonlora.adapters import ADAPTER_CONFIG, AdapterError, ResolvedAdapter, resolve_adapter
from moonlora.configs import DEFAULT_MODEL, ExportConfig
from moonlora.errors import ModelSourceError, MoonloraError
from moonlora.model.families import check_family_settings, family_for
from moonlora.outputs import check_output_dir, claim_output_dir, write_json
from moonlora.provenance import provenance
from moonlora.runfolder import RunRecord, RunRecordError, read_record, run_state

EXPORT_KIND = "export"
MANIFEST_NAME = "manifest.json"
HF_ENTRIES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "preprocessor_config.json", MANIFEST_NAME)
MOONSHINE_ORT_ENTRIES = ("encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin", MANIFEST_NAME)
STREAMING_ORT_ENTRIES = ("frontend.ort", "encoder.ort", "adapter.ort", "cross_kv.ort", "decoder_kv.ort",
                         "streaming_config.json", "tokenizer.bin", MANIFEST_NAME)
ORT_ENTRIES = tuple(dict.fromkeys((*MOONSHINE_ORT_ENTRIES, *STREAMING_ORT_ENTRIES)))  # either family's layout
FORMATS = ExportConfig.formats
ENTRIES = {"hf": HF_ENTRIES, "ort": ORT_ENTRIES, "both": ("hf", "ort")}
KNOWN_ENTRIES = tuple(dict.fromkeys(name for names in ENTRIES.values() for name in names))  # any format's


class ExportError(MoonloraError, ValueError):
    """What to export cannot be found or used."""


@dataclass(frozen=True)
class ExportSource:
    adapter: ResolvedAdapter
    model: str  # the base model the adapter was trained on
    record: RunRecord | None  # the run's record (a finished run), None for a plain adapter folder

    @property
    def adapter_dir(self) -> Path:
        return self.adapter.adapter_dir

    @property
    def run_dir(self) -> Path | None:
        return self.adapter.run_dir


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    manifest: dict  # of the hf folder when there is one, else of the ort folder
    folders: dict  # format -> folder
    manifests: dict  # format -> manifest


def export_failed(record: RunRecord, run_dir: Path) -> bool:
    """The run trained, chose and scored its adapter, then ended in its export phase (`experiment --export`):
    `moonlora export` finishes the export without retraining (the run's record keeps its status)."""
    return record.phase == "export" and run_state(record, run_dir) in ("failed", "interrupted", "died")


def resolve_source(source: str | Path, model: str | None) -> ExportSource:
    """A finished run's adapter (RUN, RUN/adapter, RUN/adapter-best, RUN/adapter-last) on the run's own
    base model, or a plain adapter folder on --model."""
    try:
        adapter = resolve_adapter(source)
    except AdapterError as error:
        raise ExportError(str(error)) from None
    if adapter.run_dir is None:
        return ExportSource(adapter, model or DEFAULT_MODEL, None)
    try:
        record = read_record(adapter.run_dir)
    except RunRecordError as error:
        raise ExportError(str(error)) from None
    if not (record.finished or export_failed(record, adapter.run_dir)):
        raise ExportError(f"{adapter.run_dir}: the run is {record.status} at {record.phase}; only a finished run (or "
                          "one whose training finished and whose export failed) has a chosen adapter to export "
                          "(resume it first)")
    if not (adapter.adapter_dir / ADAPTER_CONFIG).is_file():
        raise ExportError(f"{adapter.adapter_dir}: no {ADAPTER_CONFIG}; the run folder has no adapter to export")
    trained_on = adapter.config.model
    if model is not None and model != trained_on:
        raise ExportError(f"--model {model}: the run trained its adapter on {trained_on}; drop --model")
    return ExportSource(adapter, trained_on, record)


def run_scores(source: ExportSource) -> dict | None:
    """What the run measured for this adapter: its tuned scores, or the main-manifest score of the
    candidate that was not selected."""
    record = source.record
    if record is None:
        return None
    if source.adapter.selected or source.adapter.which not in record.candidates:
        return record.tuned
    return {"main": record.candidates[source.adapter.which].main}


def export_manifest(source: ExportSource, base_sha: str, adapter_sha: str | None, merged_sha: str,
                    export_format: str, quantization: dict | None = None) -> dict:
    scores = run_scores(source) or {}
    return {
        "format": export_format,
        "source_run": str(source.run_dir) if source.run_dir else None,
        "source_adapter": str(source.adapter_dir),
        "source_candidate": source.adapter.which,
        "base_model": source.model,
        "base_model_sha256": base_sha,
        "adapter_sha256": adapter_sha,
        "merged_weights_sha256": merged_sha,
        "precision": (quantization or {}).get("precision", "int8" if quantization else "float32"),
        "quantization": quantization,
        "run_eval_contracts": {name: s.contract for name, s in scores.items()} if source.record else None,
        "run_tuned_wer": {name: s.wer for name, s in scores.items()} if source.record else None,
        # The run's primary metric (CER where its --language or --metric says so) and its value.
        "run_metric": {name: s.metric for name, s in scores.items()} if source.record else None,
        "run_tuned_primary": {name: s.primary for name, s in scores.items()} if source.record else None,
        "provenance": provenance(),
    }


def lost_adapter_warning(quantization: dict) -> str | None:
    """The adapter changed weights but no int8 byte: it rounded away in quantization."""
    if quantization.get("differing_tensors") and not quantization.get("changed_tensors"):
        return ("the adapter changed the weights by less than half an int8 step everywhere: the int8 model is "
                "the base model; score it (transcribe --model ort:DIR) before shipping, or train longer")
    return None


def check_output(out_dir: str | Path, export_format: str, overwrite: bool) -> Path:
    """Every check on --out before any work (light: the CLI runs it before torch loads)."""
    return check_output_dir(out_dir, "--out", EXPORT_KIND, ENTRIES[export_format], overwrite, require_empty=True,
                            known=KNOWN_ENTRIES)


def export(source: str | Path, out_dir: str | Path, export_format: str = ExportConfig.format,
           model: str | None = ExportConfig.model, overwrite: bool = False,
           rounding: str = ExportConfig.rounding, precision: str = ExportConfig.precision) -> ExportResult:
    """Merge the adapter into its base model and write the `hf` and/or `ort` folder with manifest.json."""
    if export_format not in FORMATS:
        raise ExportError(f"--format {export_format}: pick one of {', '.join(FORMATS)}")
    if precision not in ExportConfig.precisions:
        raise ExportError(f"--precision {precision}: pick one of {', '.join(ExportConfig.precisions)}")
    resolved = resolve_source(source, model)
    out_dir = check_output(out_dir, export_format, overwrite)
    from moonlora.model.loading import adapter_sha256, load_model, model_skeleton, weights_sha256  # torch loads here

    skeleton = model_skeleton(resolved.model)  # the family from config.json alone, before any weights load
    if skeleton is not None:
        check_family_settings(family_for(skeleton.config.model_type), export_format)
    loaded = load_model(resolved.model, device="cpu", adapter=resolved.adapter_dir)
    check_family_settings(loaded.family, export_format)
    adapter_hash = adapter_sha256(loaded.model)
    adapted = adapted_modules(loaded.model)
    merged = loaded.model.merge_and_unload().eval()
    merged_hash = weights_sha256(merged)
    route = ort_route(merged) if export_format in ("ort", "both") else None
    if route == "a" and precision != "int8":
        raise ExportError(f"--precision {precision}: the re-weighted bundled base-en graphs are int8 only; "
                          "drop --precision")
    claimed = (STREAMING_ORT_ENTRIES if route == "streaming" else MOONSHINE_ORT_ENTRIES) if export_format == "ort" \
        else ENTRIES[export_format]  # what this export writes (check_output allowed either family's names)
    claim_output_dir(out_dir, "--out", EXPORT_KIND, claimed, overwrite, require_empty=True, known=KNOWN_ENTRIES)
    folders = {"hf": out_dir, "ort": out_dir} if export_format != "both" else {"hf": out_dir / "hf", "ort": out_dir / "ort"}
    manifests = {}
    if export_format in ("hf", "both"):
        write_hf(merged, loaded, folders["hf"])
        manifests["hf"] = export_manifest(resolved, loaded.weights_sha256, adapter_hash, merged_hash, "hf")
    if export_format in ("ort", "both"):
        quantization = write_ort(merged, folders["ort"], rounding, route, precision, adapted)
        manifests["ort"] = export_manifest(resolved, loaded.weights_sha256, adapter_hash, merged_hash, "ort",
                                           quantization)
    for name, manifest in manifests.items():
        write_json(folders[name] / MANIFEST_NAME, manifest, command="export")
    return ExportResult(out_dir, manifests.get("hf") or manifests["ort"], folders, manifests)


def write_hf(merged, loaded, folder: Path) -> None:
    try:
        merged.save_pretrained(folder)
        loaded.tokenizer.save_pretrained(folder)
        loaded.feature_extractor.save_pretrained(folder)
    except OSError as error:
        raise ModelSourceError(f"--out {folder}: cannot write the merged model ({error.strerror or error})") from None


def adapted_modules(model) -> list[str]:
    """Names of the modules a PEFT model's LoRA adapts (what its merge changes)."""
    return sorted(name for name, module in model.named_modules() if hasattr(module, "lora_A") and module.lora_A)


def ort_route(merged) -> str:
    """"a" (patch the bundled graphs) for Moonshine base, "b" (ONNX export) for any other Moonshine shape,
    "streaming" for Moonshine Streaming; only routes the model's family names (`ModelFamily.export_routes`)
    are taken."""
    from moonlora.ship.ort_export import check_route_a

    routes = family_for(merged.config.model_type).export_routes
    if "streaming-graphs" in routes:
        from moonlora.ship.streaming_export import check_streaming_model

        check_streaming_model(merged)  # before the output folder is claimed
        return "streaming"
    try:
        check_route_a(merged.config)
    except ValueError:
        return "b" if "onnx-export" in routes else ""
    return "a" if "bundled-graphs" in routes else "b"


def write_ort(merged, folder: Path, rounding: str, route: str, precision: str = ExportConfig.precision,
              adapted: list[str] | None = None) -> dict:
    if route == "streaming":
        from moonlora.ship.streaming_export import export_streaming, graphs_of

        stats = export_streaming(merged, folder, precision=precision)
        return {**{key: value for key, value in stats.items() if key != "folder"},
                "adapted_graphs": graphs_of(adapted) if adapted is not None else None,
                "route": "streaming: the runtime's five streaming graphs (moonlora.ship.streaming_export)"}
    if route == "a":
        from moonlora.ship.ort_export import write_merged_ort

        stats = write_merged_ort(merged, folder, rounding=rounding)
        return {**stats, "route": "a: bundled graphs patched in place (moonlora.ship.ort_export)"}
    from moonlora.ship.onnx_export import export_onnx

    stats = export_onnx(merged, folder, quantize=precision == "int8")
    return {**{key: value for key, value in stats.items() if not isinstance(value, Path)},
            "route": "b: torch.onnx export + onnxruntime dynamic int8 + ORT format (moonlora.ship.onnx_export)"}
