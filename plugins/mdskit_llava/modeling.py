"""The transformers model behind the backbone: a causal LM fed image features.

``MdsLlavaForCausalLM`` follows LLaVA's recipe: image features pass through a
projection MLP into the language model's embedding space and replace the
``<image>`` placeholder tokens of the prompt. It is a ``PreTrainedModel``, so
``save_pretrained`` / ``from_pretrained`` read and write a local folder in
transformers' format (``config.json`` and ``model.safetensors``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, PretrainedConfig, PreTrainedModel


class MdsLlavaConfig(PretrainedConfig):
    """Configuration of :class:`MdsLlavaForCausalLM`.

    Args:
        text_config: Configuration of the language model (a Llama config by
            default).
        vision_feature_dim: Width of one image feature vector.
        image_token_id: Id of the ``<image>`` placeholder token.
        seg_token_id: Id of the ``[SEG]`` token.
        token_grid: (rows, cols) of image tokens per image.
    """

    model_type = "mdskit_llava"
    sub_configs = {"text_config": AutoConfig}

    def __init__(self, text_config: dict | PretrainedConfig | None = None, vision_feature_dim: int = 256,
                 image_token_id: int = 0, seg_token_id: int = 0, token_grid: tuple[int, int] = (16, 16),
                 **kwargs) -> None:
        if isinstance(text_config, dict):
            text_config = LlamaConfig(**{key: value for key, value in text_config.items() if key != "model_type"})
        self.text_config = text_config or LlamaConfig()
        self.vision_feature_dim = vision_feature_dim
        self.image_token_id = image_token_id
        self.seg_token_id = seg_token_id
        self.token_grid = tuple(token_grid)
        super().__init__(**kwargs)


class MdsLlavaForCausalLM(PreTrainedModel):
    """A causal language model whose ``<image>`` tokens carry projected image features."""

    config_class = MdsLlavaConfig
    base_model_prefix = "model"
    _no_split_modules = ["LlamaDecoderLayer"]

    def __init__(self, config: MdsLlavaConfig) -> None:
        super().__init__(config)
        hidden = config.text_config.hidden_size
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.multi_modal_projector = nn.Sequential(
            nn.LayerNorm(config.vision_feature_dim),
            nn.Linear(config.vision_feature_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
        )
        self.post_init()

    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Token embeddings with projected image features at the ``<image>`` tokens.

        Args:
            input_ids: B x L token ids; each row contains exactly T ``<image>`` tokens.
            image_features: B x T x Dv image features in token-grid order.

        Returns:
            B x L x D input embeddings.
        """
        embeddings = self.language_model.get_input_embeddings()(input_ids)
        is_image = input_ids == self.config.image_token_id
        expected = image_features.shape[0] * image_features.shape[1]
        if int(is_image.sum()) != expected:
            raise ValueError(
                f"the prompts hold {int(is_image.sum())} <image> tokens but {expected} image features were "
                "given; build prompts with the backbone's own prompt template.")
        # Under autocast the projector returns a lower precision than the
        # embedding table; the scatter needs one dtype.
        projected = self.multi_modal_projector(image_features.to(embeddings.dtype)).to(embeddings.dtype)
        return embeddings.masked_scatter(is_image.unsqueeze(-1), projected.reshape(-1, projected.shape[-1]))

    def forward(self, input_ids: torch.Tensor, image_features: torch.Tensor,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None, **kwargs):
        """Teacher-forced pass; returns the language model's output with hidden states."""
        inputs_embeds = self.embed(input_ids, image_features)
        return self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels,
                                   output_hidden_states=True, **kwargs)
