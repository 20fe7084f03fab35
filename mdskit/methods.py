"""``registry.yaml``: method definitions, their validation and building.

A method combines registered components: a backbone, an optional prompt
module, a mask decoder and a chain-of-thought generator, plus training
settings. Every component parameter is checked against the component's
constructor signature, and every error names the key and the valid choices.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, MdskitError, PluginError
from .finetune import FinetuneConfig, parse_finetune
from .plugins import load_plugins
from .registry import Components, PluginFailure

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOP_LEVEL_KEYS = {"schema", "plugins", "methods", "tts"}
METHOD_KEYS = {"description", "backbone", "prompt", "decoder", "cot", "training", "finetune", "provider", "specialist"}
COMPONENT_ROLES = {"backbone": "backbone", "prompt": "prompt", "decoder": "decoder", "cot": "cot"}
OPTIONAL_COMPONENTS = {"prompt"}
VISION_LANGUAGE_KEYS = ("backbone", "prompt", "decoder", "finetune")
PRECISIONS = ("bfloat16", "float16", "float32")


@dataclass(frozen=True)
class TrainingConfig:
    """Training settings of a method.

    Attributes:
        steps: Optimizer steps when no ``--train-steps`` is given.
        batch_size: Samples per step.
        lr: AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        ce_weight: Weight of the token cross-entropy.
        bce_weight: Weight of the per-pixel mask BCE.
        dice_weight: Weight of the soft Dice loss.
        checkpoint_every: Steps between checkpoints (the last step is always saved).
        grad_clip: Maximum gradient norm.
        precision: Autocast dtype of the forward pass (``bfloat16`` or
            ``float16``), or ``float32`` for full precision. Weights and
            optimizer state stay in float32 either way.
    """

    steps: int = 300
    batch_size: int = 8
    lr: float = 3.0e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    checkpoint_every: int = 100
    grad_clip: float = 1.0
    precision: str = "bfloat16"


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component name with its constructor parameters."""

    type: str
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.params}


@dataclass(frozen=True)
class MethodSpec:
    """A validated method definition.

    A vision-language method has a backbone, a decoder and an optional
    prompt module. A specialist method has only ``specialist`` (a
    :class:`~mdskit.specialist.SpecialistModel`), and ``backbone`` and
    ``decoder`` are None. Both have a chain-of-thought generator.
    """

    name: str
    description: str
    backbone: ComponentSpec | None
    prompt: ComponentSpec | None
    decoder: ComponentSpec | None
    cot: ComponentSpec
    training: TrainingConfig
    provider: str = "registry.yaml"
    finetune: FinetuneConfig | None = None
    specialist: ComponentSpec | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain-data form, stored in checkpoints and run records."""
        record = {
            "name": self.name,
            "backbone": self.backbone.as_dict() if self.backbone else None,
            "prompt": self.prompt.as_dict() if self.prompt else None,
            "decoder": self.decoder.as_dict() if self.decoder else None,
            "cot": self.cot.as_dict(),
            "training": {item.name: getattr(self.training, item.name) for item in fields(self.training)},
        }
        # Only set when present, so records of methods without it keep their earlier form.
        if self.finetune is not None:
            record["finetune"] = self.finetune.as_dict()
        # Only specialist methods carry the key, so the records (and run and
        # bench hashes) of vision-language methods are unchanged.
        if self.specialist is not None:
            record["specialist"] = self.specialist.as_dict()
        return record


@dataclass
class MethodRegistry:
    """Every method definition and every TTS strategy's default parameters.

    ``unavailable`` maps a method name to the reason it cannot be built: it
    needs a component of a plugin that failed to load, or a plugin defined
    it invalidly. :meth:`method` raises :class:`PluginError` with that reason.
    """

    methods: dict[str, MethodSpec]
    tts_defaults: dict[str, dict[str, Any]]
    source: str
    unavailable: dict[str, str] = field(default_factory=dict)

    def method(self, name: str) -> MethodSpec:
        """Return the method called ``name``, or raise an error that gives the reason there is none."""
        if name in self.unavailable:
            raise PluginError(f"method '{name}' is unavailable: {self.unavailable[name]}")
        if name not in self.methods:
            choices = ", ".join(sorted(self.methods)) or "none defined"
            raise ConfigError(f"unknown method '{name}'; choose one of: {choices} (defined in {self.source}).")
        return self.methods[name]


def default_registry_path() -> Path:
    """``$MDSKIT_REGISTRY``, else ``./registry.yaml``, else the one beside the package."""
    if os.environ.get("MDSKIT_REGISTRY"):
        return Path(os.environ["MDSKIT_REGISTRY"])
    local = Path.cwd() / "registry.yaml"
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[1] / "registry.yaml"


def registry_plugin_files(path: str | Path | None) -> list[Path]:
    """Return the plugin files that ``registry.yaml``'s ``plugins`` key names.

    Paths are relative to the registry file's folder. A missing registry
    file names none (:func:`load_registry` reports it).

    Raises:
        ConfigError: The file is not valid YAML or ``plugins`` is not a
            list of paths.
    """
    path = Path(path) if path else default_registry_path()
    if not path.is_file():
        return []
    document = _read_yaml(path)
    entries = document.get("plugins") if isinstance(document, dict) else None
    if entries is None:
        return []
    if not isinstance(entries, list) or not all(isinstance(entry, str) and entry for entry in entries):
        raise ConfigError(f"{path}: 'plugins' must be a list of plugin file paths (relative to the registry "
                          f"file), got {entries!r}.")
    return [(path.parent / entry).resolve() if not Path(entry).is_absolute() else Path(entry) for entry in entries]


def load_methods(registry_path: str | Path | None = None, disabled: tuple[str, ...] = (),
                 plugin_files: tuple[str | Path, ...] = ()) -> tuple[Components, MethodRegistry]:
    """Load the plugins (with the registry's and the given plugin files) and then ``registry.yaml``."""
    path = Path(registry_path) if registry_path else default_registry_path()
    files: dict[Path, Path] = {}
    for file in [*registry_plugin_files(path), *map(Path, plugin_files)]:
        # The same file named in registry.yaml and with --plugin loads once.
        files.setdefault(file.resolve(), file)
    components, plugin_methods = load_plugins(disabled=disabled, files=list(files.values()))
    return components, load_registry(path, components, plugin_methods)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error


def load_registry(path: str | Path | None, components: Components,
                  plugin_methods: dict[str, dict[str, Any]] | None = None) -> MethodRegistry:
    """Read and validate ``registry.yaml``, adding methods that plugins define.

    A method that needs a component of a plugin that failed to load or was
    disabled, and a plugin's invalid method definition, do not stop the
    others: they go to ``unavailable`` with the reason (plugin methods also
    to ``components.failures``). A method defined both by a plugin and by
    ``registry.yaml`` takes the registry's definition, and the clash is
    recorded as a failure of the plugin.

    Raises:
        ConfigError: naming the file, the key and the valid choices.
    """
    path = Path(path) if path else default_registry_path()
    if not path.is_file():
        raise ConfigError(f"registry file {path} not found; pass --registry PATH or run from the project folder.")
    document = _read_yaml(path)
    _check_keys(document, TOP_LEVEL_KEYS, f"{path}")
    if not isinstance(document.get("methods") or {}, dict):
        raise ConfigError(f"{path}: 'methods' must be a mapping of method names to definitions.")
    if document.get("schema") != SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema must be {SCHEMA_VERSION}, got {document.get('schema')!r}.")

    methods: dict[str, MethodSpec] = {}
    unavailable: dict[str, str] = {}
    for name, definition in (plugin_methods or {}).items():
        provider = str(definition.get("provider", "?"))
        try:
            methods[name] = parse_method(name, definition, components, f"plugin {provider}, method {name}")
        except MdskitError as error:
            unavailable[name] = str(error)
            components.failures.append(PluginFailure(provider, f"hook mdskit_methods returned an invalid "
                                                               f"definition: {error}", hook="mdskit_methods"))
    for name, definition in (document.get("methods") or {}).items():
        unavailable.pop(name, None)
        if name in (plugin_methods or {}):
            _report_replaced_method(components, name, plugin_methods[name], path)
        try:
            methods[name] = parse_method(name, definition, components, f"{path}: methods.{name}")
        except PluginError as error:
            methods.pop(name, None)
            unavailable[name] = str(error)
            logger.warning("method %s is unavailable: %s", name, error)
    tts_defaults = _parse_tts(document.get("tts") or {}, components, path)
    return MethodRegistry(methods, tts_defaults, str(path), unavailable)


def _report_replaced_method(components: Components, name: str, definition: dict[str, Any], path: Path) -> None:
    provider = str(definition.get("provider", "?"))
    reason = (f"hook mdskit_methods defines method '{name}', which {path} also defines; the registry.yaml "
              f"definition is used. Rename the plugin's method or disable the plugin with --disable-plugin "
              f"{provider}.")
    logger.warning("plugin %s: %s", provider, reason)
    components.failures.append(PluginFailure(provider, reason, hook="mdskit_methods"))


def parse_method(name: str, definition: Any, components: Components, where: str) -> MethodSpec:
    """Validate one method definition."""
    if not isinstance(definition, dict):
        raise ConfigError(f"{where}: a method must be a mapping of components, got {definition!r}.")
    _check_keys(definition, METHOD_KEYS, where)
    if "specialist" in definition:
        return _parse_specialist_method(name, definition, components, where)
    specs: dict[str, ComponentSpec | None] = {}
    for key, role in COMPONENT_ROLES.items():
        entry = definition.get(key)
        if entry is None:
            if key not in OPTIONAL_COMPONENTS:
                raise ConfigError(f"{where}: '{key}' is missing; name a registered component with 'type'.")
            specs[key] = None
            continue
        specs[key] = parse_component(entry, role, components, f"{where}.{key}")
    return MethodSpec(
        name=name, description=" ".join(str(definition.get("description", "")).split()),
        backbone=specs["backbone"], prompt=specs["prompt"], decoder=specs["decoder"], cot=specs["cot"],
        training=parse_training(definition.get("training") or {}, f"{where}.training"),
        provider=str(definition.get("provider", "registry.yaml")),
        finetune=parse_finetune(definition.get("finetune"), f"{where}.finetune"),
    )


def _parse_specialist_method(name: str, definition: dict[str, Any], components: Components,
                             where: str) -> MethodSpec:
    """Validate a specialist method: ``specialist``, ``cot`` and ``training``, with no vision-language parts."""
    mixed = [key for key in VISION_LANGUAGE_KEYS if definition.get(key) is not None]
    if mixed:
        raise ConfigError(f"{where}: a 'specialist' method has no {', '.join(mixed)}; remove "
                          f"{'that key' if len(mixed) == 1 else 'those keys'} or the 'specialist' key.")
    if definition.get("cot") is None:
        raise ConfigError(f"{where}: 'cot' is missing; a specialist's answer text is written by a registered "
                          "chain-of-thought generator, for example {type: template}.")
    return MethodSpec(
        name=name, description=" ".join(str(definition.get("description", "")).split()),
        backbone=None, prompt=None, decoder=None,
        cot=parse_component(definition["cot"], "cot", components, f"{where}.cot"),
        training=parse_training(definition.get("training") or {}, f"{where}.training"),
        provider=str(definition.get("provider", "registry.yaml")),
        specialist=parse_component(definition["specialist"], "specialist", components, f"{where}.specialist"),
    )


def parse_component(entry: Any, role: str, components: Components, where: str) -> ComponentSpec:
    """Validate ``{type: NAME, param: value, ...}`` against the registered class."""
    if not isinstance(entry, dict) or "type" not in entry:
        raise ConfigError(f"{where}: expected a mapping with a 'type' key, got {entry!r}.")
    params = {key: value for key, value in entry.items() if key != "type"}
    try:
        component = components.get(role, str(entry["type"]))
    except (ConfigError, PluginError) as error:
        # A disabled plugin may provide the name, so the method is unavailable rather than invalid.
        # NOTE: while any plugin is disabled, a misspelled type also only makes its method unavailable.
        unloaded = isinstance(error, PluginError) or components.disabled_plugins()
        raise (PluginError if unloaded else ConfigError)(f"{where}.type: {error}") from None
    check_params(component, params, where)
    return ComponentSpec(str(entry["type"]), copy.deepcopy(params))


def check_params(component: type, params: dict[str, Any], where: str) -> None:
    """Raise ConfigError when ``params`` contains a key the constructor does not take."""
    signature = inspect.signature(component.__init__)
    accepted = [name for name, parameter in signature.parameters.items()
                if name != "self" and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]
    takes_any = any(parameter.kind == parameter.VAR_KEYWORD for parameter in signature.parameters.values())
    for key in params:
        if key not in accepted and not takes_any:
            valid = ", ".join(accepted) or "none"
            raise ConfigError(f"{where}: unknown parameter '{key}' for '{component.name}'; valid parameters: {valid}.")


def parse_training(entry: Any, where: str) -> TrainingConfig:
    """Validate a training section against :class:`TrainingConfig`."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping, got {entry!r}.")
    known = {item.name: item for item in fields(TrainingConfig)}
    values: dict[str, Any] = {}
    for key, value in entry.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key '{key}'; valid keys: {', '.join(known)}.")
        values[key] = tuple(value) if key == "betas" and isinstance(value, (list, tuple)) else value
    config = TrainingConfig(**values)
    for item in fields(TrainingConfig):
        value = getattr(config, item.name)
        expected = {"int": int, "float": (int, float), "str": str}.get(str(item.type))
        if expected and (not isinstance(value, expected) or isinstance(value, bool)):
            raise ConfigError(f"{where}.{item.name}: expected {item.type}, got {value!r}.")
    if len(config.betas) != 2 or not all(isinstance(beta, (int, float)) for beta in config.betas):
        raise ConfigError(f"{where}.betas: expected two numbers, got {config.betas!r}.")
    if config.steps < 0 or config.batch_size < 1 or config.checkpoint_every < 1:
        raise ConfigError(f"{where}: steps must be >= 0, batch_size and checkpoint_every >= 1.")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"{where}: precision '{config.precision}' is invalid; choose one of: {', '.join(PRECISIONS)}.")
    return config


def _parse_tts(entry: dict[str, Any], components: Components, path: Path) -> dict[str, dict[str, Any]]:
    defaults: dict[str, dict[str, Any]] = {}
    for name, params in entry.items():
        where = f"{path}: tts.{name}"
        strategy = components.get("tts", name) if name in components.names("tts") else None
        if strategy is None:
            logger.warning("%s: no registered strategy '%s'; its defaults are ignored", where, name)
            continue
        params = params or {}
        check_params(strategy, params, where)
        defaults[name] = dict(params)
    return defaults


def _check_keys(mapping: dict[str, Any], allowed: set[str], where: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected a mapping, got {mapping!r}.")
    for key in mapping:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key '{key}'; valid keys: {', '.join(sorted(allowed))}.")
