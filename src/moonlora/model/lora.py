"""LoRA on Moonshine with PEFT: attachment and how much the adapter changed (settings: `configs.LoraSettings`).

`--target-modules` presets belong to the model family (`moonlora.model.families`); every target is
checked against the loaded model's module names (`check_targets`) before any decode or training.

Variants go through PEFT for every family: DoRA (`use_dora`) and the `init_lora_weights` starts. PiSSA
and OLoRA move each weight's top subspace into the adapter and leave the residual in the base model, so
the adapter alone means nothing to the original base: `write_adapter` writes it as the plain LoRA that
makes the same change to the original weights, and `lora_delta_norm` measures the change from the start.
"""

from __future__ import annotations

import json
import math
import re
import warnings
import weakref
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file

from moonlora.configs import LoraSettings
from moonlora.errors import InputError, LoraTargetError
from moonlora.model.families import MOONSHINE, ModelFamily, family_for

# Layer types PEFT's LoRA can wrap; a target that names only other modules adapts nothing.
LORA_LAYER_TYPES = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
# LoraSettings.init_weights -> PEFT's init_lora_weights ("pissa": the full SVD, deterministic, so a resumed
# run starts from the very same residual base).
PEFT_INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
BASE_MOVING_INITS = ("pissa", "olora")  # inits that subtract the adapter's start from the base weights
ADAPTER = "default"  # the PEFT adapter name moonlora trains and saves
# The adapter each attach_lora model started from (CPU copies, by PEFT state-dict key): the reference of
# lora_delta_norm and lora_is_identity, and what write_adapter subtracts for PiSSA and OLoRA.
_STARTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def model_family(model: torch.nn.Module) -> ModelFamily:
    """The family of a transformers model, from its config's model_type."""
    return family_for(getattr(model.config, "model_type", None))


def expand_targets(target_modules: tuple[str, ...], family: ModelFamily = MOONSHINE) -> str | list[str]:
    """What PEFT gets for `--target-modules`: a preset's pattern or list, else the module names."""
    if len(target_modules) == 1 and target_modules[0] in family.target_presets:
        preset = family.target_presets[target_modules[0]]
        return preset if isinstance(preset, str) else list(preset)
    return list(target_modules)


def adaptable_module_names(model: torch.nn.Module) -> list[str]:
    """Full names of the modules LoRA can wrap in `model` (a model without an adapter)."""
    return [name for name, module in model.named_modules() if isinstance(module, LORA_LAYER_TYPES)]


def _names_a_module(target: str, module_names: list[str]) -> bool:
    # PEFT's rule for a list entry: the full name, or its last dotted parts.
    return any(name == target or name.endswith("." + target) for name in module_names)


def unmatched_targets(target_modules: tuple[str, ...], model: torch.nn.Module) -> list[str]:
    """The `--target-modules` entries (or the preset) that name no module LoRA can wrap in `model`."""
    names = adaptable_module_names(model)
    expanded = expand_targets(target_modules, model_family(model))
    if isinstance(expanded, str):
        return [] if any(re.fullmatch(expanded, name) for name in names) else list(target_modules)
    return [target for target in expanded if not _names_a_module(target, names)]


def check_targets(model: torch.nn.Module, target_modules: tuple[str, ...]) -> None:
    """Refuse targets that adapt nothing in this model, in one line (PEFT skips a list entry that
    matches nothing as long as another one matches)."""
    unmatched = unmatched_targets(target_modules, model)
    if not unmatched:
        return
    family = model_family(model)
    layer_names = sorted({name.rsplit(".", 1)[-1] for name in adaptable_module_names(model)})
    raise LoraTargetError(
        f"--target-modules {','.join(target_modules)}: {', '.join(unmatched)} names no layer of this "
        f"{family.name} model that LoRA can adapt; its layers: {', '.join(layer_names)} "
        f"(or one preset: {', '.join(family.target_presets)})"
    )


def peft_config(settings: LoraSettings, family: ModelFamily = MOONSHINE) -> LoraConfig:
    """The PEFT LoraConfig for these settings (the defaults give PEFT's own: use_dora False, init True)."""
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=expand_targets(settings.target_modules, family), bias="none",
                      use_dora=settings.variant == "dora", init_lora_weights=PEFT_INITS[settings.init_weights])


def attach_lora(model: torch.nn.Module, settings: LoraSettings, seed: int) -> torch.nn.Module:
    """Wrap the model in a PeftModel with a fresh adapter: it computes the base model at start (exactly,
    or for PiSSA and OLoRA within float rounding: their base keeps W - BA)."""
    check_targets(model, settings.target_modules)
    torch.manual_seed(seed)  # LoRA A matrices are drawn at random
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in 5.x; not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            wrapped = get_peft_model(model, peft_config(settings, model_family(model)))
    except ValueError as error:
        raise InputError(f"--target-modules {','.join(settings.target_modules)}: {error}") from None
    _STARTS[wrapped] = adapter_state(wrapped)
    return wrapped


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's tensors (PEFT state-dict keys), copied to the CPU."""
    return {key: tensor.detach().clone().cpu() for key, tensor in get_peft_model_state_dict(model).items()}


def moves_base(model: torch.nn.Module) -> bool:
    """The adapter's init (PiSSA, OLoRA) subtracted its start from the base weights of this model."""
    config = getattr(model, "peft_config", {}).get(ADAPTER)
    return getattr(config, "init_lora_weights", True) in BASE_MOVING_INITS


def _start(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter `model` started from (attach_lora); a PiSSA or OLoRA adapter needs it to mean anything."""
    try:
        return _STARTS[model]
    except KeyError:
        raise InputError("this PiSSA/OLoRA adapter was not attached by moonlora in this process: its start, which "
                         "the base weights gave up, is unknown; load the adapter folder its run saved") from None


SHIPPED_CHANGES = ("r", "lora_alpha", "init_lora_weights")  # the config fields shipped_adapter may change


def shipped_adapter(model: torch.nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """The adapter as moonlora saves it, for the original base model: (its PEFT config as a dict, its tensors
    by state-dict key). LoRA and DoRA as they are. PiSSA and OLoRA (trained as W_res + BA, W_res = W - B0A0)
    as the plain LoRA [B | -B0] [A; A0] of rank 2r and alpha 2*alpha (the same scaling), which adds
    BA - B0A0 to the original W: PEFT's `path_initial_model_for_weight_conversion`, without its detour
    through a second adapter on disk. A DoRA magnitude is kept: it normalises W_res + BA, the same matrix."""
    config = model.peft_config[ADAPTER].to_dict()
    tensors = get_peft_model_state_dict(model)
    if not moves_base(model):
        return config, tensors
    start, converted = _start(model), {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().cpu()
        if key.endswith(".lora_A.weight"):
            tensor = torch.cat([tensor, start[key].to(tensor.dtype)], dim=0)
        elif key.endswith(".lora_B.weight"):
            tensor = torch.cat([tensor, -start[key].to(tensor.dtype)], dim=1)
        converted[key] = tensor.contiguous()
    config.update(r=2 * config["r"], lora_alpha=2 * config["lora_alpha"], init_lora_weights=True)
    return config, converted


def write_adapter(model: torch.nn.Module, folder: str | Path) -> None:
    """PEFT's save_pretrained of the adapter, with the tensors and config of `shipped_adapter`: every
    folder moonlora writes applies to the original base model."""
    model.save_pretrained(str(folder))
    if not moves_base(model):
        return
    config, tensors = shipped_adapter(model)
    folder = Path(folder)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config_path = folder / "adapter_config.json"
    saved = json.loads(config_path.read_text(encoding="utf-8"))
    saved.update({key: config[key] for key in SHIPPED_CHANGES})
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def trainable_summary(model: torch.nn.Module) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    modules = sum(1 for name, _ in model.named_modules() if name.endswith("lora_A.default"))
    return {"trainable_params": trainable, "total_params": total,
            "trainable_percent": 100.0 * trainable / total, "lora_modules": modules}


def lora_layers(model: torch.nn.Module):
    """(module name, module) of every layer that holds moonlora's adapter."""
    return [(name, module) for name, module in model.named_modules()
            if hasattr(module, "lora_A") and hasattr(module, "lora_B") and ADAPTER in getattr(module, "lora_A", {})]


def _is_dora(module) -> bool:
    return bool(getattr(module, "use_dora", {}).get(ADAPTER))


def layer_delta(model: torch.nn.Module, name: str, module) -> torch.Tensor:
    """How much this layer's effective weight differs from the original base weight.

    LoRA: scaling * B @ A. PiSSA/OLoRA: the same minus the start, scaling * B0 @ A0, that the base gave
    up. DoRA: m / ||W' + scaling * B @ A|| * (W' + scaling * B @ A) - W, rows normalised as PEFT does
    (W' is the base layer's weight, W the original one: W' + scaling * B0 @ A0 for PiSSA/OLoRA).
    """
    a = module.lora_A[ADAPTER].weight.detach().float()
    b = module.lora_B[ADAPTER].weight.detach().float()
    scaling = module.scaling[ADAPTER]
    delta = (b @ a) * scaling
    start = None
    if moves_base(model):
        initial = _start(model)
        a0, b0 = (initial[f"{name}.{part}.weight"].to(a.device).float() for part in ("lora_A", "lora_B"))
        start = (b0 @ a0) * scaling
    if not _is_dora(module):
        return delta if start is None else delta - start
    weight = module.get_base_layer().weight.detach().float()
    combined = weight + delta
    magnitude = module.lora_magnitude_vector[ADAPTER].weight.detach().float()
    effective = (magnitude / torch.linalg.norm(combined, dim=1))[:, None] * combined
    return effective - (weight if start is None else weight + start)


def lora_delta_norm(model: torch.nn.Module) -> float:
    """sqrt(sum over adapted layers of ||layer_delta||_F^2): 0 while the adapter is where it started.

    The plan's "adapter efficacy" check: if this stays 0 the adapter cannot change any output.
    """
    return math.sqrt(sum(float(layer_delta(model, name, module).pow(2).sum()) for name, module in lora_layers(model)))


def lora_is_identity(model: torch.nn.Module) -> bool:
    """True when the adapted model computes exactly the base model: every LoRA B matrix is zero, and for
    DoRA every magnitude is still the one it started with (the weight's own row norms).

    PiSSA and OLoRA start as the base model only within float rounding (W - BA + BA), so they never
    count: their scores are decoded, not copied from the baseline.
    """
    if moves_base(model):
        return False
    start = _STARTS.get(model)
    layers = lora_layers(model)
    for name, module in layers:
        if bool(module.lora_B[ADAPTER].weight.detach().any()):
            return False
        if _is_dora(module):
            initial = None if start is None else start.get(f"{name}.lora_magnitude_vector")
            magnitude = module.lora_magnitude_vector[ADAPTER].weight.detach().cpu()
            if initial is None or not torch.equal(magnitude, initial):
                return False
    return bool(layers)
