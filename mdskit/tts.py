"""Test-time scaling (TTS) strategies: the interface.

A strategy asks the pipeline for ``num_paths`` sampled answers (m) per
phrasing of the question (``num_questions``), and for ``num_perturbations``
region prompts (n) per answer. It receives one :class:`Candidate` per
(phrasing, path, prompt) and returns one :class:`Selection`. Only strategies
with ``uses_ground_truth`` set (the oracle, an upper bound for analysis)
see the ground truth, and the pipeline passes it to them in evaluation only.

Decoding a mask costs more than sampling a path on a CPU, so the pipeline
first builds the candidates without masks and calls the strategy's
:meth:`TestTimeScaling.masks_needed` which masks its selection reads; only
those are decoded.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from .errors import ConfigError, PluginError


@dataclass
class Candidate:
    """One sampled answer with its mask.

    Attributes:
        path_index: Position of the candidate among the candidates of the
            request, from 0, unique within the request. With several
            phrasings or prompts it is ``(question_index * m + sampled_path)
            * n + perturbation``, so with one of each it is the path.
        text: Generated answer text.
        diagnosis: Parsed diagnosis, or None when the text names no valid label.
        mask_logits: H x W mask logits in the image frame; all negative when
            the text has no ``[SEG]``. None when the mask was not decoded,
            because the strategy's selection does not read it.
        seg_found: Whether the text contains ``[SEG]``.
        mean_logprob: Mean log-probability of the generated tokens.
        iou_score: The decoder's predicted IoU (0 without ``[SEG]``; None
            when the mask was not decoded).
        sampled_path: Which sampled answer of its phrasing the candidate
            comes from, from 0 (None on input means ``path_index``).
        perturbation: Which region prompt the mask comes from: 0 is the
            prompt module's own prompt, 1 to n - 1 are perturbed versions.
        question_index: Which phrasing of the question was asked, 0 being
            the sample's own question.
    """

    path_index: int
    text: str
    diagnosis: str | None
    mask_logits: torch.Tensor | None
    seg_found: bool
    mean_logprob: float = 0.0
    iou_score: float | None = 0.0
    sampled_path: int | None = None
    perturbation: int = 0
    question_index: int = 0

    def __post_init__(self) -> None:
        if self.sampled_path is None:
            self.sampled_path = self.path_index

    @property
    def decoded(self) -> bool:
        """Whether the candidate's mask was decoded."""
        return self.mask_logits is not None


@dataclass
class GroundTruth:
    """The reference answer of a request, for strategies with ``uses_ground_truth``.

    Attributes:
        mask: H x W bool mask in the image frame.
        label: The true diagnosis.
    """

    mask: torch.Tensor
    label: str


@dataclass
class Selection:
    """The answer a strategy settled on.

    Attributes:
        text: The chosen answer text.
        diagnosis: The chosen diagnosis, or None when no candidate had one.
        mask: H x W bool mask in the image frame.
        chosen: Path indices of the candidates that shaped the answer.
        agreement: H x W float map in [0, 1], the share of the masks
            behind the answer that mark each pixel (the fused masks, or for a
            selector every candidate with ``[SEG]``), or None when there
            is no such mask or only one.
        failure: Why no valid answer was found, or None.
        scores: The strategy's score of each candidate by path index, for
            strategies that rank candidates, else None.
    """

    text: str
    diagnosis: str | None
    mask: torch.Tensor
    chosen: list[int] = field(default_factory=list)
    agreement: torch.Tensor | None = None
    failure: str | None = None
    scores: dict[int, float] | None = None


class TestTimeScaling:
    """Base class of test-time scaling strategies.

    Args:
        num_paths: Answers sampled per phrasing of the question (m), from 1
            to :attr:`MAX_NUM_PATHS`.
        temperature: Sampling temperature; ignored when ``num_paths`` is 1,
            which decodes greedily.
        num_perturbations: Region prompts per answer (n), from 1 to
            :attr:`MAX_NUM_PERTURBATIONS`: the prompt module's own prompt
            and n - 1 perturbed versions of it.
        num_questions: Phrasings of the clinical question, from 1 to
            :attr:`MAX_NUM_QUESTIONS`.

    Raises:
        ConfigError: A count is not an integer or out of range, the
            temperature is not a finite number, or it is 0 or below with
            ``num_paths`` above 1.
    """

    __test__ = False  # not a pytest test class despite the name
    name: ClassVar[str]
    uses_ground_truth: ClassVar[bool] = False
    """Whether :meth:`select` needs the ground truth. Such a strategy is an
    upper bound for analysis and cannot answer a new patient's request."""
    MAX_NUM_PATHS: ClassVar[int] = 64
    """Upper bound on ``num_paths``, set to catch typos such as 400 for 4,
    because every path costs one generation and one mask decode. It is not a
    memory limit."""
    MAX_NUM_PERTURBATIONS: ClassVar[int] = 16
    """Upper bound on ``num_perturbations``. RVLS2M's perturbations (a
    one-cell shift, dilation or erosion, or another top N) give few distinct
    prompts, so more than 16 mostly repeats them."""
    MAX_NUM_QUESTIONS: ClassVar[int] = 8
    """Upper bound on ``num_questions``. No modality has more phrasings."""
    MAX_CANDIDATES: ClassVar[int] = 256
    """Upper bound on the candidates of one request (m x n x phrasings).
    Every candidate keeps a full-size H x W float mask until selection, so
    256 candidates of a 1000 x 1000 image take 1 GiB."""

    def __init__(self, num_paths: int = 1, temperature: float = 1.0, num_perturbations: int = 1,
                 num_questions: int = 1) -> None:
        _check_count("num_paths", num_paths, self.MAX_NUM_PATHS, "paths per request",
                     "every path costs one generation and one mask decode")
        _check_count("num_perturbations", num_perturbations, self.MAX_NUM_PERTURBATIONS,
                     "region prompts per path", "the perturbations give few distinct prompts, so more repeat them")
        _check_count("num_questions", num_questions, self.MAX_NUM_QUESTIONS, "phrasings per request",
                     "no modality has more phrasings")
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) \
                or not math.isfinite(temperature):
            raise ConfigError(f"temperature (--temperature) must be a finite number, got {temperature!r}; set for "
                              "example 0.7.")
        if num_paths > 1 and temperature <= 0:
            raise ConfigError(
                f"temperature {temperature} with num_paths {num_paths} samples identical paths; "
                "set a temperature above 0 or num_paths to 1."
            )
        total = num_paths * num_perturbations * num_questions
        if total > self.MAX_CANDIDATES:
            raise ConfigError(
                f"{num_paths} paths x {num_perturbations} region prompts x {num_questions} phrasings give "
                f"{total} candidates per request, above the maximum of {self.MAX_CANDIDATES}, because every "
                "candidate keeps a full-size mask in memory. Set smaller counts.")
        self.num_paths = num_paths
        self.temperature = float(temperature)
        self.num_perturbations = num_perturbations
        self.num_questions = num_questions

    @property
    def num_candidates(self) -> int:
        """Candidates per request: paths x region prompts x phrasings."""
        return self.num_paths * self.num_perturbations * self.num_questions

    def params(self) -> dict[str, object]:
        """Return the settings that change the strategy's answers, for run records.

        ``num_perturbations`` and ``num_questions`` are left out at 1, so a
        run without them has the same record as before they existed.
        """
        params: dict[str, object] = {"num_paths": self.num_paths, "temperature": self.temperature}
        if self.num_perturbations != 1:
            params["num_perturbations"] = self.num_perturbations
        if self.num_questions != 1:
            params["num_questions"] = self.num_questions
        return params

    @property
    def do_sample(self) -> bool:
        """Whether the backbone samples (True) or decodes greedily (False)."""
        return self.num_paths > 1

    def masks_needed(self, candidates: Sequence[Candidate]) -> list[int] | None:
        """Return the path indices of the candidates whose masks :meth:`select` reads, or None for all.

        The candidates come without masks (``mask_logits`` None); their
        text, diagnosis, ``seg_found`` and ``mean_logprob`` are set. The
        pipeline decodes only the masks listed, so a strategy that picks
        by text or log-probability pays for one mask instead of m. The
        default, None, decodes every mask.
        """
        return None

    def select(self, candidates: Sequence[Candidate]) -> Selection:
        """Choose or fuse one answer from the candidates of one request.

        Strategies with ``uses_ground_truth`` take a ``ground_truth``
        keyword argument (a :class:`GroundTruth`) as well.
        """
        raise NotImplementedError


def checked_masks_needed(needed: object, candidates: Sequence[Candidate], strategy: str) -> list[int] | None:
    """Check what a strategy's :meth:`TestTimeScaling.masks_needed` returned.

    Returns:
        The listed path indices, sorted and without repeats, or None (every
        mask) when ``needed`` is None. Any iterable of integers passes, for
        example a list, tuple or set.

    Raises:
        PluginError: ``needed`` is not an iterable of integers (a bool
            counts as invalid, because a list of flags is a likely mistake),
            or it lists a path index that no candidate has.
    """
    if needed is None:
        return None
    if isinstance(needed, (str, bytes, Mapping)) or not isinstance(needed, Iterable):
        raise PluginError(f"strategy '{strategy}': masks_needed returned {needed!r}; return a list of the path "
                          "indices of the candidates whose masks select reads, or None for every mask.")
    listed = list(needed)
    invalid = [index for index in listed if isinstance(index, bool) or not isinstance(index, numbers.Integral)]
    if invalid:
        raise PluginError(f"strategy '{strategy}': masks_needed returned {listed!r}, but {invalid[0]!r} is not an "
                          "integer path index; return the path_index values of the candidates whose masks "
                          "select reads.")
    known = {candidate.path_index for candidate in candidates}
    unknown = sorted({int(index) for index in listed} - known)
    if unknown:
        raise PluginError(f"strategy '{strategy}': masks_needed returned path indices {unknown}, but the "
                          f"candidates' path indices are {_index_range(known)}; return indices of the "
                          "candidates given.")
    return sorted({int(index) for index in listed})


def _index_range(indices: set[int]) -> str:
    if not indices:
        return "none"
    if indices == set(range(min(indices), max(indices) + 1)):
        return f"{min(indices)} to {max(indices)}"
    return str(sorted(indices))


def candidate_masks(ordered: Sequence[Candidate]) -> torch.Tensor:
    """Stack the K binary masks (``logits > 0``), empty for a candidate without ``[SEG]``: K x H x W bool.

    Raises:
        ValueError: A candidate's mask was not decoded.
    """
    require_decoded(ordered)
    masks = torch.stack([candidate.mask_logits > 0 for candidate in ordered])
    seg_found = torch.tensor([candidate.seg_found for candidate in ordered], device=masks.device)
    return masks & seg_found[:, None, None]


def require_decoded(candidates: Sequence[Candidate]) -> None:
    """Raise ValueError naming the first candidate whose mask was not decoded."""
    for candidate in candidates:
        if not candidate.decoded:
            raise ValueError(
                f"candidate {candidate.path_index} has no decoded mask. A strategy reads only the masks that "
                "its masks_needed method lists; add this candidate's path index there.")


def decoded_candidates(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Return the candidates whose masks were decoded, in the order given."""
    return [candidate for candidate in candidates if candidate.decoded]


def pairwise_iou(masks: torch.Tensor) -> torch.Tensor:
    """IoU of every pair of K binary masks: K x K float64, 1 where both masks are empty."""
    flat = masks.flatten(1).to(torch.float64)
    intersection = flat @ flat.T
    areas = flat.sum(dim=1)
    union = areas[:, None] + areas[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def mean_agreement(masks: torch.Tensor) -> list[float]:
    """Mean IoU of each mask with the K - 1 others (1.0 when K is 1)."""
    count = masks.shape[0]
    if count == 1:
        return [1.0]
    iou = pairwise_iou(masks)
    others = iou.sum(dim=1) - iou.diagonal()
    return (others / (count - 1)).tolist()


# The command-line option that sets each count, so errors name what the user typed.
_COUNT_OPTIONS = {"num_paths": "--paths", "num_perturbations": "--perturbations", "num_questions": "--questions"}


def _check_count(key: str, value: object, maximum: int, meaning: str, reason: str) -> None:
    name = f"{key} ({_COUNT_OPTIONS[key]})"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {value!r}.")
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}.")
    if value > maximum:
        raise ConfigError(
            f"{name} {value} exceeds the maximum of {maximum} {meaning}, because {reason}. Set a smaller {key}.")
