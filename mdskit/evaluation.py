"""Prediction with test-time scaling, and scoring against the ground truth.

One request is encoded once; the strategy's m paths are generated in one
batched call, passed once more through the backbone (teacher-forced, as in
training) to read the ``[SEG]`` and image-token states, and decoded into
masks in one decoder call. The strategy then picks or fuses the answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from .cot import parse_diagnosis
from .metrics import SampleResult
from .model import MdsModel, as_numpy_mask
from .sample import MdsSample
from .tts import Candidate, Selection, TestTimeScaling

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Everything predicted for one sample.

    Attributes:
        sample: The input sample.
        selection: The strategy's answer.
        candidates: Every sampled path.
        similarity: The prompt module's image-frame similarity map of the
            first path, H x W, or None without a prompt module.
    """

    sample: MdsSample
    selection: Selection
    candidates: list[Candidate]
    similarity: torch.Tensor | None

    @property
    def mask(self) -> np.ndarray:
        return self.selection.mask.detach().cpu().numpy().astype(bool)

    def score(self) -> SampleResult:
        """Score the prediction; a missing mask or diagnosis counts as a failure."""
        sample = self.sample
        return SampleResult.from_masks(sample.uid, sample.dataset, sample.label, sample.label_set,
                                       self.selection.diagnosis, self.mask, sample.mask)


@torch.no_grad()
def predict(model: MdsModel, sample: MdsSample, strategy: TestTimeScaling, seed: int = 0) -> Prediction:
    """Answer one request with the strategy's number of sampled paths.

    The sampling seed is derived from ``seed`` and the sample's id, so a
    sample's candidates do not depend on which samples ran before it.
    """
    model.eval()
    torch.manual_seed(_sample_seed(seed, sample.uid))
    encoded = model.encode([sample])
    paths = strategy.num_paths
    generated = model.backbone.generate(encoded.image_features, [sample.question], num_paths=paths,
                                        temperature=strategy.temperature, do_sample=strategy.do_sample)
    texts = generated.texts[0]

    repeated = encoded.select([0] * paths)
    output = model.backbone(repeated.image_features, [sample.question] * paths, texts)
    masks = model.masks_from_text(repeated, output)
    candidates = [
        Candidate(path_index=index, text=text, diagnosis=parse_diagnosis(text, sample.label_set),
                  mask_logits=masks.mask_logits[index], seg_found=masks.seg_found[index],
                  mean_logprob=generated.mean_logprobs[0][index], iou_score=masks.iou_scores[index])
        for index, text in enumerate(texts)
    ]
    similarity = None
    if masks.prompts is not None and masks.prompts.similarity:
        similarity = masks.prompts.similarity[0]
    return Prediction(sample, strategy.select(candidates), candidates, similarity)


def _sample_seed(seed: int, uid: str) -> int:
    return (seed * 1_000_003 + sum(ord(char) * (index + 1) for index, char in enumerate(uid))) % (2**31)


def prediction_record(prediction: Prediction, result: SampleResult) -> dict:
    """Build the ``predictions.jsonl`` record of one sample."""
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
        "candidates": [
            {"path": candidate.path_index, "text": candidate.text, "diagnosis": candidate.diagnosis,
             "seg_found": candidate.seg_found, "mean_logprob": round(candidate.mean_logprob, 4),
             "iou_score": round(candidate.iou_score, 4), "mask_area": int((candidate.mask_logits > 0).sum())}
            for candidate in prediction.candidates
        ],
    }


def result_from_record(record: dict, sample: MdsSample) -> SampleResult:
    """Rebuild a scored result from a stored ``predictions.jsonl`` line."""
    return SampleResult(sample.uid, sample.dataset, sample.label, sample.label_set, record["predicted_diagnosis"],
                        record["intersection"], record["union"], record["predicted_area"], record["true_area"])


__all__ = ["Prediction", "predict", "prediction_record", "result_from_record", "as_numpy_mask"]
