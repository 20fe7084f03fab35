"""The 'oracle' strategy: pick by the ground truth, an upper bound for analysis only."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mdskit.errors import MdskitError
from mdskit.tts import Candidate, GroundTruth, Selection, TestTimeScaling

from .candidates import validate_candidates
from .ranking import candidate_masks, choose_highest, mask_iou


class GroundTruthMissingError(MdskitError):
    """Raised when the oracle receives a request without a ground truth."""


class Oracle(TestTimeScaling):
    """Keep the candidate closest to the ground truth: an UPPER BOUND, not a usable strategy.

    Sim4Seg (Song, Zhou and Shen, arXiv 2511.06665) picks among its
    sampled candidates by Q = mean(gIoU, cIoU) against the ground-truth
    mask. For one request gIoU and cIoU are both the candidate's IoU, so Q
    is the IoU (1 when the candidate's mask and the truth are both empty).
    With ``use_diagnosis`` the candidates with the true diagnosis rank above
    the others before Q is compared, so the oracle bounds the diagnosis
    accuracy too. Equal ranks go to the lowest path index.

    It needs the ground truth, so it runs only in evaluation, where outputs
    name it as an upper bound, and :meth:`select` raises without it.

    Args:
        num_paths: Paths sampled per request (m).
        temperature: Sampling temperature, above 0 when ``num_paths`` > 1.
        num_perturbations: Region prompts per path (n), the first unperturbed.
        num_questions: Phrasings of the clinical question.
        use_diagnosis: Rank candidates with the true diagnosis first.
    """

    name = "oracle"
    uses_ground_truth = True

    def __init__(self, num_paths: int = 4, temperature: float = 0.7, num_perturbations: int = 1,
                 num_questions: int = 1, use_diagnosis: bool = True) -> None:
        super().__init__(num_paths=num_paths, temperature=temperature, num_perturbations=num_perturbations,
                         num_questions=num_questions)
        self.use_diagnosis = bool(use_diagnosis)

    def params(self) -> dict[str, object]:
        return {**super().params(), "use_diagnosis": self.use_diagnosis, "upper_bound": True}

    def select(self, candidates: Sequence[Candidate], ground_truth: GroundTruth | None = None) -> Selection:
        """Return the candidate closest to the ground truth.

        ``scores`` contains each candidate's 2 x (diagnosis is true) + IoU
        with the ground truth, the IoU term alone without ``use_diagnosis``.

        Raises:
            GroundTruthMissingError: ``ground_truth`` is None.
        """
        if ground_truth is None:
            raise GroundTruthMissingError(
                "strategy 'oracle' selects candidates with the ground truth, so it is an upper bound for "
                "evaluation only and cannot answer a request without a ground-truth mask and diagnosis. "
                "Use a ground-truth-free strategy such as best-of-n or self-consistency.")
        ordered = validate_candidates(candidates)
        masks = candidate_masks(ordered)
        truth = ground_truth.mask.to(device=masks.device, dtype=torch.bool)
        if truth.shape != masks.shape[1:]:
            raise ValueError(f"ground-truth mask of size {tuple(truth.shape)} differs from the candidates' "
                             f"masks of size {tuple(masks.shape[1:])}.")
        scores = []
        for candidate, mask in zip(ordered, masks, strict=True):
            correct = self.use_diagnosis and candidate.diagnosis == ground_truth.label
            # IoU is at most 1, so a true diagnosis outranks any mask.
            scores.append(2.0 * correct + mask_iou(mask, truth))
        return choose_highest(ordered, scores, self.name, prefer_complete=False)
