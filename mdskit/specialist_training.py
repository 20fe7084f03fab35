"""Training of specialist models (see :mod:`mdskit.specialist`)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import load_optimizer, read_record, save_checkpoint
from .methods import MethodSpec, TrainingConfig
from .sample import MdsSample
from .specialist import SpecialistModel
from .training import ProgressCallback, TrainResult, batch_indices, mask_losses

logger = logging.getLogger(__name__)

RESIZE_CHUNK = 16
"""Images resized per call before training."""


class SpecialistTrainer:
    """Train a specialist: mask BCE + soft Dice, label cross-entropy, AdamW, a step budget.

    The loss weights are the method's ``bce_weight``, ``dice_weight`` and
    ``ce_weight``, here applied to the classifier's cross-entropy. Batches
    come from :func:`~mdskit.training.batch_indices`, so every method of a
    comparison trains on the same batches for the same seed.

    Args:
        model: The specialist, with its labels set.
        spec: The method, for its training settings and the checkpoint record.
        samples: Training samples.
        folder: Checkpoint folder, resumed from when it contains a checkpoint.
        steps: Step budget (overrides the method's default).
        seed: Seed of the batch order.
        progress: Optional progress callback.
    """

    def __init__(self, model: SpecialistModel, spec: MethodSpec, samples: Sequence[MdsSample], folder: Path,
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
        if start_step >= self.steps:
            logger.info("checkpoint is at step %d of %d; nothing to train", start_step, self.steps)
            return TrainResult(start_step, self.steps, 0.0, {})

        # Inputs are resized once: the same tensors serve every epoch.
        images = torch.cat([self.model.to_input(self.samples[start:start + RESIZE_CHUNK])
                            for start in range(0, len(self.samples), RESIZE_CHUNK)])
        masks = torch.cat([self.model.to_target(self.samples[start:start + RESIZE_CHUNK])
                           for start in range(0, len(self.samples), RESIZE_CHUNK)])
        labels = self.model.label_indices(self.samples)
        history: list[dict[str, float]] = []
        began = time.perf_counter()
        self.model.train()
        for step in range(start_step, self.steps):
            index = torch.tensor(batch_indices(step, len(self.samples), self.config.batch_size, self.seed))
            losses = self._step(images[index], masks[index], labels[index])
            history.append(losses)
            if self.progress:
                self.progress("train", step + 1, self.steps, losses)
            if (step + 1) % self.config.checkpoint_every == 0 or step + 1 == self.steps:
                self._save(step + 1)
        self.model.eval()
        recent = history[-20:]
        means = {key: sum(item[key] for item in recent) / len(recent) for key in recent[0]}
        return TrainResult(start_step, self.steps, time.perf_counter() - began, means)

    def _step(self, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        with self._autocast(images.device):
            output = self.model(images)
        bce, dice = mask_losses(list(output.mask_logits.float()[:, 0]), list(masks[:, 0]))
        ce = F.cross_entropy(output.label_logits.float(), labels)
        config = self.config
        loss = config.ce_weight * ce + config.bce_weight * bce + config.dice_weight * dice

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [parameter for group in self.optimizer.param_groups for parameter in group["params"]], config.grad_clip)
        self.optimizer.step()
        return {"loss": float(loss.detach()), "ce": float(ce.detach()), "bce": float(bce.detach()),
                "dice": float(dice.detach())}

    def _autocast(self, device: torch.device):
        if self.config.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, self.config.precision))

    def _save(self, step: int) -> None:
        save_checkpoint(self.folder, self.model, self.spec, step, self.optimizer,
                        extra={"train_steps": self.steps, "seed": self.seed, "train_samples": len(self.samples)})
