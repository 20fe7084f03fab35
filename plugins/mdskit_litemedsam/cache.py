"""A two-level cache of image embeddings: in memory and as safetensors files."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

logger = logging.getLogger(__name__)

TENSOR_NAME = "embedding"


def image_key(image: np.ndarray, model_settings: str, encoder_settings: str) -> str:
    """Return the SHA-256 cache key of an image's embedding.

    The key covers ``model_settings`` (format and preprocessing), the image
    array (bytes, shape and dtype) and ``encoder_settings`` (the encoder's
    weights fingerprint and dtypes).
    """
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256()
    digest.update(f"{model_settings}|{array.shape}|{array.dtype.str}|".encode())
    digest.update(array.tobytes())
    digest.update(f"|{encoder_settings}".encode())
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings by key, in a least-recently-used memory cache and on disk.

    Args:
        directory: Folder of the disk cache, or None for memory only.
        memory_entries: Maximum number of embeddings kept in memory; 0
            disables the memory cache.
        prefix: Start of every file name, so that several models can share
            one folder.

    Tensors are kept on the CPU in the dtype they are stored with. A disk
    file that cannot be read, or contains the wrong shape or dtype, counts as a
    miss and is logged at WARNING. The next :meth:`put` replaces it.
    """

    def __init__(self, directory: Path | None, memory_entries: int, prefix: str) -> None:
        self.directory = directory
        self.memory_entries = memory_entries
        self.prefix = prefix
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._write_failures = 0

    def path(self, key: str) -> Path | None:
        """Return the file of ``key`` in the disk cache, or None without a disk cache."""
        if self.directory is None:
            return None
        # Two-character subfolders keep each folder small for large datasets.
        return self.directory / key[:2] / f"{self.prefix}-{key}.safetensors"

    def get(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """Return the cached tensor of ``key``, or None on a miss."""
        tensor = self._memory.get(key)
        if tensor is not None:
            self._memory.move_to_end(key)
            return tensor
        tensor = self._read(key, shape, dtype)
        if tensor is not None:
            self._remember(key, tensor)
        return tensor

    def put(self, key: str, tensor: torch.Tensor) -> None:
        """Store a CPU tensor in memory and on disk."""
        self._remember(key, tensor)
        self._write(key, tensor)

    def embed(self, keys: Sequence[str], images: Sequence[Any], encode: Callable[[list[Any]], torch.Tensor],
              batch_size: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Return the embeddings of ``images``, encoding and storing only those missing from the cache.

        Args:
            keys: One cache key per image; repeated keys are encoded once.
            images: The images, in the order of ``keys``.
            encode: Encodes a list of images into a batch of embeddings.
            batch_size: Maximum number of images per ``encode`` call.
            shape: Shape of one embedding.
            dtype: Dtype the embeddings are stored in; fresh ones are
                rounded to it, so a later cache hit returns the same values.
            device: Device of the returned tensor.

        Returns:
            B x ``shape`` float32 embeddings on ``device``.
        """
        by_key = dict(zip(keys, images, strict=True))
        found = {key: cached for key in by_key if (cached := self.get(key, shape, dtype)) is not None}
        pending = [key for key in by_key if key not in found]
        for start in range(0, len(pending), batch_size):
            batch_keys = pending[start:start + batch_size]
            embeddings = encode([by_key[key] for key in batch_keys])
            for key, embedding in zip(batch_keys, embeddings.to("cpu", dtype), strict=True):
                found[key] = embedding.clone()
                self.put(key, found[key])
        if not keys:
            return torch.zeros(0, *shape, device=device)
        return torch.stack([found[key] for key in keys]).to(device=device, dtype=torch.float32)

    def clear_memory(self) -> None:
        """Drop the in-memory entries. The disk cache is kept."""
        self._memory.clear()

    def _remember(self, key: str, tensor: torch.Tensor) -> None:
        if self.memory_entries <= 0:
            return
        self._memory[key] = tensor
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_entries:
            self._memory.popitem(last=False)

    def _read(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            tensor = load_file(str(path), device="cpu")[TENSOR_NAME]
        except (SafetensorError, OSError, KeyError) as error:
            logger.warning("unreadable cached embedding %s (%s: %s); recomputing it", path, type(error).__name__, error)
            return None
        if tuple(tensor.shape) != shape or tensor.dtype != dtype:
            logger.warning("cached embedding %s has shape %s and dtype %s, expected %s and %s; recomputing it",
                           path, tuple(tensor.shape), tensor.dtype, shape, dtype)
            return None
        return tensor

    def _write(self, key: str, tensor: torch.Tensor) -> None:
        path = self.path(key)
        if path is None:
            return
        temporary = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write beside the target and rename, so that a reader never
            # sees a partly written file, even with several processes.
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
            os.close(handle)
            save_file({TENSOR_NAME: tensor.contiguous()}, temporary)
            os.replace(temporary, path)
        except (OSError, SafetensorError) as error:
            if temporary is not None and os.path.exists(temporary):
                os.unlink(temporary)
            self._write_failures += 1
            # Only the first failure is logged at WARNING, because a full disk
            # or a read-only folder would otherwise log once per image.
            log = logger.warning if self._write_failures == 1 else logger.debug
            log("could not write cached embedding %s (%s: %s); continuing without it (%d failures so far)",
                path, type(error).__name__, error, self._write_failures)
