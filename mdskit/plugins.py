"""The plugin API: pluggy hook specifications and the plugin loader.

A plugin is a module (or any object) whose functions are marked with
:data:`hookimpl` and named after a hook of :class:`MdskitHookSpecs`. Plugins
come from three routes, loaded in this order:

1. the ``mdskit.plugins`` entry-point group of installed distributions,
   sorted by entry-point name (the first-party plugins use this route too);
2. plugin files named in ``registry.yaml``'s ``plugins`` list, then files
   given with ``mdskit --plugin PATH``, in the order given;
3. ``(name, object)`` pairs passed to :func:`load_plugins` as ``extra``.

When two plugins register the same component name, the one loaded first
keeps it. Each broken plugin is recorded as a
:class:`~mdskit.registry.PluginFailure` with the hook and the fix: one that
fails to import, implements a hook with a wrong signature or under an
unknown name, registers a name twice, or returns the wrong type. The other
plugins still load. A ``disabled`` name that matches no plugin is recorded
in ``Components.warnings``.
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import pluggy

from .registry import ROLE_BY_HOOK, ROLES, Components, PluginFailure, PluginInfo

logger = logging.getLogger(__name__)

PROJECT = "mdskit"
ENTRY_POINT_GROUP = "mdskit.plugins"
METHODS_HOOK = "mdskit_methods"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class MdskitHookSpecs:
    """The hooks a plugin may implement.

    Every hook takes no arguments. The loader calls each implementation
    once, when the plugins are loaded (at the start of every ``mdskit``
    command, or by :func:`load_plugins`), and before ``registry.yaml`` is
    read, so the registry's methods may use the classes a hook returns.
    A component hook returns a list of classes. Each is a subclass of the
    role's base class with a unique ``name`` class attribute, and is
    instantiated later with the parameters of a method definition.
    """

    @hookspec
    def mdskit_backbones(self) -> list[type]:
        """Return vision-language backbone classes.

        Each subclasses :class:`mdskit.backbone.VisionLanguageBackbone`.
        Its constructor takes the method's ``backbone`` parameters and a
        ``pretrained`` folder written by ``save_pretrained``, from which a
        checkpoint restores it.
        """

    @hookspec
    def mdskit_prompt_modules(self) -> list[type]:
        """Return similarity-to-mask prompt module classes.

        Each subclasses :class:`mdskit.prompt.PromptModule`; its constructor
        takes the method's ``prompt`` parameters.
        """

    @hookspec
    def mdskit_mask_decoders(self) -> list[type]:
        """Return mask decoder classes.

        Each subclasses :class:`mdskit.decoder.MaskDecoder`; its constructor
        takes the method's ``decoder`` parameters.
        """

    @hookspec
    def mdskit_tts_strategies(self) -> list[type]:
        """Return test-time scaling strategy classes.

        Each subclasses :class:`mdskit.tts.TestTimeScaling`; its constructor
        takes ``registry.yaml``'s ``tts.NAME`` parameters, ``num_paths`` and
        ``temperature``.
        """

    @hookspec
    def mdskit_dataset_adapters(self) -> list[type]:
        """Return dataset adapter classes.

        Each subclasses :class:`mdskit.datasets.DatasetAdapter`; its
        constructor takes the folder of ``--data NAME=PATH`` (None for an
        embedded dataset).
        """

    @hookspec
    def mdskit_metrics(self) -> list[type]:
        """Return metric classes.

        Each subclasses :class:`mdskit.metrics.Metric` and is built without
        arguments.
        """

    @hookspec
    def mdskit_cot_generators(self) -> list[type]:
        """Return chain-of-thought generator classes.

        Each subclasses :class:`mdskit.cot.CotGenerator`; its constructor
        takes the method's ``cot`` parameters.
        """

    @hookspec
    def mdskit_specialists(self) -> list[type]:
        """Return specialist model classes: language-free segmentation and classification models.

        Each subclasses :class:`mdskit.specialist.SpecialistModel`; its
        constructor takes the method's ``specialist`` parameters and
        ``labels``.
        """

    @hookspec
    def mdskit_methods(self) -> dict[str, dict[str, Any]]:
        """Return method definitions keyed by method name.

        Each definition has the format of an entry of ``registry.yaml``'s
        ``methods`` (``backbone``, ``prompt``, ``decoder``, ``cot``,
        ``training``, ``description``). It is validated when
        ``registry.yaml`` is read. A method of the same name in
        ``registry.yaml`` replaces it, and the clash is recorded as a
        failure of this plugin.
        """


HOOK_NAMES = tuple(name for name in vars(MdskitHookSpecs) if name.startswith("mdskit_"))


def _plugin_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(MdskitHookSpecs)
    return manager


def load_plugins(disabled: Iterable[str] = (), extra: Iterable[tuple[str, object]] = (),
                 files: Iterable[str | Path] = ()) -> tuple[Components, dict[str, dict[str, Any]]]:
    """Load every plugin and register its components.

    Args:
        disabled: Names of plugins to skip (entry-point names, file stems
            or ``extra`` names).
        extra: (name, plugin object) pairs loaded after the other routes,
            for tests and plugins built in code.
        files: Paths of one-off plugin files (Python modules), loaded after
            the entry points; each plugin's name is its file's stem.

    Returns:
        The filled :class:`Components` (with every plugin in
        ``components.plugins`` and every failure in ``components.failures``)
        and the method definitions that plugins returned from
        ``mdskit_methods``, keyed by method name.
    """
    manager = _plugin_manager()
    components = Components()
    skipped = set(disabled)
    candidates: list[tuple[PluginInfo, Callable[[], object]]] = []
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda item: item.name):
        candidates.append((_entry_point_info(entry_point), entry_point.load))
    for path in files:
        path = Path(path)
        candidates.append((PluginInfo(path.stem, source=str(path), route="file"),
                           lambda path=path: _import_file(path)))
    for name, plugin in extra:
        candidates.append((PluginInfo(name, source=repr(plugin), route="object"), lambda plugin=plugin: plugin))

    for info, load in candidates:
        if info.name in components.plugins:
            first = components.plugins[info.name]
            components.failures.append(PluginFailure(
                info.name, f"the name is already used by the plugin from {first.source}, so the plugin from "
                           f"{info.source} is skipped; rename the file or the entry point."))
            continue
        components.plugins[info.name] = info
        if info.name in skipped:
            info.status = "disabled"
            logger.info("plugin %s is disabled", info.name)
            continue
        _register_plugin(manager, components, info, load)
    _warn_unknown_disabled(components, skipped)
    methods = _collect(manager, components)
    return components, methods


def _warn_unknown_disabled(components: Components, disabled: set[str]) -> None:
    """Record each disabled name that matches no plugin, because a typo would leave that plugin loaded."""
    known = ", ".join(components.plugins) or "none"
    for name in sorted(disabled - set(components.plugins)):
        close = difflib.get_close_matches(name, list(components.plugins), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        message = f"no plugin named '{name}' to disable{hint}; known plugins: {known}."
        logger.warning("%s", message)
        components.warnings.append(message)


def _entry_point_info(entry_point: EntryPoint) -> PluginInfo:
    distribution = getattr(entry_point, "dist", None)
    version = distribution.version if distribution is not None else None
    package = distribution.metadata["Name"] if distribution is not None else None
    return PluginInfo(entry_point.name, source=entry_point.value, route="entry point", version=version,
                      distribution=package)


def _import_file(path: Path) -> object:
    """Import a plugin file as a module named ``mdskit_plugin_file_STEM``."""
    if not path.is_file():
        raise FileNotFoundError(f"plugin file {path} does not exist")
    module_name = f"mdskit_plugin_file_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python module; name a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _register_plugin(manager: pluggy.PluginManager, components: Components, info: PluginInfo,
                     load: Callable[[], object]) -> None:
    try:
        plugin = load()
    except Exception as error:  # noqa: BLE001 - an import error must not stop the other plugins
        _fail(components, info, None, f"failed to import from {info.source}: {type(error).__name__}: {error}. "
              f"Fix the plugin or install what it needs, or skip it with --disable-plugin {info.name}.")
        return
    if info.version is None:
        info.version = getattr(plugin, "__version__", None)

    problems = _check_hooks(manager, plugin)
    for hook, reason in problems:
        _fail(components, info, hook, reason)
    if problems:
        return
    try:
        manager.register(plugin, name=info.name)
    except (pluggy.PluginValidationError, ValueError) as error:
        _fail(components, info, None, f"was rejected by pluggy: {error}")
        return
    _warn_unmarked(manager, components, info, plugin)
    info.status = "loaded"


def _fail(components: Components, info: PluginInfo, hook: str | None, reason: str) -> None:
    info.status = "failed"
    where = f", hook {hook}" if hook else ""
    logger.warning("plugin %s%s: %s", info.name, where, reason)
    components.failures.append(PluginFailure(info.name, reason, hook=hook))


def _check_hooks(manager: pluggy.PluginManager, plugin: object) -> list[tuple[str, str]]:
    """Return (hook, reason) for each marked function with an unknown name or a wrong signature."""
    problems = []
    for attribute in dir(plugin):
        options = manager.parse_hookimpl_opts(plugin, attribute)
        if options is None:
            continue
        hook = options.get("specname") or attribute
        function = getattr(plugin, attribute)
        if hook not in HOOK_NAMES:
            close = difflib.get_close_matches(hook, HOOK_NAMES, n=1)
            hint = f"rename it to {close[0]}" if close else f"use one of: {', '.join(HOOK_NAMES)}"
            problems.append((hook, f"implements '{hook}', which is not an mdskit hook; {hint}."))
            continue
        parameters = _parameters(function)
        if parameters:
            problems.append((hook, f"implements {hook}({', '.join(parameters)}), but the hook takes no "
                                   f"arguments; define it as 'def {hook}():'."))
        if options.get("hookwrapper") or options.get("wrapper"):
            problems.append((hook, f"marks {hook} as a hook wrapper, which mdskit does not call; remove "
                                   "hookwrapper/wrapper from @hookimpl."))
    return problems


def _parameters(function: Callable[..., Any]) -> list[str]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    return [name for name in signature.parameters if name != "self"]


def _warn_unmarked(manager: pluggy.PluginManager, components: Components, info: PluginInfo,
                   plugin: object) -> None:
    """Record hook-named functions that lack @hookimpl: pluggy would silently never call them."""
    for hook in HOOK_NAMES:
        function = getattr(plugin, hook, None)
        if callable(function) and manager.parse_hookimpl_opts(plugin, hook) is None:
            reason = (f"defines {hook} without @mdskit.plugins.hookimpl, so it is never called; "
                      "decorate it with @hookimpl.")
            logger.warning("plugin %s: %s", info.name, reason)
            components.failures.append(PluginFailure(info.name, reason, hook=hook))


def _collect(manager: pluggy.PluginManager, components: Components) -> dict[str, dict[str, Any]]:
    """Call each plugin's hooks one by one so that results and failures are attributed."""
    for role in ROLES:
        for impl in getattr(manager.hook, role.hook).get_hookimpls():
            result = _call(impl, components, role.hook)
            if result is None:
                continue
            if not _is_class_list(result):
                _record(components, impl.plugin_name, role.hook,
                        f"returned {_describe(result)}; return a list of {role.base.__name__} subclasses.",
                        role=role.key)
                continue
            for component in result:
                components.register(role.key, component, impl.plugin_name)
    methods: dict[str, dict[str, Any]] = {}
    for impl in manager.hook.mdskit_methods.get_hookimpls():
        result = _call(impl, components, METHODS_HOOK)
        if result is not None:
            _add_methods(components, impl.plugin_name, result, methods)
    return methods


def _call(impl: pluggy.HookImpl, components: Components, hook: str) -> Any:
    try:
        result = impl.function()
    except Exception as error:  # noqa: BLE001 - one broken hook must not stop the others
        _record(components, impl.plugin_name, hook, f"raised {type(error).__name__}: {error}; fix the hook.",
                role=ROLE_BY_HOOK[hook].key if hook in ROLE_BY_HOOK else None)
        return None
    if result is None:
        expected = "a dict of method definitions" if hook == METHODS_HOOK else "a list of classes"
        _record(components, impl.plugin_name, hook, f"returned None; return {expected} (an empty one for none).",
                role=ROLE_BY_HOOK[hook].key if hook in ROLE_BY_HOOK else None)
    return result


def _record(components: Components, plugin: str, hook: str, reason: str, role: str | None = None) -> None:
    logger.warning("plugin %s, hook %s: %s", plugin, hook, reason)
    components.failures.append(PluginFailure(plugin, f"hook {hook} {reason}", hook=hook, role=role))


def _is_class_list(result: Any) -> bool:
    return isinstance(result, Sequence) and not isinstance(result, (str, bytes))


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80]}{'...' if len(text) > 80 else ''}"


def _add_methods(components: Components, plugin: str, result: Any, methods: dict[str, dict[str, Any]]) -> None:
    if not isinstance(result, dict):
        _record(components, plugin, METHODS_HOOK,
                f"returned {_describe(result)}; return a dict of method name -> definition.")
        return
    for method_name, definition in result.items():
        if not isinstance(method_name, str) or not isinstance(definition, dict):
            _record(components, plugin, METHODS_HOOK,
                    f"returned the entry {method_name!r}: {_describe(definition)}; each method needs a name "
                    "and a mapping of components as in registry.yaml.")
            continue
        if method_name in methods:
            first = methods[method_name]["provider"]
            _record(components, plugin, METHODS_HOOK,
                    f"defines method '{method_name}', which plugin '{first}' already defines; rename it or "
                    "disable one of the two plugins.")
            continue
        methods[method_name] = dict(definition, provider=plugin)
