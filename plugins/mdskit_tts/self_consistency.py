"""The 'self-consistency' strategy: majority vote over sampled diagnoses, then mask fusion."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from mdskit import SEG_TOKEN
from mdskit.errors import ConfigError
from mdskit.tts import Candidate, Selection, TestTimeScaling, require_decoded

from .candidates import empty_mask, fuse_masks, validate_candidates

DEFAULT_NUM_PATHS = 4
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_FUSED_PATHS = 3


class SelfConsistency(TestTimeScaling):
    """Vote on the diagnosis over sampled paths and fuse the masks of the winner's voters.

    Every candidate with a valid diagnosis casts one vote. The label with
    the most votes wins. A tie between labels goes to the label whose
    voters have the higher summed ``mean_logprob``, and then to the label
    that appears first in path-index order.

    The mask is the pixel-wise majority of the masks (``logits > 0``) of
    the winner's voting paths that contain ``[SEG]``, at most
    ``max_fused_paths`` of them, the most probable first (highest
    ``mean_logprob``, then lowest path index). A pixel tie goes to the sign
    of the fused masks' mean logit (see :func:`fuse_masks`). The text is
    that of the winner's voter with the highest ``mean_logprob``, the
    lowest path index breaking a tie.

    When no candidate names a valid diagnosis, the diagnosis is None, the
    mask fuses the candidates with ``[SEG]`` by the same rule, and the text
    is that of the candidate with the highest ``mean_logprob``.

    Each candidate votes, so with n region prompts per path every path
    casts n equal votes and the vote's outcome is that of the paths, while
    the mask fuses the n masks of each fused path.

    Only the fused masks are decoded (see :meth:`masks_needed`): with the
    default cap of 3 paths, m = 8 paths decode 3 masks, not 8.

    Args:
        num_paths: Paths sampled per request, from 1 to ``MAX_NUM_PATHS``.
        temperature: Sampling temperature, above 0 when ``num_paths`` > 1.
        num_perturbations: Region prompts per path (n), the first unperturbed.
        num_questions: Phrasings of the clinical question.
        max_fused_paths: Voting paths whose masks are fused, 0 for all.

    Raises:
        ConfigError: ``max_fused_paths`` is not an integer of 0 or more, or
            a count or the temperature is invalid (see
            :class:`~mdskit.tts.TestTimeScaling`).
    """

    name = "self-consistency"

    def __init__(self, num_paths: int = DEFAULT_NUM_PATHS, temperature: float = DEFAULT_TEMPERATURE,
                 num_perturbations: int = 1, num_questions: int = 1,
                 max_fused_paths: int = DEFAULT_MAX_FUSED_PATHS) -> None:
        super().__init__(num_paths=num_paths, temperature=temperature, num_perturbations=num_perturbations,
                         num_questions=num_questions)
        if isinstance(max_fused_paths, bool) or not isinstance(max_fused_paths, numbers.Integral) \
                or max_fused_paths < 0:
            raise ConfigError(f"max_fused_paths (--max-fused-paths) must be an integer of 0 (every voting path) "
                              f"or more, got {max_fused_paths!r}.")
        self.max_fused_paths = int(max_fused_paths)

    def params(self) -> dict[str, object]:
        return {**super().params(), "max_fused_paths": self.max_fused_paths}

    def masks_needed(self, candidates: Sequence[Candidate]) -> list[int]:
        """Return the path indices of the masks to fuse: those of the fused voting paths."""
        ordered = validate_candidates(candidates)
        vote = self._vote(ordered)
        return [ordered[position].path_index for position in vote.masks_read]

    def select(self, candidates: Sequence[Candidate]) -> Selection:
        """Vote on the diagnosis and fuse the masks of the paths that agree.

        ``chosen`` lists the winner's voters, or, without a valid diagnosis,
        the candidates whose masks or text were used. When no chosen
        candidate contains ``[SEG]``, the mask is empty, ``agreement`` is
        None and ``failure`` is set.

        Raises:
            ValueError: The candidates fail :func:`validate_candidates`,
                for example masks of different sizes, or a fused mask was
                not decoded.
        """
        ordered = validate_candidates(candidates)
        vote = self._vote(ordered)
        mask, agreement = _fuse(ordered, vote)
        return Selection(
            text=ordered[vote.text_source].text,
            diagnosis=vote.diagnosis,
            mask=mask,
            chosen=[ordered[position].path_index for position in vote.chosen],
            agreement=agreement,
            failure=vote.failure,
        )

    def _vote(self, ordered: Sequence[Candidate]) -> _Vote:
        """Settle the diagnosis, the text and the masks to fuse from the texts alone."""
        votes = _count_votes(ordered)
        if not votes:
            return self._vote_without_diagnosis(ordered)
        diagnosis = _winning_label(ordered, votes)
        voters = votes[diagnosis]
        mask_sources = _most_probable_paths(ordered, voters, self.max_fused_paths)
        failure = None
        if not mask_sources:
            failure = (f"None of the {len(voters)} paths that voted for '{diagnosis}' "
                       f"contains {SEG_TOKEN}, so the mask is empty.")
        return _Vote(diagnosis, _highest_logprob(ordered, voters), mask_sources, list(voters), failure)

    def _vote_without_diagnosis(self, ordered: Sequence[Candidate]) -> _Vote:
        all_positions = range(len(ordered))
        text_source = _highest_logprob(ordered, all_positions)
        mask_sources = _most_probable_paths(ordered, all_positions, self.max_fused_paths)
        failure = f"None of the {len(ordered)} sampled paths names a valid diagnosis."
        if not mask_sources:
            failure += f" None contains {SEG_TOKEN}, so the mask is empty."
        return _Vote(None, text_source, mask_sources, sorted({text_source, *mask_sources}), failure)


@dataclass
class _Vote:
    """The outcome of a vote, settled before any mask is read; positions index the ordered candidates."""

    diagnosis: str | None
    text_source: int
    mask_sources: list[int]
    chosen: list[int]
    failure: str | None

    @property
    def masks_read(self) -> list[int]:
        """The fused masks, or the text's own (empty) mask for the image size when none has ``[SEG]``."""
        return self.mask_sources or [self.text_source]


class RegionPerturbation(SelfConsistency):
    """Fuse the masks of n perturbed region prompts per path, and vote over the paths.

    The same rules as self-consistency. The defaults decode one path
    greedily and prompt the mask decoder with the prompt module's region
    prompt and three perturbed versions of it (n = 4). With ``num_paths``
    above 1 the m x n candidates are used together.
    """

    name = "region-perturbation"

    def __init__(self, num_paths: int = 1, temperature: float = DEFAULT_TEMPERATURE, num_perturbations: int = 4,
                 num_questions: int = 1, max_fused_paths: int = DEFAULT_MAX_FUSED_PATHS) -> None:
        super().__init__(num_paths=num_paths, temperature=temperature, num_perturbations=num_perturbations,
                         num_questions=num_questions, max_fused_paths=max_fused_paths)


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
                 num_questions: int = 3, max_fused_paths: int = DEFAULT_MAX_FUSED_PATHS) -> None:
        super().__init__(num_paths=num_paths, temperature=temperature, num_perturbations=num_perturbations,
                         num_questions=num_questions, max_fused_paths=max_fused_paths)


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


def _most_probable_paths(ordered: Sequence[Candidate], positions: Iterable[int], limit: int) -> list[int]:
    """Return the positions with ``[SEG]`` of the ``limit`` most probable paths among ``positions`` (0: all).

    A path is one sampled answer to one phrasing. Its n region prompts are
    n candidates with its text and log-probability, selected or dropped
    together. Paths rank by ``mean_logprob``, the lowest path index breaking
    a tie. The positions come back in path-index order.
    """
    paths: dict[tuple[int, int], list[int]] = {}
    for position in positions:
        candidate = ordered[position]
        if candidate.seg_found:
            paths.setdefault((candidate.question_index, candidate.sampled_path), []).append(position)
    ranked = sorted(paths.values(), key=lambda members: (-ordered[members[0]].mean_logprob, members[0]))
    selected = ranked if limit == 0 else ranked[:limit]
    return sorted(position for members in selected for position in members)


def _fuse(ordered: Sequence[Candidate], vote: _Vote) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fuse the vote's masks; an empty mask and no agreement map when none has ``[SEG]``."""
    sources = [ordered[position] for position in vote.masks_read]
    require_decoded(sources)
    if not vote.mask_sources:
        return empty_mask(sources[0].mask_logits), None
    return fuse_masks(torch.stack([candidate.mask_logits for candidate in sources]))
