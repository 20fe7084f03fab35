"""Checks on a request's candidates and the pixel-wise fusion of their masks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mdskit.tts import Candidate


def validate_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Check the candidates of one request and return them sorted by path index.

    Raises:
        ValueError: There are no candidates, two share a path index, a
            ``mean_logprob`` is NaN or +inf, or the decoded mask logits are
            not floating-point H x W tensors of one shape, dtype and device.
            Candidates without a decoded mask (``mask_logits`` None) pass;
            reading their masks raises later.
    """
    if not candidates:
        raise ValueError("no candidates to select from. The pipeline must pass at least one sampled path.")
    ordered = sorted(candidates, key=lambda candidate: candidate.path_index)

    indices = [candidate.path_index for candidate in ordered]
    if len(set(indices)) != len(indices):
        raise ValueError(f"candidate path indices must be unique, got {indices}.")

    decoded = [candidate for candidate in ordered if candidate.decoded]
    for candidate in ordered:
        if math.isnan(candidate.mean_logprob) or candidate.mean_logprob == math.inf:
            raise ValueError(
                f"candidate {candidate.path_index}: mean_logprob is {candidate.mean_logprob}, "
                "but a log-probability must be finite or -inf.")
        if candidate.decoded:
            _validate_mask_logits(candidate, decoded[0])
    return ordered


def _validate_mask_logits(candidate: Candidate, first: Candidate) -> None:
    logits = candidate.mask_logits
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        received = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"candidate {candidate.path_index}: mask_logits must be a floating-point H x W tensor, got {received}.")
    reference = first.mask_logits
    if logits.shape != reference.shape:
        raise ValueError(
            f"candidate {candidate.path_index}: mask_logits of size {tuple(logits.shape)} differ from "
            f"{tuple(reference.shape)} of candidate {first.path_index}. All paths of a request must "
            "return masks in the same image frame.")
    if logits.dtype != reference.dtype or logits.device != reference.device:
        raise ValueError(
            f"candidate {candidate.path_index}: mask_logits are {logits.dtype} on {logits.device}, but those of "
            f"candidate {first.path_index} are {reference.dtype} on {reference.device}. "
            "All paths of a request must use one dtype and device.")


def fuse_masks(mask_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fuse K binary masks by pixel-wise majority vote.

    A pixel is in the fused mask when more than half of the K masks
    (``logits > 0``) mark it. At a tie, which needs an even K, it is in the
    fused mask when the mean of the K logits there is above 0.

    Args:
        mask_logits: K x H x W mask logits, K >= 1.

    Returns:
        The fused H x W bool mask and the H x W float32 agreement map in
        [0, 1], the share of the K masks that mark each pixel. Both are on
        the device of ``mask_logits``.
    """
    if mask_logits.ndim != 3 or mask_logits.shape[0] == 0:
        raise ValueError(f"expected K x H x W mask logits with K >= 1, got size {tuple(mask_logits.shape)}.")
    count = mask_logits.shape[0]

    votes = (mask_logits > 0).sum(dim=0)
    majority = 2 * votes > count
    tie = 2 * votes == count
    mask = majority | (tie & (mask_logits.mean(dim=0) > 0))
    agreement = votes.to(torch.float32) / count
    return mask, agreement


def empty_mask(like: torch.Tensor) -> torch.Tensor:
    """Return an all-False bool mask of the size and device of the H x W tensor ``like``."""
    return torch.zeros(like.shape, dtype=torch.bool, device=like.device)
