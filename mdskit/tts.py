"""Test-time scaling (TTS) strategies: the interface.

A strategy asks the pipeline for ``num_paths`` sampled answers per request,
receives one :class:`Candidate` per path, and returns one
:class:`Selection`. Strategies never see the ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .errors import ConfigError


@dataclass
class Candidate:
    """One sampled answer with its mask.

    Attributes:
        path_index: Position of the path in the sampled batch, from 0.
        text: Generated answer text.
        diagnosis: Parsed diagnosis, or None when the text names no valid label.
        mask_logits: H x W mask logits in the image frame; all negative when
            the text has no ``[SEG]``.
        seg_found: Whether the text contains ``[SEG]``.
        mean_logprob: Mean log-probability of the generated tokens.
        iou_score: The decoder's predicted IoU (0 without ``[SEG]``).
    """

    path_index: int
    text: str
    diagnosis: str | None
    mask_logits: torch.Tensor
    seg_found: bool
    mean_logprob: float = 0.0
    iou_score: float = 0.0


@dataclass
class Selection:
    """The answer a strategy settled on.

    Attributes:
        text: The chosen answer text.
        diagnosis: The chosen diagnosis, or None when no candidate had one.
        mask: H x W bool mask in the image frame.
        chosen: Indices of the candidates that shaped the answer.
        agreement: H x W float map in [0, 1], the share of the chosen
            candidates that mark each pixel, or None for a single candidate.
        failure: Why no valid answer was found, or None.
    """

    text: str
    diagnosis: str | None
    mask: torch.Tensor
    chosen: list[int] = field(default_factory=list)
    agreement: torch.Tensor | None = None
    failure: str | None = None


class TestTimeScaling:
    """Base class of test-time scaling strategies.

    Args:
        num_paths: Answers sampled per request (m).
        temperature: Sampling temperature; ignored when ``num_paths`` is 1,
            which decodes greedily.
    """

    __test__ = False  # not a pytest test class despite the name
    name: ClassVar[str]

    def __init__(self, num_paths: int = 1, temperature: float = 1.0) -> None:
        if num_paths < 1:
            raise ConfigError(f"num_paths must be at least 1, got {num_paths}.")
        if num_paths > 1 and temperature <= 0:
            raise ConfigError(
                f"temperature {temperature} with num_paths {num_paths} samples identical paths; "
                "set a temperature above 0 or num_paths to 1."
            )
        self.num_paths = num_paths
        self.temperature = temperature

    @property
    def do_sample(self) -> bool:
        """Whether the backbone samples (True) or decodes greedily (False)."""
        return self.num_paths > 1

    def select(self, candidates: Sequence[Candidate]) -> Selection:
        """Choose or fuse one answer from the candidates of one request."""
        raise NotImplementedError
