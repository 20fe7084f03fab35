"""Training: token cross-entropy + mask BCE + mask Dice, AdamW, a step budget.

The loop is mmengine's ``FlexibleRunner`` with an iteration-based loop, so
the same code trains in one process or in several (DDP, FSDP, DeepSpeed;
see :mod:`mdskit.distributed`). One optimizer step consumes one global
batch of ``training.batch_size`` samples, split into equal micro-batches
over the processes and the gradient-accumulation steps. Each micro-batch's
loss is weighted so that the gradient equals the one-process gradient of the
whole batch.

Image embeddings come from the frozen encoder once per image (and from the
decoder's cache after that). Rank 0 writes safetensors checkpoints every
``checkpoint_every`` steps and at the end; mmengine's own checkpoints
(pickles) are never written or read. A run that finds a checkpoint resumes
from its step with the saved optimizer state, with any number of processes.
Batch order depends only on the seed and the epoch, so the resumed run draws
the same batches as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS
from torch.utils.data import DataLoader, Dataset

from . import distributed
from .checkpoint import (has_optimizer_state, load_optimizer, read_optimizer_state, read_record,
                         save_checkpoint)
from .distributed import ParallelSettings
from .methods import MethodSpec, TrainingConfig
from .model import EncodedImages, MdsModel
from .outputs import append_jsonl
from .sample import MdsSample

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int, dict[str, float]], None]
"""Called as ``progress(phase, done, total, values)``; phase is ``encode`` or ``train``."""

ENCODE_CHUNK = 8
LOSS_TERMS = ("ce", "bce", "dice")
LOSS_LOG = "train-losses.jsonl"
"""Per-step losses of the global batch, one JSON line per step, beside the checkpoint folder.

A resumed run appends to it; a step listed twice (trained again after an
interruption before its checkpoint) counts with its last line.
"""


@dataclass
class TrainResult:
    """Summary of one training run.

    Attributes:
        start_step: Step the run resumed from (0 for a fresh run).
        steps: Step budget reached.
        seconds: Wall time of this run's optimizer steps, without encoding the images.
        losses: Mean loss terms over this run's last 20 steps.
        history: Loss terms of every step of this run, in step order.
    """

    start_step: int
    steps: int
    seconds: float
    losses: dict[str, float]
    history: list[dict[str, float]] | None = None


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
    """Return the sample indices of a global batch: a seeded permutation per epoch."""
    size = min(batch_size, sample_count)
    per_epoch = sample_count // size
    epoch, position = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(sample_count, generator=generator)
    return order[position * size:(position + 1) * size].tolist()


class MicroBatches(Dataset):
    """The micro-batches of one process, one item per iteration of the loop.

    Iteration ``i`` belongs to optimizer step ``i // accumulation``. Its
    global batch is split into ``processes x accumulation`` equal chunks,
    and rank r takes chunk ``(i % accumulation) * processes + r``. Items
    are index lists, so the loop can skip finished iterations cheaply.
    """

    def __init__(self, sample_count: int, batch_size: int, seed: int, steps: int, processes: int, rank: int,
                 accumulation: int) -> None:
        self.sample_count = sample_count
        self.batch_size = min(batch_size, sample_count)
        self.seed = seed
        self.steps = steps
        self.processes = processes
        self.rank = rank
        self.accumulation = accumulation
        self.micro_batch = distributed.micro_batch_size(self.batch_size, processes, accumulation)

    metainfo = {"content": "sample indices of each micro-batch"}

    def __len__(self) -> int:
        return self.steps * self.accumulation

    def __getitem__(self, iteration: int) -> dict[str, Any]:
        step, micro = divmod(iteration, self.accumulation)
        batch = batch_indices(step, self.sample_count, self.batch_size, self.seed)
        chunk = micro * self.processes + self.rank
        return {"indices": batch[chunk * self.micro_batch:(chunk + 1) * self.micro_batch], "batch": batch}


def _single_item(items: list[dict[str, Any]]) -> dict[str, Any]:
    return items[0]


class MdsTrainingModel(BaseModel):
    """The composite model with its training loss, in mmengine's model interface.

    ``forward(indices, batch, mode="loss")`` returns the weighted loss terms
    of the micro-batch ``indices`` of the global batch ``batch``. The
    samples and their encoded images stay attributes (not buffers), so a
    process-group wrapper neither broadcasts nor shards them.
    """

    def __init__(self, model: MdsModel, config: TrainingConfig, samples: Sequence[MdsSample], precision: str,
                 chunks: int) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.samples = list(samples)
        self.precision = precision
        self.chunks = chunks
        self.encoded: EncodedImages | None = None

    def init_weights(self) -> None:
        """Keep the weights as built or loaded (mmengine calls this before training)."""

    def forward(self, indices: list[int], batch: list[int], mode: str = "loss") -> dict[str, torch.Tensor]:
        if mode != "loss":
            raise ValueError(f"mode '{mode}' is not supported; the training model only computes losses.")
        samples = [self.samples[index] for index in indices]
        images = self.encoded.select(indices)
        device = images.image_embeddings.device
        questions = [sample.question for sample in samples]
        answers = [sample.answer for sample in samples]
        with self._autocast(device):
            features = self.model.backbone.image_features([sample.image for sample in samples],
                                                          images.image_embeddings)
            output = self.model.backbone(features, questions, answers)
            masks = self.model.masks_from_text(images, output)
        targets = [torch.as_tensor(sample.mask, dtype=torch.float32, device=device) for sample in samples]
        bce, dice = mask_losses([logits.float() for logits in masks.mask_logits], targets)
        if self.chunks == 1:
            shares = {"ce": output.loss, "bce": bce, "dice": dice}
        else:
            shares = {"ce": output.loss * self._token_share(questions, answers, batch), "bce": bce / self.chunks,
                      "dice": dice / self.chunks}
        config = self.config
        weights = {"ce": config.ce_weight, "bce": config.bce_weight, "dice": config.dice_weight}
        # Losses summed by mmengine: keys containing "loss". Each is scaled by
        # the chunk count, because DDP averages the processes' gradients and
        # the optimizer wrapper divides by the accumulation steps.
        losses = {f"loss_{term}": weights[term] * shares[term] * self.chunks for term in LOSS_TERMS}
        losses.update({term: shares[term].detach() for term in LOSS_TERMS})
        return losses

    def frozen_decoder_modules(self) -> list[str]:
        """Return the names of the decoder's submodules whose weights are all frozen.

        FSDP leaves these whole, because the image encoder runs outside the
        wrapped forward pass and LiteMedSAM's TinyViT indexes its attention
        biases in ``train()``, which fails on a flattened shard.
        """
        names = []
        for name, module in self.model.decoder.named_children():
            parameters = list(module.parameters())
            if parameters and not any(parameter.requires_grad for parameter in parameters):
                names.append(f"model.decoder.{name}")
        return names

    def _token_share(self, questions: list[str], answers: list[str], batch: list[int]) -> float:
        """Return this micro-batch's weight of the batch's token cross-entropy."""
        backbone = self.model.backbone
        tokens = backbone.target_token_count(questions, answers)
        if tokens is None:
            return 1.0 / self.chunks
        everything = [self.samples[index] for index in batch]
        total = backbone.target_token_count([sample.question for sample in everything],
                                            [sample.answer for sample in everything])
        return tokens / total

    def _autocast(self, device: torch.device):
        """Mixed precision for the forward pass; the losses are computed in float32."""
        if self.precision == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, self.precision))


@OPTIM_WRAPPER_CONSTRUCTORS.register_module(force=True)
class TrainableParametersConstructor(DefaultOptimWrapperConstructor):
    """Build the optimizer over the parameters that require gradients only.

    Checkpoints index the AdamW state by position in this list, so frozen
    weights (the image encoder) must not take positions in it.
    """

    def __call__(self, model: torch.nn.Module) -> OptimWrapper:
        model = distributed.unwrap(model)
        parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
        optimizer_config = self.optimizer_cfg.copy()
        optimizer_type = optimizer_config.pop("type")
        optimizer = getattr(torch.optim, optimizer_type)(parameters, **optimizer_config)
        wrapper_config = self.optim_wrapper_cfg.copy()
        wrapper_config.setdefault("type", "OptimWrapper")
        return OPTIM_WRAPPERS.build(wrapper_config, default_args=dict(optimizer=optimizer))


@OPTIM_WRAPPERS.register_module(force=True)
class ShardedClipOptimWrapper(OptimWrapper):
    """An optimizer wrapper that clips the gradient norm of an FSDP model over all shards.

    The plain wrapper would clip each process's shard by its own norm.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._model: torch.nn.Module | None = None

    @contextlib.contextmanager
    def optim_context(self, model: torch.nn.Module):
        self._model = model
        with super().optim_context(model):
            yield

    def _clip_grad(self) -> None:
        # NOTE: tested with FSDP on the CPU (gloo), not yet on GPUs.
        norm = self._model.clip_grad_norm_(**self.clip_grad_kwargs)
        self.message_hub.update_scalar(f"train/{self.grad_name}", float(norm))


class StepHook(Hook):
    """Record each optimizer step's losses, report progress and save checkpoints.

    The reported losses are those of the whole global batch: each process's
    micro-batch shares, summed over accumulation steps and processes.
    """

    priority = "LOW"

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.pending: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.started: float | None = None
        self.seconds = 0.0

    def before_train(self, runner) -> None:
        self.started = time.perf_counter()

    def after_train(self, runner) -> None:
        self.seconds = time.perf_counter() - self.started

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        trainer = self.trainer
        chunks = trainer.processes * trainer.parallel.accumulation
        # outputs["loss"] is the micro-batch's share scaled by the chunk count.
        self.pending["loss"] = self.pending.get("loss", 0.0) + float(outputs["loss"].detach()) / chunks
        for term in LOSS_TERMS:
            self.pending[term] = self.pending.get(term, 0.0) + float(outputs[term])
        if (runner.iter + 1) % trainer.parallel.accumulation:
            return
        step = (runner.iter + 1) // trainer.parallel.accumulation
        values = distributed.sum_across_ranks(self.pending)
        self.pending = {}
        self.history.append(values)
        config = trainer.config
        if distributed.is_main_process():
            logger.info("step %d/%d: %s", step, trainer.steps,
                        ", ".join(f"{key} {value:.4f}" for key, value in sorted(values.items())))
            append_jsonl(trainer.loss_log, {"step": step, **values})
            if trainer.progress:
                trainer.progress("train", step, trainer.steps, values)
        if step % config.checkpoint_every == 0 or step == trainer.steps:
            trainer.save(runner, step)


class Trainer:
    """Train a composite model on MDS samples with a step budget.

    Args:
        model: The model; its backbone must already be built (``setup``).
        spec: The method, for its training settings and the checkpoint record.
        samples: Training samples with question and answer attached.
        folder: Checkpoint folder, resumed from when it contains a checkpoint.
        steps: Step budget (overrides the method's default).
        seed: Seed of the batch order.
        progress: Optional progress callback, called on rank 0 only.
        parallel: Processes, strategy, accumulation and precision.
    """

    def __init__(self, model: MdsModel, spec: MethodSpec, samples: Sequence[MdsSample], folder: Path,
                 steps: int | None = None, seed: int = 0, progress: ProgressCallback | None = None,
                 parallel: ParallelSettings | None = None) -> None:
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
        self.parallel = parallel or ParallelSettings()
        self.precision = self.parallel.precision or self.config.precision
        self.processes = distributed.world_size()
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else \
            torch.device("cpu")
        distributed.check_strategy(ParallelSettings(strategy=self.parallel.strategy, precision=self.precision),
                                   self.processes, device)
        self.micro_batches = MicroBatches(len(self.samples), self.config.batch_size, seed, self.steps,
                                          self.processes, distributed.rank(), self.parallel.accumulation)
        self.device = device
        self.loss_log = self.folder.parent / LOSS_LOG

    def fit(self, start_step: int = 0) -> TrainResult:
        """Run optimizer steps from ``start_step`` up to the budget."""
        if start_step > self.steps:
            logger.warning("checkpoint is at step %d, past the budget of %d steps; it is used as it is",
                           start_step, self.steps)
        if start_step >= self.steps:
            logger.info("checkpoint is at step %d of %d; nothing to train", start_step, self.steps)
            return TrainResult(start_step, self.steps, 0.0, {}, [])

        self._log_settings()
        chunks = self.processes * self.parallel.accumulation
        training_model = MdsTrainingModel(self.model, self.config, self.samples, self.precision, chunks)
        # Encode each image once, before any wrapper exists, because the
        # frozen encoder is not part of the training forward pass.
        self.model.to(self.device)
        training_model.encoded = self._encode_all()
        hook = StepHook(self)
        runner = self._runner(training_model, hook)
        runner.train_loop._iter = start_step * self.parallel.accumulation
        # The runner builds the optimizer in train(); the resumed state is
        # loaded into it in before_run.
        runner.register_hook(_ResumeHook(self, start_step), priority="VERY_HIGH")

        self.model.train()
        runner.train()
        self.model.eval()
        recent = hook.history[-20:]
        means = {key: sum(item[key] for item in recent) / len(recent) for key in recent[0]}
        return TrainResult(start_step, self.steps, hook.seconds, means, hook.history)

    def _runner(self, training_model: MdsTrainingModel, hook: StepHook):
        from mmengine.runner import FlexibleRunner

        # Each dataset item is already a whole micro-batch of sample indices.
        loader = DataLoader(self.micro_batches, batch_size=1, shuffle=False, collate_fn=_single_item)
        config = self.config
        optimizer = dict(type="AdamW", lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)
        optim_wrapper = distributed.optim_wrapper_config(self.parallel, self.processes, self.precision, optimizer,
                                                         config.grad_clip)
        launcher = "pytorch" if self.processes > 1 else "none"
        strategy = distributed.strategy_config(self.parallel, self.processes, self.device,
                                               self.micro_batches.micro_batch, config.grad_clip,
                                               unsharded=training_model.frozen_decoder_modules())
        # The runner seeds every generator when it starts; keep the caller's
        # random state so that a run draws what the plain loop drew.
        states = torch.get_rng_state(), np.random.get_state(), random.getstate()
        runner = FlexibleRunner(
            model=training_model, work_dir=str(self.folder.parent / "train-logs"),
            experiment_name=f"train-{time.strftime('%Y%m%d-%H%M%S')}-{next(_RUNNER_IDS)}",
            train_dataloader=loader, optim_wrapper=optim_wrapper,
            train_cfg=dict(by_epoch=False, max_iters=len(self.micro_batches)),
            strategy=strategy, launcher=launcher, randomness=dict(seed=self.seed),
            default_hooks=dict(runtime_info=dict(type="RuntimeInfoHook"), timer=dict(type="IterTimerHook"),
                               logger=dict(type="LoggerHook", interval=10), checkpoint=None),
            custom_hooks=[hook], log_level="WARNING")
        torch.set_rng_state(states[0])
        np.random.set_state(states[1])
        random.setstate(states[2])
        return runner

    def _log_settings(self) -> None:
        micro = self.micro_batches.micro_batch
        logger.info(
            "training %d steps of %d samples: %d process(es) x %d accumulation step(s) x %d samples per "
            "micro-batch; strategy %s; forward precision %s (weights and optimizer state in float32)",
            self.steps, self.micro_batches.batch_size, self.processes, self.parallel.accumulation, micro,
            self.parallel.strategy if self.processes > 1 else "single process", self.precision)

    @property
    def shards_weights(self) -> bool:
        """Whether the strategy shards the optimizer state (FSDP, DeepSpeed ZeRO). FSDP also shards the weights."""
        return self.processes > 1 and self.parallel.strategy != "ddp"

    @property
    def saves_optimizer(self) -> bool:
        """Whether checkpoints store the AdamW state: with every strategy but DeepSpeed (its state is not gathered)."""
        return self.processes == 1 or self.parallel.strategy != "deepspeed"

    def restore_optimizer(self, runner, start_step: int) -> None:
        """Load the AdamW state of the checkpoint that a resumed run starts from."""
        if start_step == 0:
            return
        if not self.saves_optimizer:
            logger.warning("strategy %s shards the optimizer state, so AdamW restarts from zero moments at step %d",
                           self.parallel.strategy, start_step)
            return
        optimizer = runner.optim_wrapper.optimizer
        record = read_record(self.folder)
        if not self.shards_weights:
            restored = load_optimizer(self.folder, optimizer, record)
        else:
            # Every FSDP rank takes part in scattering the state, but only rank 0 reads the file.
            restored = has_optimizer_state(self.folder, record)
            if restored:
                state = read_optimizer_state(self.folder, record) if distributed.is_main_process() else None
                distributed.load_full_optimizer_state(runner.model, optimizer, state)
        if restored:
            logger.info("resumed the optimizer state at step %d", start_step)

    def _encode_all(self) -> EncodedImages:
        chunks = []
        for start in range(0, len(self.samples), ENCODE_CHUNK):
            with torch.no_grad():
                chunks.append(self.model.encode(self.samples[start:start + ENCODE_CHUNK]))
            if self.progress and distributed.is_main_process():
                self.progress("encode", min(start + ENCODE_CHUNK, len(self.samples)), len(self.samples), {})
        return EncodedImages(
            torch.cat([chunk.image_embeddings for chunk in chunks]),
            torch.cat([chunk.image_features for chunk in chunks]),
            [frame for chunk in chunks for frame in chunk.decoder_frames],
            [frame for chunk in chunks for frame in chunk.token_frames],
        )

    def save(self, runner, step: int) -> None:
        """Write the checkpoint of ``step`` from rank 0; the other ranks wait for it."""
        # NOTE: DeepSpeed's sharded optimizer state is not gathered, so its
        # checkpoints contain only the weights and a resumed run restarts
        # AdamW's moments from zero.
        optimizer = None
        if self.saves_optimizer:
            # Under FSDP every rank sends its shard of the state to rank 0.
            optimizer = distributed.full_optimizer_state(runner.model, runner.optim_wrapper.optimizer)
        with distributed.full_parameters(runner.model):
            if distributed.is_main_process():
                save_checkpoint(self.folder, self.model, self.spec, step, optimizer,
                                extra={"train_steps": self.steps, "seed": self.seed,
                                       "train_samples": len(self.samples), "processes": self.processes,
                                       "accumulation": self.parallel.accumulation})
        distributed.barrier()


class _ResumeHook(Hook):
    """Call :meth:`Trainer.restore_optimizer` once the runner has built the optimizer."""

    def __init__(self, trainer: Trainer, start_step: int) -> None:
        self.trainer = trainer
        self.start_step = start_step

    def before_run(self, runner) -> None:
        self.trainer.restore_optimizer(runner, self.start_step)


_RUNNER_IDS = itertools.count()
