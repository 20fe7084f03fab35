"""Checkpoint folders: safetensors weights, the method record and resume state.

Layout of a checkpoint folder::

    method.json             method definition, mdskit version, training step
    backbone/               the backbone, in transformers' format (none for
                            specialist methods)
    model.safetensors       every other weight of the model
    optimizer.safetensors   AdamW state, for resuming (optional)

Folders are written beside the target and swapped in, so an interrupted
save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .errors import CheckpointError
from .layouts import detect_layout
from .methods import MethodSpec
from .model import MdsModel
from .specialist import LABELS_KEY, SpecialistModel

logger = logging.getLogger(__name__)

METHOD_FILE = "method.json"
BACKBONE_FOLDER = "backbone"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"


def save_checkpoint(folder: Path, model: MdsModel | SpecialistModel, spec: MethodSpec, step: int,
                    optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """Write a checkpoint folder atomically (a crash keeps the previous one).

    ``optimizer`` is the optimizer or its whole state dict, keyed by
    parameter index as ``Optimizer.state_dict()`` is. A specialist's record
    also stores its label names under ``labels``.
    """
    folder = Path(folder)
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    # A specialist model has no backbone, so its folder has no backbone/.
    if hasattr(model, "backbone"):
        model.backbone.save_pretrained(staging / BACKBONE_FOLDER)
    weights = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()
               if not key.startswith("backbone.")}
    save_file(weights, str(staging / WEIGHTS_FILE))
    record = {"mdskit_version": __version__, "method": spec.as_dict(), "step": step, **(extra or {})}
    if isinstance(model, SpecialistModel):
        record[LABELS_KEY] = list(model.labels)
    if optimizer is not None:
        tensors, groups = _flatten_optimizer(optimizer)
        save_file(tensors, str(staging / OPTIMIZER_FILE))
        record["optimizer_param_groups"] = groups
    (staging / METHOD_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")

    previous = folder.with_name(folder.name + ".previous")
    shutil.rmtree(previous, ignore_errors=True)
    if folder.exists():
        folder.rename(previous)
    staging.rename(folder)
    shutil.rmtree(previous, ignore_errors=True)
    logger.info("saved checkpoint at step %d to %s", step, folder)


def read_record(folder: Path) -> dict[str, Any]:
    """Read the ``method.json`` record of a checkpoint folder."""
    folder = recover_folder(Path(folder))
    path = folder / METHOD_FILE
    if not folder.exists():
        raise CheckpointError(f"checkpoint folder {folder} does not exist; check the path, or train one with "
                              "'mdskit train' (it writes OUT/checkpoint).")
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not an mdskit checkpoint (no {METHOD_FILE}); pass a folder written by "
            "'mdskit train' or 'mdskit run' (OUT/checkpoint).")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is corrupt ({error}); retrain or restore the checkpoint.") from error
    if not isinstance(record, dict) or not isinstance(record.get("method"), dict) or "step" not in record:
        raise CheckpointError(f"{path} lacks the method definition or step; retrain or restore the checkpoint.")
    return record


def checkpoint_step(folder: Path) -> int:
    """Return the training step of an mdskit checkpoint, or 0 for a published one (LLaVA, LISA).

    Raises:
        CheckpointError: The folder is neither (see :func:`mdskit.layouts.detect_layout`).
    """
    folder = recover_folder(Path(folder))
    if folder.is_dir() and not (folder / METHOD_FILE).is_file():
        detect_layout(folder)
        return 0
    return int(read_record(folder)["step"])


def recover_folder(folder: Path) -> Path:
    """Restore the previous copy of a checkpoint folder whose save was interrupted mid-swap."""
    previous = folder.with_name(folder.name + ".previous")
    if not folder.exists() and previous.exists():
        logger.warning("checkpoint %s was being replaced when a run stopped; using its previous copy", folder)
        previous.rename(folder)
    return folder


def check_matches(record: dict[str, Any], spec: MethodSpec, folder: Path) -> None:
    """Raise CheckpointError when the checkpoint was trained for other components."""
    stored = record.get("method", {})
    wanted = spec.as_dict()
    for key in ("backbone", "prompt", "decoder", "specialist"):
        if _architecture(stored.get(key)) != _architecture(wanted.get(key)):
            raise CheckpointError(
                f"checkpoint {folder} was trained for method '{stored.get('name')}' with {key} "
                f"{stored.get(key)!r}, but method '{spec.name}' uses {wanted.get(key)!r}; run "
                f"'mdskit run {stored.get('name')} --checkpoint {folder}' or train a new checkpoint.")


def _architecture(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    # The backbone's own folder is stored in the checkpoint, so where it was
    # first loaded from does not matter.
    if entry is None:
        return None
    return {key: value for key, value in entry.items() if key != "pretrained"}


def load_weights(folder: Path, model: MdsModel | SpecialistModel) -> None:
    """Load ``model.safetensors`` into the non-backbone part of ``model``."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; the checkpoint is incomplete, retrain it.")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}); retrain or restore the checkpoint.") from error
    missing, unexpected = _load_partial(model, state)
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match the method: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}; "
            "use the method the checkpoint was trained for.")


def _load_partial(model: MdsModel | SpecialistModel, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    expected = {key for key in model.state_dict() if not key.startswith("backbone.")}
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if not missing and not unexpected:
        model.load_state_dict(state, strict=False)
    return missing, unexpected


def load_optimizer(folder: Path, optimizer: torch.optim.Optimizer, record: dict[str, Any]) -> bool:
    """Restore AdamW state saved with the checkpoint; False when there is none."""
    state_dict = read_optimizer_state(folder, record)
    if state_dict is None:
        return False
    optimizer.load_state_dict(state_dict)
    return True


def has_optimizer_state(folder: Path, record: dict[str, Any]) -> bool:
    """Return whether the checkpoint stores optimizer state."""
    return (Path(folder) / OPTIMIZER_FILE).is_file() and "optimizer_param_groups" in record


def read_optimizer_state(folder: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """Read the saved optimizer state dict, keyed by parameter index, or return None when there is none."""
    if not has_optimizer_state(folder, record):
        return None
    path = Path(folder) / OPTIMIZER_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is corrupt ({error}); retrain or restore the checkpoint.") from error
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": record["optimizer_param_groups"]}


def _flatten_optimizer(optimizer: torch.optim.Optimizer | dict[str, Any]) -> tuple[dict[str, torch.Tensor],
                                                                                     list[dict[str, Any]]]:
    state_dict = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
    tensors = {}
    for index, entries in state_dict["state"].items():
        for name, value in entries.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{name}"] = tensor.detach().contiguous().cpu()
    groups = [{key: (list(value) if isinstance(value, tuple) else value) for key, value in group.items()}
              for group in state_dict["param_groups"]]
    return tensors, groups


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
