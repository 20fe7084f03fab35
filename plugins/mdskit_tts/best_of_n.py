"""The 'best-of-n' strategy: keep the candidate with the highest ground-truth-free score."""

from __future__ import annotations

from collections.abc import Sequence

from mdskit.errors import ConfigError
from mdskit.tts import Candidate, Selection, TestTimeScaling

from .candidates import validate_candidates
from .ranking import candidate_masks, choose_highest, highest_position, mean_agreement

SCORES = ("predicted-iou", "logprob", "agreement")
"""Names of the scores: the mask decoder's predicted IoU, the answer's mean
token log-probability, and the mean IoU of the candidate's mask with the
masks of the other candidates."""


class BestOfN(TestTimeScaling):
    """Score every candidate without the ground truth and keep the best one.

    Scores: ``predicted-iou`` is the mask decoder's own IoU estimate (for
    LiteMedSAM, its IoU head); ``logprob`` is the mean log-probability of the
    answer's tokens under the model; ``agreement`` is the mean IoU of the
    candidate's mask with those of the other candidates (a mask that the
    others confirm). Candidates without a valid diagnosis or ``[SEG]`` rank
    below complete ones, and equal scores go to the lowest path index (see
    :func:`~mdskit_tts.ranking.choose_highest`).

    ``logprob`` ranks the candidates before any mask exists, so only the
    winner's mask is decoded; the two mask scores decode every candidate.

    Args:
        num_paths: Paths sampled per request (m).
        temperature: Sampling temperature, above 0 when ``num_paths`` > 1.
        score: One of :data:`SCORES`.
        num_perturbations: Region prompts per path (n), the first unperturbed.
        num_questions: Phrasings of the clinical question.

    Raises:
        ConfigError: ``score`` is not one of :data:`SCORES`, or a count or the
            temperature is invalid (see :class:`~mdskit.tts.TestTimeScaling`).
    """

    name = "best-of-n"

    def __init__(self, num_paths: int = 4, temperature: float = 0.7, score: str = "predicted-iou",
                 num_perturbations: int = 1, num_questions: int = 1) -> None:
        if score not in SCORES:
            raise ConfigError(f"unknown best-of-n score {score!r}; choose one of: {', '.join(SCORES)}.")
        super().__init__(num_paths=num_paths, temperature=temperature, num_perturbations=num_perturbations,
                         num_questions=num_questions)
        self.score = score

    def params(self) -> dict[str, object]:
        return {**super().params(), "score": self.score}

    def masks_needed(self, candidates: Sequence[Candidate]) -> list[int] | None:
        """Return the winner's path index for ``logprob``, which ranks by text; None (all) for mask scores."""
        if self.score != "logprob":
            return None
        ordered = validate_candidates(candidates)
        winner = highest_position(ordered, candidate_scores(ordered, self.score))
        return [ordered[winner].path_index]

    def select(self, candidates: Sequence[Candidate]) -> Selection:
        """Return the highest-scoring candidate, with every candidate's score in ``scores``."""
        ordered = validate_candidates(candidates)
        return choose_highest(ordered, candidate_scores(ordered, self.score), self.name)


def candidate_scores(ordered: Sequence[Candidate], score: str) -> list[float]:
    """Compute one ground-truth-free score per candidate, in the order given."""
    if score == "predicted-iou":
        return [candidate.iou_score for candidate in ordered]
    if score == "logprob":
        return [candidate.mean_logprob for candidate in ordered]
    if score == "agreement":
        return mean_agreement(candidate_masks(ordered))
    raise ConfigError(f"unknown best-of-n score {score!r}; choose one of: {', '.join(SCORES)}.")
