"""Multi-process training and evaluation: process group, strategies, batch split.

A run started by ``torchrun`` (which sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``) or with ``--launcher pytorch`` joins a process group before
any model is built: NCCL when CUDA is available, else gloo on the CPU. Every
process trains on its share of each global batch, rank 0 writes checkpoints
and results, and the evaluation splits the test samples over the ranks and
gathers the per-sample records on every rank.

Strategies run through mmengine's ``FlexibleRunner``:

- ``ddp``: ``DistributedDataParallel``, on the CPU (gloo) or on GPUs;
- ``fsdp``: ``FullyShardedDataParallel`` with the original parameters kept,
  so frozen and trainable weights may share a module, on GPUs or on the
  CPU (gloo);
- ``deepspeed``: DeepSpeed ZeRO stage 1 or 2, on GPUs or on CPU processes
  through DeepSpeed's CPU accelerator (gloo when oneCCL is absent); needs
  the ``deepspeed`` package pinned in ``requirements/deepspeed.txt``.
"""

from __future__ import annotations

import datetime
import importlib.util
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

LAUNCHERS = ("none", "pytorch")
STRATEGIES = ("ddp", "fsdp", "deepspeed")
PRECISIONS = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class ParallelSettings:
    """Process layout, strategy and memory options of a training run.

    Attributes:
        launcher: ``pytorch`` when the processes were started by ``torchrun``
            (or an equivalent that sets its environment variables), ``none``
            for one process. ``None`` reads it from the environment.
        strategy: ``ddp``, ``fsdp`` or ``deepspeed``; used with more than
            one process.
        accumulation: Micro-batches per optimizer step on each process
            (gradient accumulation).
        precision: Autocast dtype of the forward pass, overriding the
            method's ``training.precision``; ``float16`` needs CUDA.
        zero_stage: DeepSpeed ZeRO stage (1 or 2).
    """

    launcher: str | None = None
    strategy: str = "ddp"
    accumulation: int = 1
    precision: str | None = None
    zero_stage: int = 2

    def __post_init__(self) -> None:
        if self.launcher is not None and self.launcher not in LAUNCHERS:
            raise ConfigError(f"launcher '{self.launcher}' is unknown; use one of {', '.join(LAUNCHERS)}.")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy '{self.strategy}' is unknown; use one of {', '.join(STRATEGIES)}.")
        if self.accumulation < 1:
            raise ConfigError(f"gradient accumulation {self.accumulation} is below 1; give 1 or more micro-batches.")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"precision '{self.precision}' is unknown; use one of {', '.join(PRECISIONS)}.")
        if self.zero_stage not in (1, 2):
            raise ConfigError(f"ZeRO stage {self.zero_stage} is not supported; use 1 or 2 (stage 3 shards the "
                              "weights that the checkpoint writer reads whole).")


def launched_by_torchrun() -> bool:
    """Return whether the environment contains ``torchrun``'s rendezvous variables."""
    return all(name in os.environ for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def resolve_launcher(settings: ParallelSettings) -> str:
    """Return the launcher to use: the given one, else ``pytorch`` under ``torchrun``."""
    if settings.launcher is not None:
        if settings.launcher == "pytorch" and not launched_by_torchrun():
            raise ConfigError("--launcher pytorch needs the variables that torchrun sets (WORLD_SIZE, RANK, "
                              "LOCAL_RANK, MASTER_ADDR, MASTER_PORT); start the command with "
                              "'torchrun --nproc-per-node N -m mdskit.cli ...'.")
        return settings.launcher
    return "pytorch" if launched_by_torchrun() else "none"


def init_process_group(settings: ParallelSettings) -> None:
    """Join the process group of a ``pytorch`` launch (once per process).

    The group must exist before mmengine builds its runner: mmengine would
    otherwise start NCCL, which fails on a CPU-only machine.
    """
    if resolve_launcher(settings) == "none" or is_distributed():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    logger.info("joined the %s process group as rank %d of %d", backend, rank(), world_size())


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    if is_distributed():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a one-process run)."""
    if is_distributed():
        dist.barrier()


def all_gather_objects(value: Any) -> list[Any]:
    """Return every rank's ``value``, in rank order, on every process."""
    if not is_distributed():
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def sum_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Sum each value over the processes (the same keys on every rank)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([values[key] for key in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.cpu().tolist(), strict=True))


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the block on rank 0, then on the other ranks (for shared files)."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def micro_batch_size(batch_size: int, processes: int, accumulation: int) -> int:
    """Return the samples of one micro-batch, after checking that the split is exact.

    Raises:
        ConfigError: ``batch_size`` is not a multiple of processes x accumulation.
    """
    chunks = processes * accumulation
    if batch_size % chunks:
        raise ConfigError(
            f"the global batch of {batch_size} samples does not split into {processes} processes x "
            f"{accumulation} accumulation steps = {chunks} equal micro-batches; set training.batch_size to a "
            f"multiple of {chunks}, or change the number of processes or --accumulate.")
    return batch_size // chunks


def check_strategy(settings: ParallelSettings, processes: int, device: torch.device) -> None:
    """Reject a strategy that cannot run here, before any compute.

    Raises:
        ConfigError: float16 on the CPU, or DeepSpeed that is missing, is a
            version that mmengine cannot load, or has an accelerator that
            does not match ``device``.
    """
    if settings.precision == "float16" and device.type != "cuda":
        raise ConfigError("float16 training needs CUDA (its loss scaling and kernels are GPU-only); use "
                          "--precision bfloat16 or float32 on the CPU.")
    if processes == 1 or settings.strategy != "deepspeed":
        return
    check_deepspeed(device)


def check_deepspeed(device: torch.device) -> None:
    """Check that the installed DeepSpeed can run mmengine's ``DeepSpeedStrategy`` on ``device``.

    Importing ``deepspeed`` takes a few seconds, so only a DeepSpeed run pays for it.
    """
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("strategy 'deepspeed' needs the deepspeed package; install it with "
                          "'bash scripts/setup.sh --with deepspeed' (deepspeed 0.19.6, from "
                          "requirements/deepspeed.txt) or use --strategy ddp or fsdp.")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    # mmengine 0.10.7's DeepSpeedStrategy imports the 1-bit optimizers from
    # deepspeed.runtime.fp16.onebit, which DeepSpeed 0.19.7 removed.
    if importlib.util.find_spec("deepspeed.runtime.fp16.onebit") is None:
        raise ConfigError(f"deepspeed {deepspeed.__version__} lacks deepspeed.runtime.fp16.onebit, which "
                          "mmengine's DeepSpeedStrategy imports; install 'deepspeed==0.19.6' "
                          "(requirements/deepspeed.txt).")
    accelerator = get_accelerator().device_name()
    expected = "cuda" if device.type == "cuda" else "cpu"
    if accelerator != expected:
        raise ConfigError(f"DeepSpeed's accelerator is '{accelerator}' but training runs on '{device.type}'; "
                          f"set DS_ACCELERATOR={expected}, or use --strategy ddp or fsdp.")


def strategy_config(settings: ParallelSettings, processes: int, device: torch.device, micro_batch: int,
                    grad_clip: float, unsharded: Sequence[str] = ()) -> dict[str, Any] | None:
    """Return mmengine's strategy config, or None for one process.

    DDP looks for unused parameters because a method leaves some decoder
    weights unused (for example the no-mask embedding when a dense prompt is
    given). ``device_ids`` is None on the CPU, where gloo runs the reduction.

    Args:
        unsharded: Names of submodules that FSDP leaves whole on every
            process (its ``ignored_modules``), for frozen modules whose
            weights are read outside the wrapped forward pass.
    """
    if processes == 1:
        return None
    if settings.strategy == "ddp":
        device_ids = None
        if device.type == "cuda":
            device_ids = [device.index if device.index is not None else 0]
        wrapper = dict(type="MMDistributedDataParallel", device_ids=device_ids, find_unused_parameters=True,
                       broadcast_buffers=False)
        return dict(type="DDPStrategy", model_wrapper=wrapper)
    if settings.strategy == "fsdp":
        wrapper = dict(type="MMFullyShardedDataParallel", use_orig_params=True)
        if device.type != "cuda":
            # mmengine 0.10.7's FSDPStrategy passes device_id=LOCAL_RANK,
            # which makes FSDP move the weights to that CUDA device.
            wrapper["device_id"] = "cpu"
        if unsharded:
            wrapper["ignored_modules"] = list(unsharded)
        return dict(type="FSDPStrategy", model_wrapper=wrapper)
    # DeepSpeed clips and accumulates itself; the weights stay float32 and
    # the forward pass runs under the training model's own autocast.
    config = dict(train_micro_batch_size_per_gpu=micro_batch, gradient_accumulation_steps=settings.accumulation,
                  gradient_clipping=grad_clip, zero_optimization=dict(stage=settings.zero_stage))
    return dict(type="DeepSpeedStrategy", config=config)


def optim_wrapper_config(settings: ParallelSettings, processes: int, precision: str, optimizer: dict[str, Any],
                         grad_clip: float) -> dict[str, Any]:
    """Return mmengine's optimizer wrapper config for the strategy.

    The wrapper clips the gradient norm and accumulates micro-batches; with
    float16 it also scales the loss (mmengine's ``AmpOptimWrapper``).
    """
    common = dict(constructor="TrainableParametersConstructor", optimizer=optimizer)
    if processes > 1 and settings.strategy == "deepspeed":
        return dict(type="DeepSpeedOptimWrapper", **common)
    wrapper = dict(common, type="OptimWrapper", clip_grad=dict(max_norm=grad_clip),
                   accumulative_counts=settings.accumulation)
    if precision == "float16":
        wrapper.update(type="AmpOptimWrapper", dtype="float16")
    if processes > 1 and settings.strategy == "fsdp":
        if precision == "float16":
            raise ConfigError("float16 loss scaling is not combined with --strategy fsdp here; use "
                              "--precision bfloat16 with fsdp.")
        wrapper["type"] = "ShardedClipOptimWrapper"
    return wrapper


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Return the module inside a DDP, FSDP or DeepSpeed wrapper."""
    while hasattr(model, "module"):
        model = model.module
    return model


@contextmanager
def full_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Make the whole weights visible on rank 0 inside the block (FSDP only; a no-op otherwise).

    Every rank must enter the block, because gathering the shards is a
    collective operation.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if not isinstance(model, FullyShardedDataParallel):
        yield
        return
    with FullyShardedDataParallel.summon_full_params(model, writeback=False, rank0_only=True, offload_to_cpu=True):
        yield


def optimizer_parameter_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Return the name of each optimizer parameter, in the order of ``optimizer.state_dict()``'s indices.

    FSDP's wrapper prefix is removed, as in the names that FSDP's optimizer
    state dicts use.
    """
    from torch.distributed.fsdp._common_utils import FSDP_PREFIX

    names = {id(parameter): name.replace(FSDP_PREFIX, "") for name, parameter in model.named_parameters()}
    ordered = []
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            if id(parameter) not in names:
                raise ValueError(f"an optimizer parameter of shape {tuple(parameter.shape)} is not a parameter of "
                                 f"{type(model).__name__}; build the optimizer over the model's own parameters.")
            ordered.append(names[id(parameter)])
    return ordered


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Return the whole optimizer state dict on rank 0 and None on the other ranks.

    The result is keyed by parameter index, as ``optimizer.state_dict()``
    is. Under FSDP, FSDP gathers the sharded state to rank 0's CPU memory.
    Every rank must call this, because the gathering is a collective operation.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if not isinstance(model, FullyShardedDataParallel):
        return optimizer.state_dict() if is_main_process() else None
    with _full_state_dict_type(model):
        gathered = FullyShardedDataParallel.optim_state_dict(model, optimizer)
    if not is_main_process():
        return None
    return _rekey_optimizer_state(gathered, optimizer_parameter_names(model, optimizer))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                              state: dict[str, Any] | None) -> None:
    """Load a whole optimizer state dict keyed by parameter index, as :func:`full_optimizer_state` returns it.

    Under FSDP every rank must call this. Only rank 0's ``state`` is read,
    and FSDP sends each rank its shard. Elsewhere ``state`` must be given.
    """
    from torch.distributed.fsdp import FullyShardedDataParallel

    if not isinstance(model, FullyShardedDataParallel):
        optimizer.load_state_dict(state)
        return
    by_name: dict[str, Any] = {}
    if is_main_process():
        indices = {index: name for index, name in enumerate(optimizer_parameter_names(model, optimizer))}
        by_name = _rekey_optimizer_state(state, indices)
    with _full_state_dict_type(model):
        local = FullyShardedDataParallel.optim_state_dict_to_load(model, optimizer, by_name)
    optimizer.load_state_dict(local)


def _rekey_optimizer_state(state_dict: dict[str, Any], keys: list[str] | dict[int, str]) -> dict[str, Any]:
    """Rename the parameters of an optimizer state dict, from names to indices (given a name list) or the reverse."""
    mapping = {name: index for index, name in enumerate(keys)} if isinstance(keys, list) else keys
    listed = [key for group in state_dict["param_groups"] for key in group["params"]]
    unknown = [key for key in [*state_dict["state"], *listed] if key not in mapping]
    if unknown:
        raise CheckpointError(f"optimizer state for parameters {unknown[:5]} matches none of the optimizer's "
                              f"{len(mapping)} parameters; resume with the method and fine-tuning of the checkpoint.")
    groups = [{**group, "params": [mapping[key] for key in group["params"]]} for group in state_dict["param_groups"]]
    return {"state": {mapping[key]: entries for key, entries in state_dict["state"].items()}, "param_groups": groups}


@contextmanager
def _full_state_dict_type(model: torch.nn.Module) -> Iterator[None]:
    """Make FSDP's optimizer state dicts whole, on rank 0 only, with tensors on the CPU."""
    from torch.distributed.fsdp import (FullOptimStateDictConfig, FullStateDictConfig, FullyShardedDataParallel,
                                        StateDictType)

    # Offloading copies GPU tensors to the CPU, but it must stay off for
    # weights on the CPU. There, in PyTorch 2.14, FSDP's offload returns each
    # state of a parameter (exp_avg, exp_avg_sq) as a view of one reused
    # gather buffer, so all of them contain the last state's values. Without
    # offload FSDP clones each state.
    # NOTE: the offloading (GPU) path has not been run by the tests.
    offload = next(model.parameters()).device.type != "cpu"
    with FullyShardedDataParallel.state_dict_type(
            model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=offload, rank0_only=True),
            FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=True)):
        yield
