"""Reading the language side of a LISA checkpoint into transformers' LLaVA.

LISA's model is a LLaVA-Llama: the Llama decoder's tensors sit directly
under ``model.`` (``model.embed_tokens``, ``model.layers.N``, ``model.norm``)
with ``lm_head`` beside it, the CLIP tower under
``model.vision_tower.vision_tower.vision_model.``, and the projector under
``model.mm_projector.`` (``0`` and ``2`` for the two-layer GELU MLP, or a
single linear layer). SAM (``model.visual_model.``) and the ``[SEG]``
projection (``model.text_hidden_fcs.``) are read by the mask decoder and the
composite model. ``config.json`` is a Llama config with LLaVA's ``mm_*``
keys. The image placeholder of LLaVA's code is the id -200, not a token, so
``<image>`` is added to the tokenizer here.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from transformers import (AutoTokenizer, CLIPConfig, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, PreTrainedTokenizerBase)

from mdskit.errors import CheckpointError
from mdskit.layouts import LISA_SAM_PREFIX, check_keys, check_shapes, read_config, read_weights

from .tokenizer import IMAGE_TOKEN

logger = logging.getLogger(__name__)

TOWER_PREFIX = "model.vision_tower.vision_tower."
# Read by the mask decoder and the composite model, not by the backbone.
OTHER_PREFIXES = (LISA_SAM_PREFIX, "model.text_hidden_fcs.")
# LLaVA v1's conversation format, which LISA uses.
LLAVA_V1_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant "
                   "gives helpful, detailed, and polite answers to the human's questions.")
# CLIP ViT towers use 64-wide attention heads (ViT-B/16, ViT-L/14).
CLIP_HEAD_DIM = 64
LLAMA_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
              "vocab_size", "max_position_embeddings", "rms_norm_eps", "hidden_act", "rope_theta",
              "bos_token_id", "eos_token_id", "pad_token_id")


def load_lisa(folder: Path, vision_tower: str | None = None) -> tuple[LlavaForConditionalGeneration,
                                                                       PreTrainedTokenizerBase]:
    """Build ``LlavaForConditionalGeneration`` with a LISA checkpoint's language and vision weights.

    Args:
        folder: The LISA folder (``config.json``, weights, tokenizer).
        vision_tower: A local CLIP folder whose ``config.json`` describes
            the tower; None reads ``mm_vision_tower`` when it is a local
            folder, else infers the sizes from the tower's weights.

    Raises:
        CheckpointError: The tokenizer or weights cannot be read, or the
            weights do not fit LISA's layout (missing and unexpected keys
            are named).
    """
    config = read_config(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"cannot load the tokenizer of LISA folder {folder}: {error}") from error
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)

    state = read_weights(folder, exclude=OTHER_PREFIXES)
    tower_folder = _local_tower(config, vision_tower, folder)
    if tower_folder is not None and not any(name.startswith(TOWER_PREFIX) for name in state):
        state.update(_tower_weights(tower_folder))
    mapped, projector_act = _map_names(state)
    llava_config = LlavaConfig(
        vision_config=_vision_config(config, state, tower_folder, folder),
        text_config=LlamaConfig(**{key: config[key] for key in LLAMA_KEYS if key in config},
                                tie_word_embeddings=False),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=int(config.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default", projector_hidden_act=projector_act,
    )
    model = LlavaForConditionalGeneration(llava_config)
    expected = model.state_dict()
    if not any(name.startswith("model.vision_tower.vision_model.") for name in expected):
        # transformers 5 names the CLIP tower's modules without the vision_model level.
        mapped = {name.replace("model.vision_tower.vision_model.", "model.vision_tower.", 1): tensor
                  for name, tensor in mapped.items()}
    source = f"LISA checkpoint {folder}"
    check_keys(expected.keys(), mapped, source, "Pass a folder saved by LISA's merge script (LISAForCausalLM).")
    check_shapes(expected, mapped, source)
    model.load_state_dict(mapped)
    start_end = bool(config.get("mm_use_im_start_end", False))
    model.config.update({"mdskit_prompt": {
        "kind": "llava_v1", "system": LLAVA_V1_SYSTEM,
        "image_start": "<im_start>" if start_end else "", "image_end": "<im_end>" if start_end else ""}})
    logger.info("read LISA checkpoint %s: %d-layer Llama, %s projector", folder,
                llava_config.text_config.num_hidden_layers, projector_act)
    return model, tokenizer


def _map_names(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Rename LISA's tensors to LlavaForConditionalGeneration's; return them and the projector activation."""
    mapped: dict[str, torch.Tensor] = {}
    single_linear = "model.mm_projector.weight" in state
    for name, tensor in state.items():
        if name.startswith(TOWER_PREFIX):
            mapped["model.vision_tower." + name[len(TOWER_PREFIX):]] = tensor
        elif name.startswith("model.mm_projector."):
            mapped.update(_projector_tensors(name, tensor, single_linear))
        elif name.startswith("model."):
            mapped["model.language_model." + name[len("model."):]] = tensor
        else:
            mapped[name] = tensor
    # A linear projector becomes linear_1 with an identity activation and an identity linear_2.
    return mapped, "linear" if single_linear else "gelu"


def _projector_tensors(name: str, tensor: torch.Tensor, single_linear: bool) -> dict[str, torch.Tensor]:
    suffix = name.rsplit(".", 1)[1]
    if single_linear:
        hidden = tensor.shape[0]
        identity = torch.eye(hidden, dtype=tensor.dtype) if suffix == "weight" else torch.zeros(hidden, dtype=tensor.dtype)
        return {f"model.multi_modal_projector.linear_1.{suffix}": tensor,
                f"model.multi_modal_projector.linear_2.{suffix}": identity}
    match = re.match(r"model\.mm_projector\.(\d+)\.", name)
    index = {"0": "linear_1", "2": "linear_2"}.get(match.group(1) if match else "", name)
    return {f"model.multi_modal_projector.{index}.{suffix}": tensor}


def _local_tower(config: dict, vision_tower: str | None, folder: Path) -> Path | None:
    """Return the local CLIP folder named by ``vision_tower`` or ``mm_vision_tower``, if there is one.

    A relative ``mm_vision_tower`` is looked up beside the LISA folder's
    files first. A hub id (no such folder) returns None.
    """
    if vision_tower:
        local = Path(vision_tower).expanduser()
        if not (local / "config.json").is_file():
            raise CheckpointError(f"vision_tower {local} has no config.json; pass a local CLIP folder.")
        return local
    name = config.get("mm_vision_tower") or ""
    for local in (folder / name, Path(name).expanduser()):
        if name and (local / "config.json").is_file():
            return local
    return None


def _tower_weights(tower_folder: Path) -> dict[str, torch.Tensor]:
    """Read a CLIP folder's vision tower under LISA's names (CLIPModel and CLIPVisionModel saves)."""
    weights = read_weights(tower_folder, exclude=("text_model.", "text_projection.", "visual_projection.",
                                                  "logit_scale"))
    prefix = TOWER_PREFIX + "vision_model."
    return {prefix + name.removeprefix("vision_model."): tensor for name, tensor in weights.items()}


def _vision_config(config: dict, state: dict[str, torch.Tensor], tower_folder: Path | None,
                   folder: Path) -> CLIPVisionConfig:
    if tower_folder is not None:
        clip = read_config(tower_folder)
        if clip.get("model_type") == "clip":
            return CLIPConfig(**clip).vision_config
        return CLIPVisionConfig(**{key: value for key, value in clip.items() if key != "model_type"})
    prefix = TOWER_PREFIX + "vision_model."
    patch_name = prefix + "embeddings.patch_embedding.weight"
    if patch_name not in state:
        raise CheckpointError(
            f"LISA checkpoint {folder} has no CLIP tower weights ({patch_name} is missing) and "
            f"mm_vision_tower {config.get('mm_vision_tower')!r} is not a local folder; set mm_vision_tower in "
            "its config.json to a local CLIP folder.")
    # NOTE: a CLIP tower found only as weights is assumed to have 64-wide heads and CLIP's defaults elsewhere.
    patch = state[patch_name]
    hidden, patch_size = int(patch.shape[0]), int(patch.shape[-1])
    positions = int(state[prefix + "embeddings.position_embedding.weight"].shape[0])
    layers = {int(match.group(1)) for name in state if (match := re.match(re.escape(prefix) + r"encoder\.layers\.(\d+)\.", name))}
    side = round((positions - 1) ** 0.5)
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=int(state[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=len(layers), num_attention_heads=max(hidden // CLIP_HEAD_DIM, 1),
        image_size=side * patch_size, patch_size=patch_size)
