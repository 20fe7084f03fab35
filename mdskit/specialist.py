"""Language-free specialist models: a segmentation network and an image classifier.

A specialist predicts the mask and the diagnosis directly from the image,
with no language model. Its answer text is written afterwards by the
method's chain-of-thought generator from the predicted diagnosis and mask,
so its ``predictions.jsonl`` records have the same fields as those of the
vision-language methods. It trains on the same samples with the same step
budget, batch order and checkpoint layout as :class:`~mdskit.training.Trainer`
(see :mod:`mdskit.specialist_training`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import SEG_TOKEN
from .cot import CotGenerator, parse_diagnosis
from .errors import ConfigError
from .sample import MdsSample
from .tts import Candidate

logger = logging.getLogger(__name__)

LABELS_KEY = "labels"
"""Key of the checkpoint record that stores the classifier's label names, in head order."""


@dataclass
class SpecialistOutput:
    """Outputs of a specialist for a batch of B images at its input size S.

    Attributes:
        mask_logits: B x 1 x S x S segmentation logits.
        label_logits: B x L classification logits over :attr:`SpecialistModel.labels`.
    """

    mask_logits: torch.Tensor
    label_logits: torch.Tensor


class SpecialistModel(nn.Module):
    """Base class of specialist models: image in, mask logits and label logits out.

    Subclasses set ``name`` (the ``type`` in ``registry.yaml``), take their
    parameters and ``labels`` as keyword arguments, and implement
    :meth:`forward`. ``labels`` is the list of diagnoses the classifier
    head predicts; training sets it from the train split and checkpoints
    store it.

    Args:
        labels: Diagnosis names, one per output of the classification head.
        input_size: Side in pixels of the square input that images are
            resized to.
    """

    name: ClassVar[str]

    def __init__(self, labels: Sequence[str] = (), input_size: int = 256) -> None:
        super().__init__()
        if not isinstance(input_size, int) or input_size < 32 or input_size % 32:
            raise ConfigError(f"invalid specialist input_size {input_size!r}; choose a multiple of 32, at least 32.")
        self.labels = list(labels)
        self.input_size = input_size
        self.cot_generator: CotGenerator | None = None

    def forward(self, images: torch.Tensor) -> SpecialistOutput:
        """Predict B x 1 x S x S mask logits and B x L label logits from B x 3 x S x S images in [0, 1]."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def to_input(self, samples: Sequence[MdsSample]) -> torch.Tensor:
        """Resize the RGB images of ``samples`` to B x 3 x S x S floats in [0, 1] on the model's device."""
        size = (self.input_size, self.input_size)
        images = [torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1).float().div(255)
                  for sample in samples]
        resized = [F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)
                   for image in images]
        return torch.cat(resized).to(self.device)

    def to_target(self, samples: Sequence[MdsSample]) -> torch.Tensor:
        """Resize the masks of ``samples`` to B x 1 x S x S {0, 1} floats (nearest neighbour)."""
        size = (self.input_size, self.input_size)
        masks = [torch.from_numpy(np.asarray(sample.mask, dtype=np.float32))[None, None] for sample in samples]
        return torch.cat([F.interpolate(mask, size=size, mode="nearest") for mask in masks]).to(self.device)

    def label_indices(self, samples: Sequence[MdsSample]) -> torch.Tensor:
        """Return the head index of each sample's label."""
        missing = sorted({sample.label for sample in samples} - set(self.labels))
        if missing:
            raise ConfigError(f"labels {missing} are not among the specialist's labels {self.labels}; train a "
                              "checkpoint on data that contains them.")
        return torch.tensor([self.labels.index(sample.label) for sample in samples], device=self.device)


def train_labels(samples: Sequence[MdsSample]) -> list[str]:
    """Return the labels of every dataset of ``samples``, in label-set order, each once."""
    labels: dict[str, None] = {}
    for sample in samples:
        labels.update(dict.fromkeys(sample.label_set))
    return list(labels)


@torch.no_grad()
def specialist_candidate(model: SpecialistModel, sample: MdsSample) -> Candidate:
    """Predict one sample's mask and diagnosis, and write its answer with the model's generator.

    The diagnosis is the highest-scoring label of the sample's label set
    (labels of other datasets are never chosen). The generator describes
    the predicted mask and diagnosis; dataset extras that come from the
    ground truth (``meta``) are not passed to it.

    Raises:
        ConfigError: None of the sample's labels is among the model's labels.
    """
    if model.cot_generator is None:
        raise ConfigError(f"specialist '{model.name}' has no chain-of-thought generator; build it with "
                          "mdskit.build.build_model.")
    allowed = [index for index, label in enumerate(model.labels) if label in sample.label_set]
    if not allowed:
        raise ConfigError(f"none of the labels {list(sample.label_set)} of {sample.uid} is among the specialist's "
                          f"labels {model.labels}; use a checkpoint trained on dataset '{sample.dataset}'.")
    model.eval()
    output = model(model.to_input([sample]))
    scores = output.label_logits[0, allowed].float()
    diagnosis = model.labels[allowed[int(scores.argmax())]]
    logits = F.interpolate(output.mask_logits[:1].float(), size=sample.image_size, mode="bilinear",
                           align_corners=False)[0, 0]
    described = replace(sample, mask=(logits > 0).cpu().numpy(), label=diagnosis, meta={})
    text = model.cot_generator.generate(described)
    if parse_diagnosis(text, sample.label_set) != diagnosis or SEG_TOKEN not in text:
        raise ConfigError(f"chain-of-thought generator {model.cot_generator.name!r} wrote {text!r} for the "
                          f"predicted diagnosis {diagnosis!r}; it must name it after 'Diagnosis:' and hold {SEG_TOKEN}.")
    probabilities = scores.softmax(dim=0)
    return Candidate(path_index=0, text=text, diagnosis=diagnosis, mask_logits=logits, seg_found=True,
                     mean_logprob=float(probabilities.max().log()))


def specialist_candidates(model: SpecialistModel, sample: MdsSample, num_paths: int = 1,
                          num_perturbations: int = 1, num_questions: int = 1) -> list[Candidate]:
    """Return the specialist's answer once per candidate that a strategy asks for.

    The model reads no question and samples nothing, so every phrasing,
    path and region prompt gives the same answer, and a strategy that
    votes or ranks selects that answer. The model runs once. Path indices
    follow :class:`~mdskit.tts.Candidate`.
    """
    answer = specialist_candidate(model, sample)
    candidates = []
    for question in range(num_questions):
        for path in range(num_paths):
            for perturbation in range(num_perturbations):
                index = (question * num_paths + path) * num_perturbations + perturbation
                candidates.append(replace(answer, path_index=index, sampled_path=path, perturbation=perturbation,
                                          question_index=question))
    return candidates
