"""Test-time scaling (TTS) strategies: the interface.

A strategy asks the pipeline for ``num_paths`` sampled answers per request,
receives one :class:`Candidate` per path, and returns one
:class:`Selection`. Strategies never see the ground truth.
"""

from __future__ import annotations

import numbers
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
        chosen: Path indices of the candidates that shaped the answer.
        agreement: H x W float map in [0, 1], the share of the fused
            masks (those of the chosen candidates with ``[SEG]``) that mark
            each pixel, or None when the strategy fuses no masks.
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
        num_paths: Answers sampled per request (m), from 1 to
            :attr:`MAX_NUM_PATHS`.
        temperature: Sampling temperature; ignored when ``num_paths`` is 1,
            which decodes greedily.
    """

    __test__ = False  # not a pytest test class despite the name
    name: ClassVar[str]
    MAX_NUM_PATHS: ClassVar[int] = 64
    """Upper bound on ``num_paths``, set to catch typos such as 400 for 4,
    because every path costs one generation and one mask decode. It is not a
    memory limit."""

    def __init__(self, num_paths: int = 1, temperature: float = 1.0) -> None:
        if isinstance(num_paths, bool) or not isinstance(num_paths, numbers.Integral):
            raise ConfigError(f"num_paths must be an integer, got {num_paths!r}.")
        if num_paths < 1:
            raise ConfigError(f"num_paths must be at least 1, got {num_paths}.")
        if num_paths > self.MAX_NUM_PATHS:
            raise ConfigError(
                f"num_paths {num_paths} exceeds the maximum of {self.MAX_NUM_PATHS} paths per request. "
                "Set a smaller num_paths."
            )
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
