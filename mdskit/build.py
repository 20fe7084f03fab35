"""Build models, strategies and generators from validated definitions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .checkpoint import BACKBONE_FOLDER, check_matches, load_weights, read_record, recover_folder
from .cot import CotGenerator
from .errors import ConfigError
from .methods import ComponentSpec, MethodRegistry, MethodSpec, check_params
from .model import MdsModel
from .registry import Components
from .tts import TestTimeScaling

logger = logging.getLogger(__name__)


def build_component(components: Components, role: str, spec: ComponentSpec, **overrides: Any):
    """Instantiate a registered component with its parameters."""
    component = components.get(role, spec.type)
    return component(**{**spec.params, **overrides})


def build_model(spec: MethodSpec, components: Components, checkpoint: str | Path | None = None) -> MdsModel:
    """Build the composite model of a method, from a checkpoint folder if given.

    Without a checkpoint the backbone may still need ``setup(corpus)``
    before training (see :meth:`VisionLanguageBackbone.setup`).
    """
    overrides: dict[str, Any] = {}
    folder = None
    if checkpoint is not None:
        folder = recover_folder(Path(checkpoint))
        check_matches(read_record(folder), spec, folder)
        overrides["pretrained"] = str(folder / BACKBONE_FOLDER)
    backbone = build_component(components, "backbone", spec.backbone, **overrides)
    decoder = build_component(components, "decoder", spec.decoder)
    prompt = build_component(components, "prompt", spec.prompt) if spec.prompt else None
    model = MdsModel(backbone, decoder, prompt)
    if folder is not None:
        load_weights(folder, model)
        logger.info("loaded method %s from checkpoint %s", spec.name, folder)
    return model


def build_cot_generator(spec: MethodSpec, components: Components) -> CotGenerator:
    """Build the chain-of-thought generator that writes the method's training answers."""
    return build_component(components, "cot", spec.cot)


def build_tts(name: str, components: Components, registry: MethodRegistry,
              num_paths: int | None = None, temperature: float | None = None) -> TestTimeScaling:
    """Build a TTS strategy from ``registry.yaml`` defaults and command-line overrides."""
    strategy = components.get("tts", name)
    params = dict(registry.tts_defaults.get(name, {}))
    if num_paths is not None:
        params["num_paths"] = num_paths
    if temperature is not None:
        params["temperature"] = temperature
    check_params(strategy, params, f"test-time scaling '{name}'")
    try:
        return strategy(**params)
    except TypeError as error:
        raise ConfigError(f"test-time scaling '{name}': {error}") from error
