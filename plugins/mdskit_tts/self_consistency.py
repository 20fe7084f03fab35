"""The 'self-consistency' strategy: majority vote over sampled diagnoses, then mask fusion."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mdskit import SEG_TOKEN
from mdskit.tts import Candidate, Selection, TestTimeScaling

from .candidates import empty_mask, fuse_masks, validate_candidates

DEFAULT_NUM_PATHS = 4
DEFAULT_TEMPERATURE = 0.7


class SelfConsistency(TestTimeScaling):
    """Vote on the diagnosis over sampled paths and fuse the masks of the winner's voters.

    Every candidate with a valid diagnosis casts one vote. The label with
    the most votes wins. A tie between labels goes to the label whose
    voters have the higher summed ``mean_logprob``, and then to the label
    that appears first in path-index order.

    The mask is the pixel-wise majority of the masks (``logits > 0``) of
    the winner's voters that contain ``[SEG]``. A pixel tie goes to the sign
    of those voters' mean logit (see :func:`fuse_masks`). The text is that
    of the winner's voter with the highest ``mean_logprob``, the lowest path
    index breaking a tie.

    When no candidate names a valid diagnosis, the diagnosis is None, the
    mask fuses every candidate with ``[SEG]`` by the same rule, and the text
    is that of the candidate with the highest ``mean_logprob``.

    Each candidate votes, so with n region prompts per path every path
    casts n equal votes and the vote's outcome is that of the paths, while
    the mask fuses the perturbed masks too.

    Args:
        num_paths: Paths sampled per request, from 1 to ``MAX_NUM_PATHS``.
        temperature: Sampling temperature, above 0 when ``num_paths`` > 1.
        num_perturbations: Region prompts per path (n), the first unperturbed.
        num_questions: Phrasings of the clinical question.
    """

    name = "self-consistency"

    def __init__(self, num_paths: int = DEFAULT_NUM_PATHS, temperature: float = DEFAULT_TEMPERATURE,
                 num_perturbations: int = 1, num_questions: int = 1) -> None:
        super().__init__(num_paths=num_paths, temperature=temperature, num_perturbations=num_perturbations,
                         num_questions=num_questions)

    def select(self, candidates: Sequence[Candidate]) -> Selection:
        """Vote on the diagnosis and fuse the masks of the paths that agree.

        ``chosen`` lists the winner's voters, or, without a valid diagnosis,
        the candidates whose masks or text were used. When no chosen
        candidate contains ``[SEG]``, the mask is empty, ``agreement`` is
        None and ``failure`` is set.

        Raises:
            ValueError: The candidates fail :func:`validate_candidates`,
                for example masks of different sizes.
        """
        ordered = validate_candidates(candidates)
        mask_logits = torch.stack([candidate.mask_logits for candidate in ordered])

        votes = _count_votes(ordered)
        if not votes:
            return _select_without_diagnosis(ordered, mask_logits)

        diagnosis = _winning_label(ordered, votes)
        voters = votes[diagnosis]
        text_source = _highest_logprob(ordered, voters)
        mask, agreement, mask_sources = _fuse_with_seg(ordered, mask_logits, voters)

        failure = None
        if not mask_sources:
            failure = (f"None of the {len(voters)} paths that voted for '{diagnosis}' "
                       f"contains {SEG_TOKEN}, so the mask is empty.")
        return Selection(
            text=ordered[text_source].text,
            diagnosis=diagnosis,
            mask=mask,
            chosen=[ordered[position].path_index for position in voters],
            agreement=agreement,
            failure=failure,
        )


class RegionPerturbation(SelfConsistency):
    """Fuse the masks of n perturbed region prompts per path, and vote over the paths.

    The same rules as self-consistency. The defaults decode one path
    greedily and prompt the mask decoder with the prompt module's region
    prompt and three perturbed versions of it (n = 4). With ``num_paths``
    above 1 the m x n candidates are used together.
    """

    name = "region-perturbation"

    def __init__(self, num_paths: int = 1, temperature: float = DEFAULT_TEMPERATURE, num_perturbations: int = 4,
                 num_questions: int = 1) -> None:
        super().__init__(num_paths=num_paths, temperature=temperature, num_perturbations=num_perturbations,
                         num_questions=num_questions)


class PromptEnsemble(SelfConsistency):
    """Ask several phrasings of the clinical question and vote over their answers.

    The same rules as self-consistency. The first phrasing is the sample's
    own question, the others are the modality's other phrasings in their
    listed order (fewer when the modality has fewer). With the defaults
    each phrasing is decoded greedily (m = 1), so the answers differ only
    through the question.
    """

    name = "prompt-ensemble"

    def __init__(self, num_paths: int = 1, temperature: float = DEFAULT_TEMPERATURE, num_perturbations: int = 1,
                 num_questions: int = 3) -> None:
        super().__init__(num_paths=num_paths, temperature=temperature, num_perturbations=num_perturbations,
                         num_questions=num_questions)


def _count_votes(ordered: Sequence[Candidate]) -> dict[str, list[int]]:
    """Map each diagnosis to the positions of its voters, labels in order of first appearance."""
    votes: dict[str, list[int]] = {}
    for position, candidate in enumerate(ordered):
        if candidate.diagnosis is not None:
            votes.setdefault(candidate.diagnosis, []).append(position)
    return votes


def _winning_label(ordered: Sequence[Candidate], votes: dict[str, list[int]]) -> str:
    """Return the label with the most votes, breaking ties as the class docstring states."""
    max_votes = max(len(voters) for voters in votes.values())
    tied = [label for label, voters in votes.items() if len(voters) == max_votes]

    # max() returns the first of equal keys, and ``tied`` is in order of
    # first appearance, which settles ties of the summed log-probability.
    # fsum keeps the sum independent of the order of the terms.
    def summed_logprob(label: str) -> float:
        return math.fsum(ordered[position].mean_logprob for position in votes[label])

    return max(tied, key=summed_logprob)


def _highest_logprob(ordered: Sequence[Candidate], positions: Sequence[int]) -> int:
    """Return the position with the highest ``mean_logprob``, the first of equal ones."""
    return max(positions, key=lambda position: ordered[position].mean_logprob)


def _fuse_with_seg(ordered: Sequence[Candidate], mask_logits: torch.Tensor,
                   positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """Fuse the masks of the candidates at ``positions`` that contain ``[SEG]``.

    Returns:
        The fused mask, the agreement map (None when no candidate has
        ``[SEG]``, with an empty mask) and the positions whose masks were fused.
    """
    mask_sources = [position for position in positions if ordered[position].seg_found]
    if not mask_sources:
        return empty_mask(mask_logits[0]), None, []
    index = torch.tensor(mask_sources, device=mask_logits.device)
    mask, agreement = fuse_masks(mask_logits.index_select(0, index))
    return mask, agreement, mask_sources


def _select_without_diagnosis(ordered: Sequence[Candidate], mask_logits: torch.Tensor) -> Selection:
    all_positions = range(len(ordered))
    text_source = _highest_logprob(ordered, all_positions)
    mask, agreement, mask_sources = _fuse_with_seg(ordered, mask_logits, all_positions)

    failure = f"None of the {len(ordered)} sampled paths names a valid diagnosis."
    if not mask_sources:
        failure += f" None contains {SEG_TOKEN}, so the mask is empty."
    used = sorted({text_source, *mask_sources})
    return Selection(
        text=ordered[text_source].text,
        diagnosis=None,
        mask=mask,
        chosen=[ordered[position].path_index for position in used],
        agreement=agreement,
        failure=failure,
    )
