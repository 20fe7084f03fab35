"""Mask decoders: the interface.

A mask decoder owns a frozen image encoder and a trainable promptable
decoder (the SAM family). The image embeddings are computed once per image
and reused; the decoder turns them and the prompts into mask logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from .geometry import Frame
from .prompt import DecoderPrompts


@dataclass
class DecoderOutput:
    """Mask decoder output.

    Attributes:
        mask_logits: B x 1 x h x w logits covering the whole prompt frame
            (h, w may be lower than the frame's size).
        iou_scores: B x 1 predicted IoU of each mask.
    """

    mask_logits: torch.Tensor
    iou_scores: torch.Tensor


class MaskDecoder(nn.Module):
    """Base class of SAM-style mask decoders.

    Attributes:
        name: Registry name.
        prompt_embed_dim: Width C of sparse prompt embeddings (256 for SAM).
    """

    name: ClassVar[str]
    prompt_embed_dim: int

    def encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Image embeddings, B x C x h x w, from the frozen image encoder.

        Args:
            images: H x W x 3 uint8 RGB arrays of any size.
        """
        raise NotImplementedError

    def prompt_frame(self, image_size: tuple[int, int]) -> Frame:
        """The frame of the decoder's input and prompts for an image size."""
        raise NotImplementedError

    def forward(
        self,
        image_embeddings: torch.Tensor,
        sparse_embeddings: torch.Tensor,
        prompts: DecoderPrompts,
    ) -> DecoderOutput:
        """Decode one mask per sample.

        Args:
            image_embeddings: B x C x h x w from :meth:`encode_images`.
            sparse_embeddings: B x K x C extra sparse prompt embeddings (the
                projected ``[SEG]`` states), added to the prompt encoder's own.
            prompts: Dense, box and point prompts in the prompt frame.
        """
        raise NotImplementedError
