"""Vision-language backbones: the interface.

A backbone reads image features and a question, generates the answer text
(chain of thought, diagnosis and ``[SEG]``), and exposes the last-layer
hidden states of the image tokens and of each ``[SEG]`` token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from .geometry import Frame


@dataclass
class BackboneOutput:
    """Teacher-forced backbone output for a batch of B sequences of length L.

    Attributes:
        loss: Mean token cross-entropy over the answer tokens, or None when
            no answers were given.
        hidden_states: B x L x D last-layer hidden states.
        image_token_mask: B x L bool, True at the T image tokens of each row
            in grid (row-major) order.
        seg_token_mask: B x L bool, True at every ``[SEG]`` token of the answer.
    """

    loss: torch.Tensor | None
    hidden_states: torch.Tensor
    image_token_mask: torch.Tensor
    seg_token_mask: torch.Tensor


@dataclass
class GeneratedAnswers:
    """Answers sampled for a batch of B requests with m paths each.

    Attributes:
        texts: B lists of m answer texts (special tokens other than
            ``[SEG]`` removed).
        mean_logprobs: B lists of m mean token log-probabilities.
    """

    texts: list[list[str]]
    mean_logprobs: list[list[float]]


class VisionLanguageBackbone(nn.Module):
    """Base class of vision-language backbones.

    Attributes:
        name: Registry name.
        hidden_size: Width D of the last-layer hidden states.
        token_grid: (rows, cols) of the image-token grid; T = rows * cols.
    """

    name: ClassVar[str]
    hidden_size: int
    token_grid: tuple[int, int]

    def setup(self, corpus: Sequence[str]) -> None:
        """Finish building a freshly configured backbone before training.

        Backbones whose vocabulary is learned from the training texts (a
        small tokenizer trained from scratch) build it here. A backbone that
        was loaded from a checkpoint ignores the call.
        """

    def token_frame(self, image_size: tuple[int, int], decoder_frame: Frame) -> Frame:
        """The frame that the image-token grid covers, for an image size.

        Args:
            image_size: (H, W) of the image.
            decoder_frame: The mask decoder's frame for that image, for
                backbones that reuse the decoder's image embeddings.
        """
        raise NotImplementedError

    def image_features(self, images: Sequence[np.ndarray], image_embeddings: torch.Tensor) -> torch.Tensor:
        """Vision features, B x T x Dv, one per image token.

        Args:
            images: H x W x 3 uint8 RGB arrays, for backbones with their own
                vision tower.
            image_embeddings: The mask decoder's image embeddings, for
                backbones that reuse them instead of a tower of their own.
        """
        raise NotImplementedError

    def forward(self, image_features: torch.Tensor, questions: Sequence[str],
                answers: Sequence[str]) -> BackboneOutput:
        """Teacher-forced pass over question and answer, with the loss."""
        raise NotImplementedError

    def target_token_count(self, questions: Sequence[str], answers: Sequence[str]) -> int | None:
        """Return the number of answer tokens that the loss of :meth:`forward` averages over.

        Training that splits a batch over processes or micro-batches uses it
        to weight each part's mean cross-entropy, so the sum equals the mean
        over the whole batch. None (the default) weights the parts equally.
        """
        return None

    def generate(self, image_features: torch.Tensor, questions: Sequence[str], num_paths: int = 1,
                 temperature: float = 1.0, do_sample: bool = False) -> GeneratedAnswers:
        """Generate ``num_paths`` answers per request in one batched call."""
        raise NotImplementedError

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the weights (safetensors), config and tokenizer to ``folder``."""
        raise NotImplementedError
