"""Build models, strategies and generators from validated definitions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .checkpoint import BACKBONE_FOLDER, METHOD_FILE, check_matches, load_weights, read_record, recover_folder
from .cot import CotGenerator
from .errors import CheckpointError, ConfigError
from .layouts import LISA_PROJECTION_PREFIX, check_keys, check_shapes, detect_layout, read_weights
from .methods import ComponentSpec, MethodRegistry, MethodSpec, check_params
from .model import MdsModel
from .registry import Components
from .specialist import LABELS_KEY, SpecialistModel
from .tts import TestTimeScaling

logger = logging.getLogger(__name__)


def build_component(components: Components, role: str, spec: ComponentSpec, **overrides: Any):
    """Instantiate a registered component with its parameters."""
    component = components.get(role, spec.type)
    return component(**{**spec.params, **overrides})


def build_model(spec: MethodSpec, components: Components,
                checkpoint: str | Path | None = None) -> MdsModel | SpecialistModel:
    """Build the composite model of a method, from a checkpoint folder if given.

    A specialist method gets its :class:`SpecialistModel` (see
    :func:`build_specialist`).

    Without a checkpoint the backbone may still need ``setup(corpus)``
    before training (see :meth:`VisionLanguageBackbone.setup`).
    """
    if spec.specialist is not None:
        return build_specialist(spec, components, checkpoint)
    overrides: dict[str, Any] = {}
    folder = None
    if checkpoint is not None and Path(checkpoint).exists() and not (Path(checkpoint) / METHOD_FILE).is_file():
        return build_published(spec, components, Path(checkpoint))
    if checkpoint is not None:
        folder = recover_folder(Path(checkpoint))
        check_matches(read_record(folder), spec, folder)
        overrides["pretrained"] = str(folder / BACKBONE_FOLDER)
    backbone = build_component(components, "backbone", spec.backbone, **overrides)
    decoder = build_component(components, "decoder", spec.decoder)
    prompt = build_component(components, "prompt", spec.prompt) if spec.prompt else None
    model = MdsModel(backbone, decoder, prompt)
    pretrained = spec.backbone.params.get("pretrained")
    if folder is None and spec.backbone.type == "llava-hf" and pretrained and detect_layout(pretrained) == "lisa":
        load_lisa_projection(model, Path(pretrained))
    if folder is not None:
        load_weights(folder, model)
        logger.info("loaded method %s from checkpoint %s", spec.name, folder)
    return model


def build_published(spec: MethodSpec, components: Components, path: Path) -> MdsModel:
    """Build a method's model around a published checkpoint (LLaVA or LISA folder).

    The backbone becomes ``llava-hf`` on the folder, with the method's
    backbone parameters when the method already uses ``llava-hf``. A LISA folder also
    provides the mask decoder (``sam`` on its ``model.visual_model.*``
    weights) and the ``[SEG]`` projection. With a LLaVA folder the method's
    own mask decoder is used, and the projection starts untrained because
    LLaVA has none. The method's prompt module is kept.

    Raises:
        CheckpointError: The path is not a LLaVA or LISA folder; the
            message names the option for a mask decoder's weights.
    """
    layout = detect_layout(path)
    if layout == "sam":
        raise CheckpointError(
            f"{path} contains segment-anything weights, which are a mask decoder, not a whole model; set the "
            f"method's decoder to {{type: sam, checkpoint: {path}}} in registry.yaml (see docs/checkpoints.md).")
    if layout not in ("llava-hf", "lisa"):
        raise CheckpointError(f"{path} is a {layout} checkpoint, not a LLaVA or LISA folder.")
    backbone_params = spec.backbone.params if spec.backbone.type == "llava-hf" else {}
    backbone_spec = ComponentSpec("llava-hf", {**backbone_params, "pretrained": str(path)})
    decoder_spec = spec.decoder
    if layout == "lisa":
        params = spec.decoder.params if spec.decoder.type == "sam" else {}
        decoder_spec = ComponentSpec("sam", {**params, "checkpoint": str(path)})
    backbone = build_component(components, "backbone", backbone_spec)
    decoder = build_component(components, "decoder", decoder_spec)
    prompt = build_component(components, "prompt", spec.prompt) if spec.prompt else None
    model = MdsModel(backbone, decoder, prompt)
    if layout == "lisa":
        load_lisa_projection(model, path)
    else:
        logger.warning("the [SEG] projection of %s starts untrained: a LLaVA checkpoint has none; fine-tune a "
                       "registry.yaml method with backbone {type: llava-hf, pretrained: FOLDER} (see "
                       "docs/checkpoints.md) before trusting the masks", path)
    logger.info("built method %s on the %s checkpoint %s (backbone llava-hf, decoder %s)", spec.name, layout, path,
                decoder_spec.type)
    return model


def load_lisa_projection(model: MdsModel, path: Path) -> None:
    """Load a LISA folder's ``[SEG]`` projection (``text_hidden_fcs.0``) into ``model``."""
    projection = read_weights(path, LISA_PROJECTION_PREFIX)
    source = f"LISA checkpoint {path} ({LISA_PROJECTION_PREFIX}*)"
    check_keys(model.seg_projection.state_dict().keys(), projection, source,
               "Pass a LISA folder whose [SEG] projection is text_hidden_fcs.0 (Linear, ReLU, Linear).")
    check_shapes(model.seg_projection.state_dict(), projection, source)
    model.seg_projection.load_state_dict(projection)
    model.projection_pretrained = True


def build_specialist(spec: MethodSpec, components: Components, checkpoint: str | Path | None = None,
                     labels: list[str] | None = None) -> SpecialistModel:
    """Build a specialist method's model with its answer-text generator, from a checkpoint if given.

    A checkpoint supplies the label names of the classification head;
    without one, pass ``labels`` (the train split's, see
    :func:`mdskit.specialist.train_labels`).
    """
    folder = None
    if checkpoint is not None:
        folder = recover_folder(Path(checkpoint))
        record = read_record(folder)
        check_matches(record, spec, folder)
        labels = record.get(LABELS_KEY)
        if not isinstance(labels, list) or not labels:
            raise CheckpointError(f"{folder / METHOD_FILE} has no '{LABELS_KEY}' list of the classifier's labels; "
                                  "retrain the checkpoint.")
    model = build_component(components, "specialist", spec.specialist, labels=list(labels or []))
    model.cot_generator = build_cot_generator(spec, components)
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
