"""Similarity-to-mask (prompt) modules: the interface.

A prompt module turns the projected image-token embeddings and the projected
``[SEG]`` embedding into prompts for a SAM-style mask decoder: a dense mask
(RVLS2M), a box, or points. It never sees the ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .geometry import Frame


@dataclass
class DecoderPrompts:
    """Prompts for a mask decoder, all in the decoder's prompt frame.

    Attributes:
        dense_masks: B x 1 x Hp x Wp float mask prompt, or None.
        boxes: B x 4 boxes, xyxy in prompt-frame pixels, or None.
        points: (B x K x 2 xy coordinates in prompt-frame pixels,
            B x K labels with 1 foreground and 0 background), or None.
        similarity: Per sample, an H x W similarity map in that image's
            frame (sizes differ between images), kept for inspection, or None.
    """

    dense_masks: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    points: tuple[torch.Tensor, torch.Tensor] | None = None
    similarity: list[torch.Tensor] | None = None


class PromptModule(nn.Module):
    """Base class of similarity-to-mask prompt modules.

    Subclasses set ``name`` and implement :meth:`forward`. Constructor
    keyword arguments are the parameters that ``registry.yaml`` may set.
    """

    name: ClassVar[str]

    def forward(
        self,
        image_token_embeddings: torch.Tensor,
        seg_embeddings: torch.Tensor,
        token_grid: tuple[int, int],
        token_frames: Sequence[Frame],
        prompt_frames: Sequence[Frame],
    ) -> DecoderPrompts:
        """Build decoder prompts for a batch.

        Args:
            image_token_embeddings: B x T x C projected image-token states,
                T = token_grid[0] * token_grid[1], row-major.
            seg_embeddings: B x C projected ``[SEG]`` states.
            token_grid: (rows, cols) of the image-token grid.
            token_frames: Per sample, where the token grid's frame lies
                relative to the image.
            prompt_frames: Per sample, the decoder's prompt frame.

        Returns:
            The prompts, each batched over B.
        """
        raise NotImplementedError


def token_similarity(image_token_embeddings: torch.Tensor, seg_embeddings: torch.Tensor) -> torch.Tensor:
    """Dot product of each image token with the ``[SEG]`` embedding: B x T."""
    return torch.einsum("btc,bc->bt", image_token_embeddings, seg_embeddings)
