"""Component registries, one per role, the plugins that filled them and their failures."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmengine.registry import Registry

from .backbone import VisionLanguageBackbone
from .cot import CotGenerator
from .datasets import DatasetAdapter
from .decoder import MaskDecoder
from .errors import ConfigError, PluginError
from .metrics import Metric
from .prompt import PromptModule
from .specialist import SpecialistModel
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
    Role("specialist", "specialist models", "specialist model", SpecialistModel, "mdskit_specialists"),
)
ROLE_BY_KEY = {role.key: role for role in ROLES}
ROLE_BY_HOOK = {role.hook: role for role in ROLES}


@dataclass
class PluginFailure:
    """A plugin, or one of its registrations, that could not be loaded.

    Attributes:
        plugin: Name of the plugin.
        reason: What failed and how to fix it, as one or two sentences.
        hook: The hook that failed, or None when the whole plugin did.
        role: Role key of the registration that failed, when known.
        component: Name of the component that was not registered, when known.
    """

    plugin: str
    reason: str
    hook: str | None = None
    role: str | None = None
    component: str | None = None

    def message(self) -> str:
        """Return the failure as one line: plugin, hook and reason."""
        where = f", hook {self.hook}" if self.hook and f"hook {self.hook}" not in self.reason else ""
        return f"plugin '{self.plugin}'{where}: {self.reason}"


@dataclass
class PluginInfo:
    """One plugin that the loader found.

    Attributes:
        name: Entry-point name, file stem or the name given in code.
        source: Entry-point value (``module:object``), file path or repr.
        route: ``"entry point"``, ``"file"`` or ``"object"``.
        version: Version of the distribution that declares the entry point,
            else the plugin module's ``__version__``, else None.
        distribution: Name of that distribution, for entry points.
        status: ``"loaded"``, ``"failed"``, ``"disabled"`` or ``"pending"``
            while loading.
    """

    name: str
    source: str
    route: str
    version: str | None = None
    distribution: str | None = None
    status: str = "pending"


@dataclass
class Components:
    """Every registered component, by role, with its providing plugin.

    Each role has its own mmengine :class:`~mmengine.registry.Registry`;
    ``providers[role][name]`` is the name of the plugin that registered it,
    ``plugins`` every plugin found, in load order, ``failures`` what
    could not be loaded, and ``warnings`` problems that are not a plugin's
    fault, such as ``--disable-plugin`` naming no plugin.
    """

    registries: dict[str, Registry] = field(default_factory=dict)
    providers: dict[str, dict[str, str]] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    plugins: dict[str, PluginInfo] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for role in ROLES:
            self.registries.setdefault(role.key, Registry(role.title, scope=f"mdskit_{role.key}"))
            self.providers.setdefault(role.key, {})

    def register(self, role_key: str, component: type, plugin: str) -> None:
        """Add ``component`` to a role's registry, or record why it cannot be."""
        role = ROLE_BY_KEY[role_key]
        name = getattr(component, "name", None)
        if not isinstance(component, type) or not issubclass(component, role.base):
            self._reject(plugin, role, None, f"returned {component!r}, which is not a subclass of "
                                             f"{role.base.__module__}.{role.base.__name__}; return the component "
                                             "classes.")
            return
        if not isinstance(name, str) or not name:
            self._reject(plugin, role, None, f"returned {component.__qualname__}, which has no 'name' class "
                                             "attribute; set name = '...' on the class.")
            return
        if name in self.providers[role_key]:
            first = self.providers[role_key][name]
            if first == plugin:
                reason = (f"registers {role.singular} '{name}' twice ({component.__name__} and "
                          f"{self.registries[role_key].get(name).__name__}); give each class its own name.")
            else:
                reason = (f"registers {role.singular} '{name}', which is already registered by plugin "
                          f"'{first}'; the first one is kept. Rename it or disable one of the two plugins "
                          "with --disable-plugin.")
            self._reject(plugin, role, None, reason)
            return
        self.registries[role_key].register_module(name=name, module=component)
        self.providers[role_key][name] = plugin

    def _reject(self, plugin: str, role: Role, name: str | None, reason: str) -> None:
        self.failures.append(PluginFailure(plugin, f"hook {role.hook} {reason}", hook=role.hook, role=role.key,
                                           component=name))

    def names(self, role_key: str) -> list[str]:
        """Sorted names registered for a role."""
        return sorted(self.providers[role_key])

    def get(self, role_key: str, name: str) -> type:
        """Return the class registered as ``name``.

        Raises:
            PluginError: No class has that name and a plugin failed to load,
                so the message names that plugin.
            ConfigError: No class has that name; the message lists the choices.
        """
        component = self.registries[role_key].get(name) if name in self.providers[role_key] else None
        if component is not None:
            return component
        role = ROLE_BY_KEY[role_key]
        choices = ", ".join(self.names(role_key)) or "none registered"
        message = f"unknown {role.singular} '{name}'; choose one of: {choices}.{self._disabled_hint()}"
        failed = list(dict.fromkeys(failure.plugin for failure in self.failures_for(role_key, name)))
        if failed:
            raise PluginError(f"{message} Plugins that failed to load and may provide it: {', '.join(failed)}. "
                              "Run 'mdskit plugins' for details.")
        raise ConfigError(message)

    def failures_for(self, role_key: str, name: str) -> list[PluginFailure]:
        """Return the failures that may explain why ``name`` is missing from a role.

        These are the failures of that component, of the role's hook, and
        of whole plugins (an import error hides every name a plugin has).
        A failure of a name that another plugin still provides is left out.
        """
        return [failure for failure in self.failures
                if failure.component == name
                or (failure.component is None and failure.role in (None, role_key)
                    and failure.hook in (None, ROLE_BY_KEY[role_key].hook))]

    def disabled_plugins(self) -> list[str]:
        """Names of the plugins skipped with ``--disable-plugin``, in load order."""
        return [info.name for info in self.plugins.values() if info.status == "disabled"]

    def _disabled_hint(self) -> str:
        disabled = self.disabled_plugins()
        if not disabled:
            return ""
        return f" Disabled plugins: {', '.join(disabled)}."
