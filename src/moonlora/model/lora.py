"""LoRA on Moonshine with PEFT: attachment and how much the adapter changed (settings: `configs.LoraSettings`)."""

from __future__ import annotations

import math
import warnings

import torch
from peft import LoraConfig, get_peft_model

from moonlora.configs import DEFAULT_TARGETS, LoraSettings
from moonlora.errors import InputError

# `--target-modules` presets. "decoder" leaves the encoder without a trainable weight, so training
# encodes each clip once per run and trains the decoder alone (train.EncoderCache). PEFT matches a
# string with re.fullmatch against each module's full name.
TARGET_PRESETS: dict[str, str | list[str]] = {  # keys: LoraSettings.presets
    "all": list(DEFAULT_TARGETS),
    "decoder": r"(.*\.)?decoder\.layers\.\d+\.(self_attn|encoder_attn|mlp)\.(" + "|".join(DEFAULT_TARGETS) + ")",
}


def expand_targets(target_modules: tuple[str, ...]) -> str | list[str]:
    """What PEFT gets for `--target-modules`: a preset's pattern or list, else the module names."""
    if len(target_modules) == 1 and target_modules[0] in TARGET_PRESETS:
        return TARGET_PRESETS[target_modules[0]]
    return list(target_modules)


def peft_config(settings: LoraSettings) -> LoraConfig:
    """The PEFT LoraConfig for these settings."""
    return LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=expand_targets(settings.target_modules), bias="none")


def attach_lora(model: torch.nn.Module, settings: LoraSettings, seed: int) -> torch.nn.Module:
    """Wrap the model in a PeftModel with a fresh (identity at start) LoRA adapter."""
    torch.manual_seed(seed)  # LoRA A matrices are drawn at random
    try:
        with warnings.catch_warnings():  # peft calls a transformers API deprecated in 5.x; not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, peft_config(settings))
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
