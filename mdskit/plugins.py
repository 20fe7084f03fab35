"""The plugin API: pluggy hook specifications and the entry-point loader.

A plugin is a module (or any object) listed in the ``mdskit.plugins``
entry-point group whose functions are marked with :data:`hookimpl`. Each
hook returns component classes for one role; the loader registers them and
records which plugin provided each. A plugin that fails to import, or
returns something invalid, is reported and skipped; the others still load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

import pluggy

from .registry import ROLES, Components, PluginFailure

logger = logging.getLogger(__name__)

PROJECT = "mdskit"
ENTRY_POINT_GROUP = "mdskit.plugins"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class MdskitHookSpecs:
    """The hooks a plugin may implement. Each is called once per load."""

    @hookspec
    def mdskit_backbones(self) -> list[type]:
        """Return vision-language backbone classes (``VisionLanguageBackbone``)."""

    @hookspec
    def mdskit_prompt_modules(self) -> list[type]:
        """Return similarity-to-mask prompt module classes (``PromptModule``)."""

    @hookspec
    def mdskit_mask_decoders(self) -> list[type]:
        """Return mask decoder classes (``MaskDecoder``)."""

    @hookspec
    def mdskit_tts_strategies(self) -> list[type]:
        """Return test-time scaling strategy classes (``TestTimeScaling``)."""

    @hookspec
    def mdskit_dataset_adapters(self) -> list[type]:
        """Return dataset adapter classes (``DatasetAdapter``)."""

    @hookspec
    def mdskit_metrics(self) -> list[type]:
        """Return metric classes (``Metric``)."""

    @hookspec
    def mdskit_cot_generators(self) -> list[type]:
        """Return chain-of-thought generator classes (``CotGenerator``)."""

    @hookspec
    def mdskit_methods(self) -> dict[str, dict[str, Any]]:
        """Return method definitions in the format of ``registry.yaml``'s ``methods``."""


def _plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(MdskitHookSpecs)
    return manager


def load_plugins(disabled: Iterable[str] = (), extra: Iterable[tuple[str, object]] = ()) -> tuple[Components, dict]:
    """Load every plugin of the entry-point group and register its components.

    Args:
        disabled: Plugin (entry-point) names to skip.
        extra: (name, plugin object) pairs registered besides the entry
            points, for tests and one-off plugins.

    Returns:
        The filled :class:`Components` and the method definitions that
        plugins returned from ``mdskit_methods``, keyed by method name.
    """
    manager = _plugin_manager()
    components = Components()
    skipped = set(disabled)
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        if entry_point.name in skipped:
            logger.info("plugin %s is disabled", entry_point.name)
            continue
        _register_plugin(manager, components, entry_point.name, entry_point.load, entry_point.value)
    for name, plugin in extra:
        _register_plugin(manager, components, name, lambda plugin=plugin: plugin, repr(plugin))
    methods = _collect(manager, components)
    return components, methods


def _register_plugin(manager, components: Components, name: str, load, source: str) -> None:
    try:
        plugin = load()
        manager.register(plugin, name=name)
    except Exception as error:  # noqa: BLE001 - any import error must not stop the other plugins
        logger.warning("plugin %s failed to load: %s", name, error)
        components.failures.append(PluginFailure(name, f"failed to load from {source}: {type(error).__name__}: {error}"))
        return
    components.plugins[name] = source


def _collect(manager: pluggy.PluginManager, components: Components) -> dict[str, dict[str, Any]]:
    """Call each plugin's hooks one by one so results and failures are attributed."""
    for role in ROLES:
        for impl in getattr(manager.hook, role.hook).get_hookimpls():
            for component in _call(impl, components, role.hook) or []:
                components.register(role.key, component, impl.plugin_name)
    methods: dict[str, dict[str, Any]] = {}
    for impl in manager.hook.mdskit_methods.get_hookimpls():
        for method_name, definition in (_call(impl, components, "mdskit_methods") or {}).items():
            methods[method_name] = dict(definition, provider=impl.plugin_name)
    return methods


def _call(impl, components: Components, hook: str):
    try:
        return impl.function()
    except Exception as error:  # noqa: BLE001 - one broken hook must not stop the others
        logger.warning("plugin %s: hook %s raised %s", impl.plugin_name, hook, error)
        components.failures.append(PluginFailure(impl.plugin_name, f"hook {hook} raised {type(error).__name__}: {error}"))
        return None
