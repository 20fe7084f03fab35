"""Prediction with test-time scaling, and scoring against the ground truth.

One request is encoded once; the strategy's m paths are generated in one
batch that shares the prompt's key-value cache, passed once more through the
backbone (teacher-forced, as in training) to read the ``[SEG]`` and
image-token states, and decoded into masks, n region prompts per path, in
one decoder call. The strategy then picks or fuses the answer.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import SEG_TOKEN
from .backbone import GeneratedAnswers
from .cot import parse_diagnosis
from .errors import PluginError
from .metrics import SampleResult
from .model import EncodedImages, MdsModel, as_numpy_mask
from .questions import format_choices, question_templates
from .sample import MdsSample
from .specialist import SpecialistModel, specialist_candidates
from .tts import (Candidate, GroundTruth, Selection, TestTimeScaling, candidate_masks, checked_masks_needed,
                  decoded_candidates, mean_agreement)

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Everything predicted for one sample.

    Attributes:
        sample: The input sample.
        selection: The strategy's answer.
        candidates: Every candidate: sampled path, phrasing and region prompt.
        similarity: The prompt module's image-frame similarity map of the
            first decoded path with ``[SEG]``, H x W, or None without a
            prompt module or such a path.
        strategy: Name of the strategy that selected the answer.
        upper_bound: Whether the strategy selected with the ground truth, so
            the answer is an upper bound and not a usable prediction.
    """

    sample: MdsSample
    selection: Selection
    candidates: list[Candidate]
    similarity: torch.Tensor | None
    strategy: str = ""
    upper_bound: bool = False

    @property
    def mask(self) -> np.ndarray:
        return self.selection.mask.detach().cpu().numpy().astype(bool)

    @property
    def agreement(self) -> torch.Tensor:
        """Return the H x W per-pixel agreement map in [0, 1] saved beside the mask.

        It is the strategy's own map (for example the share of the fused
        masks), or else the share of the decoded candidates whose mask
        marks the pixel, a candidate without ``[SEG]`` counting as an empty
        mask.
        """
        if self.selection.agreement is not None:
            return self.selection.agreement
        decoded = decoded_candidates(self.candidates)
        if not decoded:
            return torch.zeros(self.selection.mask.shape)
        return candidate_masks(decoded).to(torch.float32).mean(dim=0)

    def score(self) -> SampleResult:
        """Score the prediction; a missing mask or diagnosis counts as a failure."""
        sample = self.sample
        return SampleResult.from_masks(sample.uid, sample.dataset, sample.label, sample.label_set,
                                       self.selection.diagnosis, self.mask, sample.mask)


@dataclass
class SamplingPlan:
    """How the candidates of one request are produced.

    Attributes:
        num_paths: Answers per phrasing (m).
        temperature: Sampling temperature, used when ``do_sample`` is set.
        do_sample: Sample (True) or decode greedily (False).
        num_perturbations: Region prompts per answer (n).
        num_questions: Phrasings of the clinical question.
    """

    num_paths: int = 1
    temperature: float = 1.0
    do_sample: bool = False
    num_perturbations: int = 1
    num_questions: int = 1

    @classmethod
    def of(cls, strategy: TestTimeScaling) -> SamplingPlan:
        """Return the plan that a strategy asks for."""
        return cls(strategy.num_paths, strategy.temperature, strategy.do_sample,
                   getattr(strategy, "num_perturbations", 1), getattr(strategy, "num_questions", 1))


@torch.no_grad()
def sample_candidates(model: MdsModel, sample: MdsSample, plan: SamplingPlan, seed: int = 0,
                      masks_needed: MasksNeeded | None = None) -> tuple[list[Candidate], torch.Tensor | None]:
    """Produce the candidates of one request and the first decoded answer's similarity map.

    The image is encoded once. Per phrasing, the paths are decoded in one
    batch that shares the prompt's key-value cache, path i sampling with
    the seed :func:`path_seed` gives it. The candidates are then built
    without masks and ``masks_needed`` (a strategy's
    :meth:`~mdskit.tts.TestTimeScaling.masks_needed`) says which masks to
    decode; None decodes all. Every distinct answer among those is passed
    once more through the backbone (teacher-forced, as in training) in one
    batch, and all its (answer, region prompt) pairs are decoded into masks
    in one decoder call. Perturbations are seeded by :func:`answer_seed`.

    The seeds depend on ``seed``, the sample's id, the phrasing, the path
    and the answer only, so the first k paths of a request and their masks
    are the same whatever the number of paths (up to floating-point
    differences between batch sizes), and do not depend on which samples
    ran before.

    Raises:
        PluginError: ``masks_needed`` returned something other than path
            indices of the candidates (see :func:`~mdskit.tts.checked_masks_needed`).
    """
    model.eval()
    base_seed = _sample_seed(seed, sample.uid)
    torch.manual_seed(base_seed)
    encoded = model.encode([sample])
    questions = ensemble_questions(sample, plan.num_questions)

    texts: list[str] = []
    logprobs: list[float] = []
    row_questions: list[str] = []
    for question_index, question in enumerate(questions):
        seeds = [path_seed(base_seed, question_index, path) for path in range(plan.num_paths)]
        generated = _generate(model, encoded.image_features, question, plan, seeds)
        texts.extend(generated.texts[0])
        logprobs.extend(generated.mean_logprobs[0])
        row_questions.extend([question] * plan.num_paths)

    candidates = _text_candidates(sample, plan, texts, logprobs)
    to_decode = _candidates_to_decode(candidates, masks_needed)
    similarity = _decode_masks(model, encoded, to_decode, row_questions, plan.num_perturbations, base_seed)
    return candidates, similarity


MasksNeeded = Callable[[Sequence[Candidate]], "list[int] | None"]
"""A strategy's :meth:`~mdskit.tts.TestTimeScaling.masks_needed`."""


def _text_candidates(sample: MdsSample, plan: SamplingPlan, texts: list[str],
                     logprobs: list[float]) -> list[Candidate]:
    """Build one candidate per (row, region prompt), without masks; ``seg_found`` comes from the text."""
    count = plan.num_perturbations
    candidates = []
    for row, text in enumerate(texts):
        diagnosis = parse_diagnosis(text, sample.label_set)
        for perturbation in range(count):
            candidates.append(Candidate(
                path_index=row * count + perturbation, text=text, diagnosis=diagnosis, mask_logits=None,
                seg_found=SEG_TOKEN in text, mean_logprob=logprobs[row], iou_score=None,
                sampled_path=row % plan.num_paths, perturbation=perturbation, question_index=row // plan.num_paths))
    return candidates


def _candidates_to_decode(candidates: list[Candidate], masks_needed: MasksNeeded | None) -> list[Candidate]:
    """Return the candidates whose masks ``masks_needed`` lists, all when it or its result is None."""
    if masks_needed is None:
        return candidates
    owner = getattr(masks_needed, "__self__", None)
    strategy = getattr(owner, "name", None) or getattr(masks_needed, "__qualname__", "masks_needed")
    needed = checked_masks_needed(masks_needed(candidates), candidates, strategy)
    if needed is None:
        return candidates
    by_index = {candidate.path_index: candidate for candidate in candidates}
    return [by_index[index] for index in needed]


def _decode_masks(model: MdsModel, encoded: EncodedImages, to_decode: list[Candidate], row_questions: list[str],
                  count: int, base_seed: int) -> torch.Tensor | None:
    """Decode the masks of the ``to_decode`` candidates in place; return the first answer's similarity map.

    Paths with the same text under the same question have the same states
    and masks, so each distinct answer is decoded once, with all its
    ``count`` region prompts.
    """
    def answer_of(candidate: Candidate) -> tuple[str, str]:
        return row_questions[candidate.path_index // count], candidate.text

    answers = list(dict.fromkeys(answer_of(candidate) for candidate in to_decode))
    if not answers:
        return None
    position = {answer: index for index, answer in enumerate(answers)}
    repeated = encoded.select([0] * len(answers))
    output = model.backbone(repeated.image_features, [question for question, _ in answers],
                            [text for _, text in answers])
    seeds = [answer_seed(base_seed, question, text) for question, text in answers]
    masks = model.masks_from_text(repeated, output, num_perturbations=count, perturbation_seeds=seeds)

    for candidate in to_decode:
        index = position[answer_of(candidate)] * count + candidate.perturbation
        candidate.mask_logits = masks.mask_logits[index]
        candidate.seg_found = masks.seg_found[index]
        candidate.iou_score = masks.iou_scores[index]
    if masks.prompts is not None and masks.prompts.similarity:
        return masks.prompts.similarity[0]
    return None


@torch.no_grad()
def predict(model: MdsModel | SpecialistModel, sample: MdsSample, strategy: TestTimeScaling,
            seed: int = 0) -> Prediction:
    """Answer one request with the candidates the strategy asks for (see :func:`sample_candidates`).

    A specialist model answers once and every candidate is that answer
    (see :func:`mdskit.specialist.specialist_candidates`).

    Raises:
        GroundTruthMissingError (an ``MdskitError``): the strategy selects
            with the ground truth (the oracle) and the sample has none.
        PluginError: The strategy's ``masks_needed`` returned invalid path
            indices, or its ``select`` failed while some masks were not
            decoded, which means it read a mask that ``masks_needed`` did not list.
    """
    plan = SamplingPlan.of(strategy)
    if isinstance(model, SpecialistModel):
        candidates = specialist_candidates(model, sample, plan.num_paths, plan.num_perturbations, plan.num_questions)
        similarity = None
    else:
        candidates, similarity = sample_candidates(model, sample, plan, seed,
                                                   masks_needed=getattr(strategy, "masks_needed", None))
    selection = _select_from_decoded(strategy, candidates, sample)
    return Prediction(sample, selection, candidates, similarity, strategy=getattr(strategy, "name", ""),
                      upper_bound=strategy.uses_ground_truth)


def _select_from_decoded(strategy: TestTimeScaling, candidates: list[Candidate], sample: MdsSample) -> Selection:
    """Run :func:`select` and raise PluginError naming ``masks_needed`` when it fails with some masks not decoded.

    Reading an undecoded mask raises TypeError or AttributeError on its
    None ``mask_logits``, or ValueError from :func:`~mdskit.tts.require_decoded`.
    """
    try:
        return select(strategy, candidates, sample)
    except (TypeError, AttributeError, ValueError) as error:
        undecoded = [candidate.path_index for candidate in candidates if not candidate.decoded]
        if not undecoded:
            raise
        name = getattr(strategy, "name", type(strategy).__name__)
        raise PluginError(
            f"strategy '{name}': select failed ({type(error).__name__}: {error}) while the masks of path indices "
            f"{undecoded} were not decoded, because masks_needed did not list them. If select reads them, list "
            "them in masks_needed, or return None there to decode every mask.") from error


def select(strategy: TestTimeScaling, candidates: list[Candidate], sample: MdsSample) -> Selection:
    """Run the strategy's selection, giving the ground truth only to strategies that use it."""
    if not strategy.uses_ground_truth:
        return strategy.select(candidates)
    ground_truth = None
    if sample.mask is not None and sample.label:
        ground_truth = GroundTruth(torch.from_numpy(np.asarray(sample.mask, dtype=bool)), sample.label)
    return strategy.select(candidates, ground_truth=ground_truth)


def ensemble_questions(sample: MdsSample, count: int) -> list[str]:
    """Return up to ``count`` phrasings: the sample's question, then the modality's others in listed order."""
    questions = [sample.question]
    choices = format_choices(tuple(sample.label_set))
    for template in question_templates(sample.modality):
        if len(questions) >= count:
            break
        phrasing = template.format(choices=choices, modality=sample.modality)
        if phrasing not in questions:
            questions.append(phrasing)
    return questions[:count]


def path_seed(base_seed: int, question_index: int, path: int) -> int:
    """Seed of one sampled path, from the request's seed, the phrasing and the path index."""
    digest = hashlib.sha256(f"{base_seed}:{question_index}:{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def answer_seed(base_seed: int, question: str, text: str) -> int:
    """Seed of an answer's region-prompt perturbations, from the request's seed, the question and the text."""
    digest = hashlib.sha256(f"{base_seed}:{question}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _generate(model: MdsModel, image_features: torch.Tensor, question: str, plan: SamplingPlan,
              seeds: list[int]) -> GeneratedAnswers:
    """Generate one phrasing's paths, with per-path seeds when the backbone takes them."""
    backbone = model.backbone
    options = dict(num_paths=plan.num_paths, temperature=plan.temperature, do_sample=plan.do_sample)
    if "path_seeds" in inspect.signature(backbone.generate).parameters:
        options["path_seeds"] = seeds
    return backbone.generate(image_features, [question], **options)


def _sample_seed(seed: int, uid: str) -> int:
    return (seed * 1_000_003 + sum(ord(char) * (index + 1) for index, char in enumerate(uid))) % (2**31)


def prediction_record(prediction: Prediction, result: SampleResult) -> dict:
    """Build the ``predictions.jsonl`` record of one sample (candidates: see :func:`candidate_records`)."""
    sample, selection = prediction.sample, prediction.selection
    return {
        "id": sample.uid,
        "dataset": sample.dataset,
        "case_id": sample.case_id,
        "question": sample.question,
        "text": selection.text,
        "predicted_diagnosis": selection.diagnosis,
        "true_diagnosis": sample.label,
        "iou": result.iou,
        "dice": result.dice,
        "intersection": result.intersection,
        "union": result.union,
        "predicted_area": result.predicted_area,
        "true_area": result.true_area,
        "failure": selection.failure,
        "chosen": selection.chosen,
        "strategy": prediction.strategy,
        "upper_bound": prediction.upper_bound,
        "candidates": candidate_records(prediction),
    }


def candidate_records(prediction: Prediction) -> list[dict]:
    """Build one record per candidate, in path-index order.

    Each record contains the candidate's text and diagnosis, whether it was
    chosen, whether its mask was decoded, and a summary of that mask (area,
    bounding box). Its scores are the decoder's predicted IoU, the mean
    token log-probability, the mean IoU with the other decoded candidates'
    masks, and the strategy's own score when the strategy ranks candidates.
    The mask fields are None for a candidate whose mask was not decoded.
    """
    ordered = sorted(prediction.candidates, key=lambda candidate: candidate.path_index)
    decoded = decoded_candidates(ordered)
    agreement = dict(zip((candidate.path_index for candidate in decoded),
                         mean_agreement(candidate_masks(decoded)) if decoded else [], strict=True))
    scores = prediction.selection.scores or {}
    chosen = set(prediction.selection.chosen)
    return [_candidate_record(candidate, agreement.get(candidate.path_index), scores.get(candidate.path_index),
                              candidate.path_index in chosen)
            for candidate in ordered]


def _candidate_record(candidate: Candidate, agreement: float | None, score: float | None, chosen: bool) -> dict:
    record = {
        "path": candidate.path_index, "text": candidate.text, "diagnosis": candidate.diagnosis,
        "seg_found": candidate.seg_found, "mean_logprob": round(candidate.mean_logprob, 4),
        "decoded": candidate.decoded, "iou_score": None, "mask_area": None,
        "sampled_path": candidate.sampled_path, "perturbation": candidate.perturbation,
        "question_index": candidate.question_index, "agreement": None,
        "score": None if score is None else round(score, 4), "chosen": chosen, "bbox": None,
    }
    if candidate.decoded:
        mask = candidate.mask_logits > 0
        if not candidate.seg_found:
            mask = torch.zeros_like(mask)
        record.update(iou_score=round(candidate.iou_score, 4), mask_area=int((candidate.mask_logits > 0).sum()),
                      agreement=round(agreement, 4), bbox=mask_bbox(mask))
    return record


def mask_bbox(mask: torch.Tensor) -> list[int] | None:
    """Return the [x0, y0, x1, y1] pixel box of an H x W bool mask, inclusive, or None when it is empty."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    if rows.numel() == 0:
        return None
    return [int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])]


def result_from_record(record: dict, sample: MdsSample) -> SampleResult:
    """Rebuild a scored result from a stored ``predictions.jsonl`` line."""
    return SampleResult(sample.uid, sample.dataset, sample.label, sample.label_set, record["predicted_diagnosis"],
                        record["intersection"], record["union"], record["predicted_area"], record["true_area"])


__all__ = ["Prediction", "SamplingPlan", "candidate_records", "predict", "prediction_record", "result_from_record",
           "sample_candidates",
           "select", "as_numpy_mask"]
