"""Component registries, one per role, and the plugin that filled each entry."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmengine.registry import Registry

from .backbone import VisionLanguageBackbone
from .cot import CotGenerator
from .datasets import DatasetAdapter
from .decoder import MaskDecoder
from .errors import ConfigError
from .metrics import Metric
from .prompt import PromptModule
from .tts import TestTimeScaling


@dataclass(frozen=True)
class Role:
    """One component role: its key, base class and the plugin hook that fills it."""

    key: str
    title: str
    singular: str
    base: type
    hook: str


ROLES: tuple[Role, ...] = (
    Role("backbone", "vision-language backbones", "vision-language backbone", VisionLanguageBackbone, "mdskit_backbones"),
    Role("prompt", "prompt modules", "prompt module", PromptModule, "mdskit_prompt_modules"),
    Role("decoder", "mask decoders", "mask decoder", MaskDecoder, "mdskit_mask_decoders"),
    Role("tts", "test-time scaling strategies", "test-time scaling strategy", TestTimeScaling, "mdskit_tts_strategies"),
    Role("dataset", "dataset adapters", "dataset adapter", DatasetAdapter, "mdskit_dataset_adapters"),
    Role("metric", "metrics", "metric", Metric, "mdskit_metrics"),
    Role("cot", "chain-of-thought generators", "chain-of-thought generator", CotGenerator, "mdskit_cot_generators"),
)
ROLE_BY_KEY = {role.key: role for role in ROLES}


@dataclass
class PluginFailure:
    """A plugin, or one of its registrations, that could not be loaded."""

    plugin: str
    reason: str


@dataclass
class Components:
    """Every registered component, by role, with its providing plugin.

    Each role has its own mmengine :class:`~mmengine.registry.Registry`;
    ``providers[role][name]`` is the name of the plugin that registered it.
    """

    registries: dict[str, Registry] = field(default_factory=dict)
    providers: dict[str, dict[str, str]] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    plugins: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role in ROLES:
            self.registries.setdefault(role.key, Registry(role.title, scope=f"mdskit_{role.key}"))
            self.providers.setdefault(role.key, {})

    def register(self, role_key: str, component: type, plugin: str) -> None:
        """Add ``component`` to a role's registry, or record why it cannot be."""
        role = ROLE_BY_KEY[role_key]
        name = getattr(component, "name", None)
        if not isinstance(component, type) or not issubclass(component, role.base):
            self.failures.append(PluginFailure(
                plugin, f"{role.hook} returned {component!r}, which is not a subclass of "
                        f"{role.base.__module__}.{role.base.__name__}; return the component classes."))
            return
        if not isinstance(name, str) or not name:
            self.failures.append(PluginFailure(
                plugin, f"{component.__qualname__} has no 'name' class attribute; set name = '...'."))
            return
        if name in self.providers[role_key]:
            first = self.providers[role_key][name]
            self.failures.append(PluginFailure(
                plugin, f"{role.singular} '{name}' is already registered by plugin '{first}'; "
                        f"rename it or disable one of the two plugins."))
            return
        self.registries[role_key].register_module(name=name, module=component)
        self.providers[role_key][name] = plugin

    def names(self, role_key: str) -> list[str]:
        """Sorted names registered for a role."""
        return sorted(self.providers[role_key])

    def get(self, role_key: str, name: str) -> type:
        """Return the class registered as ``name``; raise ConfigError listing the choices if none is."""
        component = self.registries[role_key].get(name) if name in self.providers[role_key] else None
        if component is None:
            role = ROLE_BY_KEY[role_key]
            choices = ", ".join(self.names(role_key)) or "none registered"
            hint = self._failure_hint()
            raise ConfigError(f"unknown {role.singular} '{name}'; choose one of: {choices}.{hint}")
        return component

    def _failure_hint(self) -> str:
        if not self.failures:
            return ""
        broken = ", ".join(sorted({failure.plugin for failure in self.failures}))
        return f" Plugins that failed to load: {broken} (see 'mdskit list')."
