"""Published checkpoint layouts: detection and safe reading of their weights.

mdskit loads four kinds of local folders or files with ``--checkpoint`` or
a component option:

- ``mdskit``: a folder written by ``mdskit train`` (``method.json``).
- ``llava-hf``: a LLaVA model in transformers' format
  (``LlavaForConditionalGeneration`` saved with ``save_pretrained``).
- ``lisa``: the LISA repository's layout, a LLaVA-Llama model whose state
  dict also contains SAM under ``model.visual_model.`` and the ``[SEG]``
  projection under ``model.text_hidden_fcs.``.
- ``sam``: a segment-anything state dict (``image_encoder.``,
  ``prompt_encoder.``, ``mask_decoder.``): SAM ViT-B/L/H or MedSAM.

Weights are read only with safetensors or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .errors import CheckpointError

logger = logging.getLogger(__name__)

LAYOUTS = ("mdskit", "llava-hf", "lisa", "sam")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
LISA_SAM_PREFIX = "model.visual_model."
LISA_PROJECTION_PREFIX = "model.text_hidden_fcs.0."
SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
# Number of key names listed in a mismatch message; the rest are counted.
LISTED_KEYS = 5


def detect_layout(path: str | Path) -> str:
    """Name the layout of a checkpoint folder or weights file (one of ``LAYOUTS``).

    Raises:
        CheckpointError: The path is missing or is in none of the layouts.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found; pass an existing folder or weights file.")
    if path.is_dir() and (path / "method.json").is_file():
        return "mdskit"
    if path.is_file() or not (path / "config.json").is_file():
        names = weight_names(path)
        if any(name.startswith(SAM_PARTS) for name in names):
            return "sam"
        raise CheckpointError(
            f"{path} is not an mdskit checkpoint (no method.json; pass a folder written by 'mdskit train' or "
            f"'mdskit run'), nor a LLaVA or LISA folder (no config.json), nor segment-anything weights "
            f"(no {', '.join(SAM_PARTS)} tensors); see docs/checkpoints.md for the layouts.")
    config = read_config(path)
    architectures = config.get("architectures") or []
    if any("LISA" in name for name in architectures) or \
            any(name.startswith(LISA_SAM_PREFIX) for name in weight_names(path)):
        return "lisa"
    if config.get("model_type") == "llava":
        return "llava-hf"
    raise CheckpointError(
        f"{path}/config.json describes model_type {config.get('model_type')!r} with architectures "
        f"{architectures}, not a LLaVA (model_type 'llava') or LISA (LISAForCausalLM) model; pass a "
        "folder saved from LlavaForConditionalGeneration or LISA, or an mdskit checkpoint.")


def read_config(folder: Path) -> dict[str, Any]:
    """Read ``config.json`` of a transformers folder."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}; restore the file.") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"invalid {path}: expected a JSON object, found a {type(config).__name__}.")
    return config


def weight_files(path: Path) -> list[Path]:
    """List the weight files of a folder (safetensors first) or the file itself."""
    path = Path(path)
    if path.is_file():
        return [path]
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return safetensors
    return sorted(file for suffix in WEIGHT_SUFFIXES[1:] for file in path.glob(f"*{suffix}")
                  if not file.name.startswith("training_args"))


def weight_names(path: Path) -> list[str]:
    """Return every tensor name of a folder's or file's weights (reads .bin and .pth files whole)."""
    names: list[str] = []
    for file in weight_files(path):
        if file.suffix == ".safetensors":
            with _open_safetensors(file) as handle:
                names.extend(handle.keys())
        else:
            names.extend(_torch_load(file).keys())
    return names


def read_weights(path: str | Path, prefix: str = "", exclude: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Read the tensors whose names start with ``prefix``, with the prefix removed.

    Args:
        path: A weights file or a folder of them (shards included).
        prefix: Name prefix to select, e.g. ``model.visual_model.``.
        exclude: Name prefixes to skip (safetensors files skip them unread).

    Raises:
        CheckpointError: No weight file, an unreadable one, or no tensor
            under ``prefix``.
    """
    path = Path(path)
    files = weight_files(path)
    if not files:
        raise CheckpointError(
            f"no weights file found in {path} ({', '.join(WEIGHT_SUFFIXES)}); pass the checkpoint's folder.")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            with _open_safetensors(file) as handle:
                for name in handle.keys():
                    if name.startswith(prefix) and not name.startswith(exclude):
                        state[name[len(prefix):]] = handle.get_tensor(name)
        else:
            state.update({name[len(prefix):]: tensor for name, tensor in _torch_load(file).items()
                          if name.startswith(prefix) and not name.startswith(exclude)})
    if not state:
        raise CheckpointError(f"{path} has no tensor whose name starts with {prefix!r}.")
    return state


def check_keys(expected: Iterable[str], state: Mapping[str, Any], source: str, fix: str) -> None:
    """Raise CheckpointError naming the missing and unexpected keys of ``state``, if any."""
    expected = set(expected)
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys ({list_keys(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys ({list_keys(unexpected)})")
    raise CheckpointError(f"{source} does not match the layout: {' and '.join(parts)}. {fix}")


def check_shapes(module_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError naming the tensors whose shapes differ from the module's."""
    wrong = [f"{name} {tuple(state[name].shape)} (expected {tuple(tensor.shape)})"
             for name, tensor in module_state.items() if name in state and state[name].shape != tensor.shape]
    if wrong:
        raise CheckpointError(f"{source} has tensors of the wrong shape: {list_keys(wrong)}.")


def list_keys(keys: list[str]) -> str:
    """Join the first ``LISTED_KEYS`` names and count the rest."""
    listed = ", ".join(keys[:LISTED_KEYS])
    if len(keys) > LISTED_KEYS:
        listed += f", and {len(keys) - LISTED_KEYS} more"
    return listed


def _open_safetensors(file: Path):
    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot read safetensors file {file}: {error}; restore or re-save it.") from error


def unsafe_pickle_message(file: Path) -> str:
    """Explain a rejected pickle without torch's advice to load it unsafely."""
    return (f"cannot read {file}: it contains pickled Python objects other than tensors, which mdskit does not "
            "load because unpickling them can run code. Save the weights as a plain state dict of tensors or as "
            "safetensors.")


def _torch_load(file: Path) -> dict[str, torch.Tensor]:
    # weights_only=True rejects files that need arbitrary pickled objects.
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(unsafe_pickle_message(file)) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"cannot read {file} with torch.load(weights_only=True): {type(error).__name__}: {first_line}. "
            "Save the weights as a plain state dict or as safetensors.") from error
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"invalid weights file {file}: expected a state dict of tensors, found a {type(state).__name__}.")
    return dict(state)
