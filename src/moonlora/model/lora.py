"""LoRA on Moonshine with PEFT: attachment and how much the adapter changed (settings: `configs.LoraSettings`).

`--target-modules` presets belong to the model family (`moonlora.model.families`); every target is
checked against the loaded model's module names (`check_targets`) before any decode or training.
"""

from __future__ import annotations

import math
import re
import warnings

import torch
from peft import LoraConfig, get_peft_model

from moonlora.configs import LoraSettings
from moonlora.errors import InputError, LoraTargetError
from moonlora.model.families import MOONSHINE, ModelFamily, family_for

# Layer types PEFT's LoRA can wrap; a target that names only other modules adapts nothing.
LORA_LAYER_TYPES = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)


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
    """The PEFT LoraConfig for these settings."""
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=expand_targets(settings.target_modules, family), bias="none")


def attach_lora(model: torch.nn.Module, settings: LoraSettings, seed: int) -> torch.nn.Module:
    """Wrap the model in a PeftModel with a fresh (identity at start) LoRA adapter."""
    check_targets(model, settings.target_modules)
    torch.manual_seed(seed)  # LoRA A matrices are drawn at random
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in 5.x; not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, peft_config(settings, model_family(model)))
    except ValueError as error:
        raise InputError(f"--target-modules {','.join(settings.target_modules)}: {error}") from None


def trainable_summary(model: torch.nn.Module) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    modules = sum(1 for name, _ in model.named_modules() if name.endswith("lora_A.default"))
    return {"trainable_params": trainable, "total_params": total,
            "trainable_percent": 100.0 * trainable / total, "lora_modules": modules}


def lora_delta_norm(model: torch.nn.Module) -> float:
    """sqrt(sum over adapted layers of ||scaling * B @ A||_F^2): 0 for an identity adapter.

    The plan's "adapter efficacy" check: if this stays 0 the adapter cannot change any output.
    """
    total = 0.0
    for module in model.modules():
        if hasattr(module, "lora_A") and hasattr(module, "lora_B") and "default" in getattr(module, "lora_A", {}):
            a = module.lora_A["default"].weight.detach().float()
            b = module.lora_B["default"].weight.detach().float()
            delta = (b @ a) * module.scaling["default"]
            total += float(delta.pow(2).sum())
    return math.sqrt(total)


def lora_is_identity(model: torch.nn.Module) -> bool:
    """True when every LoRA B matrix is zero, i.e. the adapted model computes the base model."""
    found = False
    for module in model.modules():
        if hasattr(module, "lora_B") and "default" in getattr(module, "lora_B", {}):
            found = True
            if bool(module.lora_B["default"].weight.detach().any()):
                return False
    return found
