"""Scores of single candidates and the pick of the highest-scoring one."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mdskit import SEG_TOKEN
from mdskit.tts import Candidate, Selection, candidate_masks, mean_agreement, pairwise_iou, require_decoded

from .candidates import empty_mask

__all__ = ["agreement_map", "candidate_masks", "choose_highest", "highest_position", "mask_iou", "mean_agreement",
           "pairwise_iou"]


def mask_iou(mask: torch.Tensor, truth: torch.Tensor) -> float:
    """IoU of two H x W bool masks; 1.0 when both are empty (LISA's gIoU convention)."""
    union = int((mask | truth).sum())
    if union == 0:
        return 1.0
    return int((mask & truth).sum()) / union


def agreement_map(ordered: Sequence[Candidate]) -> torch.Tensor | None:
    """Share of the decoded candidates with ``[SEG]`` that mark each pixel, or None with fewer than two of them."""
    with_seg = [candidate.mask_logits > 0 for candidate in ordered if candidate.seg_found and candidate.decoded]
    if len(with_seg) < 2:
        return None
    return torch.stack(with_seg).to(torch.float32).mean(dim=0)


def highest_position(ordered: Sequence[Candidate], scores: Sequence[float], prefer_complete: bool = True) -> int:
    """Return the position of the best candidate by the ranking that :func:`choose_highest` states."""

    def rank(position: int) -> tuple[int, float]:
        candidate = ordered[position]
        completeness = int(candidate.diagnosis is not None) + int(candidate.seg_found) if prefer_complete else 0
        score = scores[position]
        return completeness, -math.inf if math.isnan(score) else score

    # max() returns the first of equal keys, and positions are in path-index order.
    return max(range(len(ordered)), key=rank)


def choose_highest(ordered: Sequence[Candidate], scores: Sequence[float], strategy: str,
                   prefer_complete: bool = True) -> Selection:
    """Select the candidate with the highest score, preferring complete answers.

    With ``prefer_complete``, candidates are ranked first by completeness (a
    valid diagnosis and a ``[SEG]`` count one point each), and then by
    score. Without it only the score counts. A NaN score ranks
    below every number. Equal ranks go to the lowest path index. The mask
    is the winner's ``logits > 0``, empty without ``[SEG]``.
    ``failure`` says what the winner lacks, so a request whose candidates
    are all incomplete still gets a scored answer. Only the winner's mask
    must be decoded; ``agreement`` covers the decoded candidates.
    """
    winner = ordered[highest_position(ordered, scores, prefer_complete)]
    require_decoded([winner])
    mask = winner.mask_logits > 0 if winner.seg_found else empty_mask(winner.mask_logits)

    problems = []
    if winner.diagnosis is None:
        problems.append(f"The candidate that '{strategy}' chose names no valid diagnosis.")
    if not winner.seg_found:
        problems.append(f"The candidate that '{strategy}' chose contains no {SEG_TOKEN}, so the mask is empty.")
    return Selection(
        text=winner.text,
        diagnosis=winner.diagnosis,
        mask=mask,
        chosen=[winner.path_index],
        agreement=agreement_map(ordered),
        failure=" ".join(problems) or None,
        scores={candidate.path_index: float(score) for candidate, score in zip(ordered, scores, strict=True)},
    )
