"""Training: token cross-entropy + mask BCE + mask Dice, AdamW, a step budget.

Image embeddings come from the frozen encoder once per image (and from the
decoder's cache after that). Checkpoints are written every
``checkpoint_every`` steps and at the end. A run that finds a checkpoint
resumes from its step with the saved optimizer state. Batch order depends
only on the seed and the epoch, so the resumed run draws the same batches
as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import load_optimizer, read_record, save_checkpoint
from .methods import MethodSpec, TrainingConfig
from .model import EncodedImages, MdsModel
from .sample import MdsSample

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int, dict[str, float]], None]
"""Called as ``progress(phase, done, total, values)``; phase is ``encode`` or ``train``."""

ENCODE_CHUNK = 8


@dataclass
class TrainResult:
    """Summary of one training run.

    Attributes:
        start_step: Step the run resumed from (0 for a fresh run).
        steps: Step budget reached.
        seconds: Wall time of this run's optimizer steps.
        losses: Mean loss terms over this run's last 20 steps.
    """

    start_step: int
    steps: int
    seconds: float
    losses: dict[str, float]


def mask_losses(mask_logits: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean per-pixel BCE and mean soft Dice loss over samples of any size.

    Args:
        mask_logits: Per sample, H x W logits in the image frame.
        masks: Per sample, H x W {0, 1} float targets.
    """
    bce, dice = [], []
    for logits, target in zip(mask_logits, masks, strict=True):
        bce.append(F.binary_cross_entropy_with_logits(logits, target))
        probabilities = logits.sigmoid()
        # The +1 smoothing makes an empty target with an empty prediction a zero loss.
        overlap = (probabilities * target).sum()
        dice.append(1 - (2 * overlap + 1) / (probabilities.sum() + target.sum() + 1))
    return torch.stack(bce).mean(), torch.stack(dice).mean()


def batch_indices(step: int, sample_count: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the samples of ``step``: a seeded permutation per epoch."""
    size = min(batch_size, sample_count)
    per_epoch = sample_count // size
    epoch, position = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(sample_count, generator=generator)
    return order[position * size:(position + 1) * size].tolist()


class Trainer:
    """Train a composite model on MDS samples with a step budget.

    Args:
        model: The model; its backbone must already be built (``setup``).
        spec: The method, for its training settings and the checkpoint record.
        samples: Training samples with question and answer attached.
        folder: Checkpoint folder, resumed from when it contains a checkpoint.
        steps: Step budget (overrides the method's default).
        seed: Seed of the batch order.
        progress: Optional progress callback.
    """

    def __init__(self, model: MdsModel, spec: MethodSpec, samples: Sequence[MdsSample], folder: Path,
                 steps: int | None = None, seed: int = 0, progress: ProgressCallback | None = None) -> None:
        if not samples:
            raise ValueError("no training samples; check the --data folders and their train split.")
        self.model = model
        self.spec = spec
        self.config: TrainingConfig = spec.training
        self.samples = list(samples)
        self.folder = Path(folder)
        self.steps = self.config.steps if steps is None else steps
        self.seed = seed
        self.progress = progress
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        self.optimizer = torch.optim.AdamW(parameters, lr=self.config.lr, betas=tuple(self.config.betas),
                                           weight_decay=self.config.weight_decay)

    def fit(self, start_step: int = 0) -> TrainResult:
        """Run optimizer steps from ``start_step`` up to the budget."""
        if start_step > 0 and load_optimizer(self.folder, self.optimizer, read_record(self.folder)):
            logger.info("resumed the optimizer state at step %d", start_step)
        if start_step > self.steps:
            logger.warning("checkpoint is at step %d, past the budget of %d steps; it is used as it is",
                           start_step, self.steps)
        if start_step >= self.steps:
            logger.info("checkpoint is at step %d of %d; nothing to train", start_step, self.steps)
            return TrainResult(start_step, self.steps, 0.0, {})

        encoded = self._encode_all()
        history: list[dict[str, float]] = []
        began = time.perf_counter()
        self.model.train()
        for step in range(start_step, self.steps):
            losses = self._step(encoded, self._batch_indices(step))
            history.append(losses)
            if self.progress:
                self.progress("train", step + 1, self.steps, losses)
            if (step + 1) % self.config.checkpoint_every == 0 or step + 1 == self.steps:
                self._save(step + 1)
        self.model.eval()
        recent = history[-20:]
        means = {key: sum(item[key] for item in recent) / len(recent) for key in recent[0]}
        return TrainResult(start_step, self.steps, time.perf_counter() - began, means)

    def _encode_all(self) -> EncodedImages:
        chunks = []
        for start in range(0, len(self.samples), ENCODE_CHUNK):
            with torch.no_grad():
                chunks.append(self.model.encode(self.samples[start:start + ENCODE_CHUNK]))
            if self.progress:
                self.progress("encode", min(start + ENCODE_CHUNK, len(self.samples)), len(self.samples), {})
        return EncodedImages(
            torch.cat([chunk.image_embeddings for chunk in chunks]),
            torch.cat([chunk.image_features for chunk in chunks]),
            [frame for chunk in chunks for frame in chunk.decoder_frames],
            [frame for chunk in chunks for frame in chunk.token_frames],
        )

    def _batch_indices(self, step: int) -> list[int]:
        return batch_indices(step, len(self.samples), self.config.batch_size, self.seed)

    def _step(self, encoded: EncodedImages, indices: list[int]) -> dict[str, float]:
        batch = [self.samples[index] for index in indices]
        images = encoded.select(indices)
        device = images.image_embeddings.device
        with self._autocast(device):
            features = self.model.backbone.image_features([sample.image for sample in batch],
                                                          images.image_embeddings)
            output = self.model.backbone(features, [sample.question for sample in batch],
                                         [sample.answer for sample in batch])
            masks = self.model.masks_from_text(images, output)
        targets = [torch.as_tensor(sample.mask, dtype=torch.float32, device=device) for sample in batch]
        bce, dice = mask_losses([logits.float() for logits in masks.mask_logits], targets)
        config = self.config
        loss = config.ce_weight * output.loss + config.bce_weight * bce + config.dice_weight * dice

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [parameter for group in self.optimizer.param_groups for parameter in group["params"]], config.grad_clip)
        self.optimizer.step()
        return {"loss": float(loss.detach()), "ce": float(output.loss.detach()), "bce": float(bce.detach()),
                "dice": float(dice.detach())}

    def _autocast(self, device: torch.device):
        """Mixed precision for the forward pass, as the method's settings ask."""
        if self.config.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, self.config.precision))

    def _save(self, step: int) -> None:
        save_checkpoint(self.folder, self.model, self.spec, step, self.optimizer,
                        extra={"train_steps": self.steps, "seed": self.seed, "train_samples": len(self.samples)})
