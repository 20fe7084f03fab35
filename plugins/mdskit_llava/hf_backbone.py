"""``llava-hf``: a pretrained LLaVA (transformers' format, or LISA's layout) as the backbone.

The model is ``LlavaForConditionalGeneration`` with its own CLIP vision
tower, projector, tokenizer and chat template, read from a local folder. The
vision tower stays frozen. ``[SEG]`` is added to the tokenizer when missing
and the embedding table grows by the new rows, as LISA does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from transformers import AutoTokenizer, LlavaForConditionalGeneration, PreTrainedTokenizerBase

from mdskit import SEG_TOKEN
from mdskit.backbone import BackboneOutput, VisionLanguageBackbone
from mdskit.errors import CheckpointError
from mdskit.finetune import load_adapters
from mdskit.geometry import Frame
from mdskit.layouts import detect_layout

from .backbone import IGNORE_INDEX, LlavaBackbone
from .lisa import LLAVA_V1_SYSTEM, load_lisa
from .tokenizer import IMAGE_TOKEN

logger = logging.getLogger(__name__)

# CLIP's pixel mean and standard deviation on the 0-1 scale, used when the
# folder has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PROMPT_KEY = "mdskit_prompt"


class HfLlavaBackbone(LlavaBackbone):
    """A pretrained LLaVA read from a local folder.

    Args:
        pretrained: A folder in transformers' format
            (``LlavaForConditionalGeneration.save_pretrained`` plus the
            tokenizer) or in LISA's layout.
        max_new_tokens: Longest answer generated, in tokens.
        add_seg_token: Add ``[SEG]`` to a tokenizer that lacks it; when
            False such a tokenizer is rejected.
        resize_embeddings: Grow the embedding table and LM head when the
            tokenizer outgrows them; when False a tokenizer with no free
            rows for the new tokens is rejected.
        vision_tower: For a LISA folder, a local CLIP folder that replaces
            the ``mm_vision_tower`` of its config (LISA names a hub id there
            and may leave the tower's weights out).
    """

    name = "llava-hf"

    def __init__(self, pretrained: str, max_new_tokens: int = 96, add_seg_token: bool = True,
                 resize_embeddings: bool = True, vision_tower: str | None = None) -> None:
        VisionLanguageBackbone.__init__(self)
        self.max_new_tokens = max_new_tokens
        folder = Path(pretrained).expanduser()
        layout = detect_layout(folder)
        if layout == "lisa":
            model, tokenizer = load_lisa(folder, vision_tower)
        elif layout == "llava-hf":
            model, tokenizer = _load_llava_hf(folder)
        else:
            raise CheckpointError(
                f"{folder} is a {layout} checkpoint, not a LLaVA folder; the llava-hf backbone reads "
                "LlavaForConditionalGeneration folders (config.json model_type 'llava') or LISA folders.")
        _add_tokens(model, tokenizer, folder, add_seg_token, resize_embeddings)
        model.model.vision_tower.requires_grad_(False)
        self.model, self.tokenizer = model, tokenizer
        load_adapters(model, self.language_model_module(), folder)
        self.prompt_format = _prompt_format(model, tokenizer)
        vision = model.config.vision_config
        side = int(vision.image_size) // int(vision.patch_size)
        self.token_grid = (side, side)
        self.image_size = int(vision.image_size)
        self.hidden_size = int(model.config.text_config.hidden_size)
        self.pixel_mean, self.pixel_std = _pixel_statistics(folder)
        logger.info("loaded the %s backbone from %s: %d x %d image tokens, vocabulary %d", layout, folder,
                    side, side, len(tokenizer))

    def setup(self, corpus: Sequence[str]) -> None:
        """Do nothing: the pretrained model and tokenizer are used as they are."""

    # ----------------------------------------------------------------- images

    def token_frame(self, image_size: tuple[int, int], decoder_frame: Frame) -> Frame:
        """CLIP's frame: the shortest side resized to the tower's input size, the centre cropped."""
        return Frame.centre_crop(image_size, self.image_size)

    def image_features(self, images: Sequence[np.ndarray], image_embeddings: torch.Tensor) -> torch.Tensor:
        """Run the frozen CLIP tower and the projector: B x T x D image-token embeddings."""
        device = image_embeddings.device
        dtype = self.model.model.vision_tower.get_input_embeddings().weight.dtype
        pixels = torch.stack([self._pixels(image) for image in images]).to(device, dtype)
        config = self.model.config
        with torch.no_grad():
            hidden = self.model.model.vision_tower(pixels, output_hidden_states=True).hidden_states
        selected = hidden[config.vision_feature_layer]
        if config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        return self.model.model.multi_modal_projector(selected)

    def _pixels(self, image: np.ndarray) -> torch.Tensor:
        source = np.asarray(image)
        array = source.astype(np.float32)
        if array.ndim == 2:
            array = array[:, :, None]
        if source.dtype != np.uint8 and (array.max(initial=0) > 255 or array.min(initial=0) < 0):
            # Intensities outside 0-255 (16-bit or signed scans) are min-max scaled to it.
            array = 255 * (array - array.min()) / max(float(array.max() - array.min()), 1e-8)
        tensor = torch.from_numpy(array).permute(2, 0, 1).expand(3, -1, -1) / 255.0
        frame = self.token_frame(array.shape[:2], None)
        height, width = (max(round(size * frame.scale), 1) for size in frame.image_size)
        resized = F.interpolate(tensor[None], size=(height, width), mode="bicubic", align_corners=False,
                                antialias=True)[0].clamp(0, 1)
        top, left = (resized.shape[1] - self.image_size) // 2, (resized.shape[2] - self.image_size) // 2
        cropped = resized[:, top:top + self.image_size, left:left + self.image_size]
        mean = torch.tensor(self.pixel_mean).view(3, 1, 1)
        std = torch.tensor(self.pixel_std).view(3, 1, 1)
        return (cropped - mean) / std

    # ----------------------------------------------------------------- text

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def seg_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(SEG_TOKEN))

    def _prompt_ids(self, question: str) -> list[int]:
        tokens = self.token_grid[0] * self.token_grid[1]
        image = self.tokenizer.convert_ids_to_tokens(self.image_token_id)
        prompt_format = self.prompt_format
        if prompt_format["kind"] == "chat_template":
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question.strip()}]}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if text.count(image) != 1:
                raise CheckpointError(
                    f"the chat template renders {text.count(image)} {image} placeholders for one image; use a "
                    "LLaVA chat template that writes the image placeholder once.")
            text = text.replace(image, image * tokens)
        else:
            block = prompt_format["image_start"] + image * tokens + prompt_format["image_end"]
            text = (f"{self.tokenizer.bos_token or ''}{prompt_format['system']} USER: {block}\n"
                    f"{question.strip()} ASSISTANT:")
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _embed(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        embeddings = self.model.get_input_embeddings()(input_ids)
        is_image = input_ids == self.image_token_id
        if int(is_image.sum()) != image_features.shape[0] * image_features.shape[1]:
            raise ValueError(f"the prompts hold {int(is_image.sum())} image tokens for image features of shape "
                             f"{tuple(image_features.shape)}; build prompts with the backbone's template.")
        features = image_features.to(embeddings.dtype).reshape(-1, embeddings.shape[-1])
        return embeddings.masked_scatter(is_image.unsqueeze(-1), features)

    def _causal_lm(self) -> torch.nn.Module:
        return self.model

    def language_model_module(self) -> torch.nn.Module:
        """Return the Llama decoder, without the vision tower whose layers share its layer names."""
        return self.model.model.language_model

    def trainable_parts(self) -> dict[str, list[torch.nn.Parameter]]:
        """Parameters of the parts that fine-tuning can unfreeze, by part name."""
        return {"multimodal_projector": list(self.model.model.multi_modal_projector.parameters()),
                "lm_head": list(self.model.get_output_embeddings().parameters()),
                "embeddings": list(self.model.get_input_embeddings().parameters())}

    def forward(self, image_features: torch.Tensor, questions: Sequence[str],
                answers: Sequence[str]) -> BackboneOutput:
        """Teacher-forced pass; the loss covers the answer tokens only."""
        input_ids, labels, attention_mask = self._batch(questions, answers, image_features.device)
        output = self.model(inputs_embeds=self._embed(input_ids, image_features), attention_mask=attention_mask,
                            labels=labels, output_hidden_states=True)
        return BackboneOutput(
            loss=output.loss,
            hidden_states=output.hidden_states[-1],
            image_token_mask=input_ids == self.image_token_id,
            seg_token_mask=(input_ids == self.seg_token_id) & (labels != IGNORE_INDEX),
        )

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the model (LoRA adapters in files of their own), the tokenizer and the prompt format to ``folder``."""
        self.model.config.update({PROMPT_KEY: self.prompt_format})
        super().save_pretrained(folder)


def _load_llava_hf(folder: Path) -> tuple[LlavaForConditionalGeneration, PreTrainedTokenizerBase]:
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"cannot load the tokenizer of {folder}: {error}; save it there with "
                              "tokenizer.save_pretrained.") from error
    try:
        model = LlavaForConditionalGeneration.from_pretrained(folder)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as error:
        raise CheckpointError(f"cannot load LlavaForConditionalGeneration from {folder}: {error}") from error
    return model, tokenizer


def _add_tokens(model: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, folder: Path,
                add_seg_token: bool, resize_embeddings: bool) -> None:
    """Add ``[SEG]`` if missing and make room for every token in the embedding table."""
    if SEG_TOKEN not in tokenizer.get_vocab():
        if not add_seg_token:
            raise CheckpointError(f"the tokenizer in {folder} has no {SEG_TOKEN} token and add_seg_token is false; "
                                  "set add_seg_token: true or use a tokenizer that has it.")
        tokenizer.add_tokens([SEG_TOKEN], special_tokens=True)
        logger.info("added %s to the tokenizer of %s (id %d)", SEG_TOKEN, folder,
                    tokenizer.convert_tokens_to_ids(SEG_TOKEN))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return
    if not resize_embeddings:
        raise CheckpointError(
            f"the tokenizer in {folder} has {len(tokenizer)} tokens but the embedding table has {rows} rows, "
            f"so there is no room for the new tokens; set resize_embeddings: true to grow the table.")
    model.resize_token_embeddings(len(tokenizer))
    logger.info("resized the token embeddings of %s from %d to %d rows", folder, rows, len(tokenizer))


def _prompt_format(model: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    stored = getattr(model.config, PROMPT_KEY, None)
    if isinstance(stored, dict) and stored.get("kind") in ("chat_template", "llava_v1"):
        return stored
    if tokenizer.chat_template:
        return {"kind": "chat_template"}
    logger.warning("the tokenizer has no chat template; using LLaVA v1's conversation format")
    return {"kind": "llava_v1", "system": LLAVA_V1_SYSTEM, "image_start": "", "image_end": ""}


def _pixel_statistics(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return CLIP_MEAN, CLIP_STD
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    return tuple(config.get("image_mean", CLIP_MEAN)), tuple(config.get("image_std", CLIP_STD))
