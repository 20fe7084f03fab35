"""Parameter-efficient fine-tuning: LoRA adapters, trainable parts, gradient checkpointing.

Without a ``finetune`` section every weight trains, as the tiny backbone
trained from scratch needs. A method's ``finetune`` section in
``registry.yaml`` switches to LISA-style fine-tuning of a pretrained
backbone. Every weight is frozen, LoRA adapters from peft go into the
language model's attention projections, and the listed parts are unfrozen. The defaults are LISA's: rank 8, alpha 16, dropout
0.05 on ``q_proj`` and ``v_proj``, with the ``[SEG]`` projection, the mask
decoder, the LM head and the token embeddings trained in full.

Checkpoints store the base weights under their original names and the
adapters beside them (:func:`split_adapters`), so a resumed run continues
with the same adapters and their optimizer state.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError, ConfigError
from .layouts import check_keys

logger = logging.getLogger(__name__)

TRAINABLE_PARTS = ("seg_projection", "multimodal_projector", "mask_decoder", "lm_head", "embeddings",
                   "prompt_module")
ADAPTABLE_TYPES = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)
ADAPTER_FILE = "lora_adapters.safetensors"
ADAPTER_CONFIG = "lora_config.json"
# Attribute of a language model that records the settings of its adapters.
LORA_ATTRIBUTE = "mdskit_lora_settings"


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings (peft's ``LoraConfig``).

    Attributes:
        r: Rank of each adapter.
        alpha: Scaling numerator; the update is scaled by alpha / r.
        dropout: Dropout on the adapter's input.
        target_modules: Names (or name suffixes) of the language model's
            layers that get an adapter.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings: the weights that train and the memory-saving options.

    Attributes:
        lora: LoRA settings, or None to train the unfrozen parts only.
        trainable: Parts trained in full, from ``TRAINABLE_PARTS``.
        gradient_checkpointing: Recompute the language model's activations
            in the backward pass instead of storing them.
    """

    lora: LoraSettings | None = field(default_factory=LoraSettings)
    trainable: tuple[str, ...] = ("seg_projection", "mask_decoder", "lm_head", "embeddings")
    gradient_checkpointing: bool = False

    def as_dict(self) -> dict[str, Any]:
        lora = None if self.lora is None else {
            item.name: (list(value) if isinstance(value := getattr(self.lora, item.name), tuple) else value)
            for item in fields(self.lora)}
        return {"lora": lora, "trainable": list(self.trainable), "gradient_checkpointing": self.gradient_checkpointing}


def parse_finetune(raw: Any, where: str) -> FinetuneConfig | None:
    """Validate a ``finetune`` section of ``registry.yaml`` (None: train every weight)."""
    if raw is None:
        return None
    _check_keys(raw, FinetuneConfig, where, "finetune", "finetune must be a mapping with lora, trainable and "
                "gradient_checkpointing")
    lora = _parse_lora(raw.get("lora", {}), where)
    trainable = raw.get("trainable", list(FinetuneConfig.trainable))
    if not isinstance(trainable, list) or any(part not in TRAINABLE_PARTS for part in trainable):
        raise ConfigError(f"{where}: invalid finetune trainable {trainable!r}; list parts from "
                          f"{', '.join(TRAINABLE_PARTS)}.")
    checkpointing = raw.get("gradient_checkpointing", False)
    if not isinstance(checkpointing, bool):
        raise ConfigError(f"{where}: finetune gradient_checkpointing must be true or false, got {checkpointing!r}.")
    return FinetuneConfig(lora=lora, trainable=tuple(trainable), gradient_checkpointing=checkpointing)


def override_lora(config: FinetuneConfig | None, overrides: dict[str, Any], where: str) -> FinetuneConfig:
    """Replace LoRA settings of ``config`` and validate the result as a ``finetune`` section.

    A method without fine-tuning settings, or with ``lora: null``, gets LoRA
    with the defaults for the settings that ``overrides`` leaves out.

    Args:
        config: The method's fine-tuning settings, or None.
        overrides: ``LoraSettings`` field names and their new values.
        where: Where the values come from, for error messages.
    """
    raw = {} if config is None else config.as_dict()
    raw["lora"] = {**(raw.get("lora") or {}), **overrides}
    return parse_finetune(raw, where)


def _check_keys(raw: Any, settings_class: type, where: str, section: str, expected: str) -> None:
    """Raise ConfigError unless ``raw`` is a mapping whose keys are fields of ``settings_class``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {expected}.")
    known = {item.name for item in fields(settings_class)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown {section} keys {unknown}; valid keys: {sorted(known)}.")


def _parse_lora(raw: Any, where: str) -> LoraSettings | None:
    if raw is None:
        return None
    _check_keys(raw, LoraSettings, where, "lora", "finetune lora must be a mapping (r, alpha, dropout, "
                "target_modules) or null")
    targets = raw.get("target_modules", LoraSettings.target_modules)
    if not isinstance(targets, (list, tuple)):
        raise ConfigError(f"{where}: lora target_modules must be a list of layer names, got {targets!r}; "
                          f"write [{targets}] for a single layer.")
    settings = LoraSettings(**{**raw, "target_modules": tuple(targets)})
    if isinstance(settings.r, bool) or not isinstance(settings.r, int) or settings.r < 1:
        raise ConfigError(f"{where}: invalid lora r {settings.r!r}; set a positive integer such as 8.")
    if (isinstance(settings.alpha, bool) or not isinstance(settings.alpha, (int, float))
            or not math.isfinite(settings.alpha) or settings.alpha <= 0):
        raise ConfigError(f"{where}: invalid lora alpha {settings.alpha!r}; set a positive number such as 16.")
    if not isinstance(settings.dropout, (int, float)) or not 0 <= settings.dropout < 1:
        raise ConfigError(f"{where}: invalid lora dropout {settings.dropout!r}; set a number in [0, 1).")
    if not settings.target_modules or not all(isinstance(name, str) and name for name in settings.target_modules):
        raise ConfigError(f"{where}: invalid lora target_modules {list(settings.target_modules)!r}; "
                          "list layer names such as q_proj and v_proj.")
    return settings


def check_lora_targets(language_model: nn.Module, targets: tuple[str, ...]) -> dict[str, int]:
    """Count the layers each LoRA target matches; raise ConfigError for a target that matches none.

    A target matches a layer whose full name equals it or ends with
    ``"." + target``, as in peft.
    """
    names = [name for name, module in language_model.named_modules() if isinstance(module, ADAPTABLE_TYPES)]
    counts = {target: sum(1 for name in names if name == target or name.endswith("." + target))
              for target in targets}
    unmatched = [target for target, count in counts.items() if count == 0]
    if unmatched:
        available = sorted({name.rsplit(".", 1)[-1] for name in names})
        raise ConfigError(
            f"LoRA target modules {unmatched} match no layer of the language model; its layer names are: "
            f"{', '.join(available)}. Set finetune.lora.target_modules or --lora-targets to some of them.")
    return counts


def apply_finetuning(model: nn.Module, config: FinetuneConfig) -> dict[str, int]:
    """Freeze ``model``, add LoRA adapters and unfreeze the chosen parts.

    Args:
        model: An :class:`~mdskit.model.MdsModel` whose backbone provides
            ``language_model_module()`` and ``trainable_parts()``.
        config: The fine-tuning settings.

    Returns:
        Trainable and total parameter counts (``trainable``, ``total``).

    Raises:
        ConfigError: A LoRA target matches no layer, or the backbone or
            decoder lacks a part listed in ``trainable``. Both are checked
            before any weight changes.
    """
    backbone = model.backbone
    if not hasattr(backbone, "language_model_module"):
        raise ConfigError(f"backbone '{backbone.name}' does not support fine-tuning settings or LoRA; remove the "
                          "method's finetune section and the --lora options.")
    language_model = backbone.language_model_module()
    existing = getattr(language_model, LORA_ATTRIBUTE, None)
    if config.lora is not None and existing is None:
        check_lora_targets(language_model, config.lora.target_modules)
    parts = _part_parameters(model, config.trainable)

    model.requires_grad_(False)
    if existing is not None:
        # Adapters loaded from a checkpoint being resumed keep their weights.
        if config.lora is not None and existing != config.lora:
            logger.warning("keeping the checkpoint's LoRA adapters (%s) instead of the method's (%s)",
                           existing, config.lora)
        for name, parameter in language_model.named_parameters():
            parameter.requires_grad_(config.lora is not None and "lora_" in name)
    elif config.lora is not None:
        _inject_lora(language_model, config.lora)
    for parameters in parts.values():
        for parameter in parameters:
            parameter.requires_grad_(True)
    if config.gradient_checkpointing:
        enable_checkpointing(language_model)

    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    total = sum(parameter.numel() for parameter in model.parameters())
    lora = config.lora
    logger.info("fine-tuning %d of %d parameters (%.2f%%): LoRA %s, trained in full: %s",
                trainable, total, 100 * trainable / max(total, 1),
                "off" if lora is None else f"r={lora.r} alpha={lora.alpha} dropout={lora.dropout} on "
                f"{', '.join(lora.target_modules)}", ", ".join(config.trainable) or "nothing")
    logger.info("memory-saving options: gradient checkpointing %s, frozen image encoder, frozen weights "
                "outside the adapters and listed parts (no optimizer state for them)",
                "on" if config.gradient_checkpointing else "off")
    return {"trainable": trainable, "total": total}


def enable_checkpointing(language_model: nn.Module) -> None:
    """Turn on activation (gradient) checkpointing in a transformers model."""
    # Non-reentrant checkpointing lets gradients reach the adapters even
    # though the frozen embeddings' outputs do not require grad.
    options = {"use_reentrant": False}
    if hasattr(language_model, "activation_checkpointing_enable"):
        # transformers 5.25 renames gradient_checkpointing_enable to this.
        language_model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)


def checkpointing_enabled(language_model: nn.Module) -> bool:
    """Return whether any module of ``language_model`` recomputes its activations in the backward pass."""
    return any(getattr(module, "gradient_checkpointing", False) for module in language_model.modules())


def _part_parameters(model: nn.Module, names: tuple[str, ...]) -> dict[str, list[nn.Parameter]]:
    backbone_parts = model.backbone.trainable_parts()
    parts = {}
    for name in names:
        if name == "seg_projection":
            parts[name] = list(model.seg_projection.parameters())
        elif name == "prompt_module":
            parts[name] = list(model.prompt_module.parameters()) if model.prompt_module is not None else []
        elif name == "mask_decoder":
            head = getattr(model.decoder, "mask_decoder", None)
            if head is None:
                raise ConfigError(f"mask decoder '{model.decoder.name}' has no mask_decoder module to train; "
                                  "remove mask_decoder from finetune.trainable.")
            parts[name] = list(head.parameters())
        elif name in backbone_parts:
            parts[name] = backbone_parts[name]
        else:
            raise ConfigError(f"backbone '{model.backbone.name}' has no {name} part; remove it from "
                              f"finetune.trainable (its parts: {', '.join(sorted(backbone_parts))}).")
    return parts


def _inject_lora(language_model: nn.Module, settings: LoraSettings) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    lora_config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                             target_modules=list(settings.target_modules), bias="none")
    inject_adapter_in_model(lora_config, language_model)
    setattr(language_model, LORA_ATTRIBUTE, settings)
    for name, parameter in language_model.named_parameters():
        parameter.requires_grad_("lora_" in name)


def lora_layers(module: nn.Module) -> list[nn.Module]:
    """Return the peft LoRA layers inside ``module`` (empty when peft is not in use)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [layer for layer in module.modules() if isinstance(layer, LoraLayer)]


def split_adapters(model: nn.Module) -> tuple[dict[str, torch.Tensor] | None, dict[str, torch.Tensor]]:
    """Split ``model``'s state dict into base weights (under their original names) and LoRA tensors.

    Returns (None, {}) when ``model`` has no adapters, so callers save as usual.
    """
    if not lora_layers(model):
        return None, {}
    base, adapters = {}, {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            adapters[name] = tensor.detach().contiguous().cpu()
        else:
            base[name.replace(".base_layer.", ".")] = tensor
    return base, adapters


def save_adapters(language_model: nn.Module, adapters: dict[str, torch.Tensor], folder: str | Path) -> None:
    """Write the LoRA tensors and their settings beside a saved backbone."""
    if not adapters:
        return
    settings = getattr(language_model, LORA_ATTRIBUTE)
    folder = Path(folder)
    save_file(adapters, str(folder / ADAPTER_FILE))
    record = {item.name: getattr(settings, item.name) for item in fields(settings)}
    record["target_modules"] = list(settings.target_modules)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(record, indent=2), encoding="utf-8")


def load_adapters(model: nn.Module, language_model: nn.Module, folder: str | Path) -> bool:
    """Put the LoRA adapters saved in ``folder`` back into ``language_model``; False when there are none.

    Raises:
        CheckpointError: The adapter files are unreadable or do not fit the model.
    """
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        return False
    try:
        settings = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        adapters = load_file(str(folder / ADAPTER_FILE))
    except (OSError, ValueError, SafetensorError) as error:
        raise CheckpointError(f"cannot read the LoRA adapters in {folder}: {error}; restore the checkpoint.") from error
    _inject_lora(language_model, LoraSettings(**{**settings, "target_modules": tuple(settings["target_modules"])}))
    expected = {name for name in model.state_dict() if "lora_" in name}
    check_keys(expected, adapters, f"LoRA adapters in {folder}", "Retrain or restore the checkpoint.")
    model.load_state_dict(adapters, strict=False)
    logger.info("loaded %d LoRA adapter tensors from %s", len(adapters), folder)
    return True
