"""The plugin loader: routes, load order, disabling and isolated failures.

Each failure kind has its message pinned, because the message is the
interface a plugin author reads: it names the plugin, the hook and the fix.
"""

from __future__ import annotations

import textwrap
import types

import pytest
from click.testing import CliRunner

from mdskit.cli import main
from mdskit.errors import ConfigError, PluginError
from mdskit.methods import load_methods, load_registry
from mdskit.plugins import HOOK_NAMES, hookimpl, load_plugins
from mdskit.prompt import DecoderPrompts, PromptModule

FIRST_PARTY = ("datasets", "litemedsam", "llava", "metrics", "rvls2m", "specialist", "tts")

PROMPT_PLUGIN = '''
    from mdskit.plugins import hookimpl
    from mdskit.prompt import DecoderPrompts, PromptModule

    __version__ = "0.3.1"


    class {cls}(PromptModule):
        name = "{name}"

        def forward(self, image_token_embeddings, seg_embeddings, token_grid, token_frames, prompt_frames):
            return DecoderPrompts()


    @hookimpl
    def mdskit_prompt_modules():
        return [{cls}]
'''

TINY_METHOD = """
    schema: 1
    {plugins}
    methods:
      with-extra:
        backbone: {{type: llava, hidden_size: 32}}
        prompt: {{type: {prompt}}}
        decoder: {{type: litemedsam}}
        cot: {{type: template}}
      plain:
        backbone: {{type: llava, hidden_size: 32}}
        prompt: null
        decoder: {{type: litemedsam}}
        cot: {{type: template}}
"""


def write(path, text: str):
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def prompt_plugin(folder, stem: str, name: str, cls: str = "ExtraPrompt"):
    return write(folder / f"{stem}.py", PROMPT_PLUGIN.format(cls=cls, name=name))


def failures_of(components, plugin: str) -> list[str]:
    return [failure.message() for failure in components.failures if failure.plugin == plugin]


class NamedPrompt(PromptModule):
    name = "named"

    def forward(self, *args):
        return DecoderPrompts()


# ---------------------------------------------------------------- routes


def test_hooks_are_documented():
    from mdskit.plugins import MdskitHookSpecs

    assert set(HOOK_NAMES) == {
        "mdskit_backbones", "mdskit_prompt_modules", "mdskit_mask_decoders", "mdskit_tts_strategies",
        "mdskit_dataset_adapters", "mdskit_metrics", "mdskit_cot_generators", "mdskit_specialists",
        "mdskit_methods"}
    for name in HOOK_NAMES:
        doc = getattr(MdskitHookSpecs, name).__doc__
        assert doc and "Return" in doc, name


def test_entry_points_load_in_name_order():
    components, _ = load_plugins()
    assert list(components.plugins) == sorted(FIRST_PARTY)
    for info in components.plugins.values():
        assert info.route == "entry point"
        assert info.status == "loaded"
        assert info.version
    assert components.plugins["rvls2m"].source == "mdskit_rvls2m.plugin"


def test_plugin_file_registers_its_component(tmp_path):
    path = prompt_plugin(tmp_path, "extra_prompt", "extra")
    components, _ = load_plugins(files=[path])
    assert components.providers["prompt"]["extra"] == "extra_prompt"
    info = components.plugins["extra_prompt"]
    assert (info.route, info.source, info.version, info.status) == ("file", str(path), "0.3.1", "loaded")
    assert list(components.plugins)[-1] == "extra_prompt"


def test_first_loaded_plugin_keeps_a_clashing_name(tmp_path):
    first = prompt_plugin(tmp_path, "first", "shared", cls="FirstPrompt")
    second = prompt_plugin(tmp_path, "second", "shared", cls="SecondPrompt")
    components, _ = load_plugins(files=[first, second])
    assert components.get("prompt", "shared").__name__ == "FirstPrompt"
    assert failures_of(components, "second") == [
        "plugin 'second': hook mdskit_prompt_modules registers prompt module 'shared', which is already "
        "registered by plugin 'first'; the first one is kept. Rename it or disable one of the two plugins "
        "with --disable-plugin."]


def test_disabled_plugin_file_is_listed_not_loaded(tmp_path):
    path = prompt_plugin(tmp_path, "extra_prompt", "extra")
    components, _ = load_plugins(files=[path], disabled=("extra_prompt", "rvls2m"))
    assert components.plugins["extra_prompt"].status == "disabled"
    assert components.plugins["rvls2m"].status == "disabled"
    assert components.names("prompt") == []
    assert components.failures == []
    with pytest.raises(ConfigError, match=r"unknown prompt module 'extra'; choose one of: none registered\. "
                                          r"Disabled plugins: rvls2m, extra_prompt\."):
        components.get("prompt", "extra")


def test_disabling_a_used_plugin_keeps_other_methods(tmp_path):
    registry = write(tmp_path / "registry.yaml", TINY_METHOD.format(plugins="", prompt="rvls2m"))
    components, methods = load_methods(registry, disabled=("rvls2m",))
    assert methods.method("plain").prompt is None
    assert components.failures == []
    with pytest.raises(PluginError) as caught:
        methods.method("with-extra")
    assert str(caught.value).endswith("methods.with-extra.prompt.type: unknown prompt module 'rvls2m'; choose one "
                                      "of: none registered. Disabled plugins: rvls2m.")


def test_cli_lists_methods_of_disabled_plugin(tmp_path):
    registry = write(tmp_path / "registry.yaml", TINY_METHOD.format(plugins="", prompt="rvls2m"))
    options = ["--registry", str(registry), "--disable-plugin", "rvls2m"]
    plugins = CliRunner().invoke(main, [*options, "plugins"], env={"COLUMNS": "250"})
    assert plugins.exit_code == 0, plugins.output
    assert "disabled" in next(line for line in plugins.output.splitlines() if "│ rvls2m" in line)
    assert "- method 'with-extra' is unavailable: " in plugins.output
    listing = CliRunner().invoke(main, [*options, "list"], env={"COLUMNS": "250"})
    assert listing.exit_code == 0, listing.output
    assert any(line.startswith("│ plain ") for line in listing.output.splitlines())
    assert "Unavailable method with-extra:" in listing.output
    assert "Disabled plugins: rvls2m." in listing.output


def test_disabling_unknown_plugin_warns():
    components, _ = load_plugins(disabled=("rvls2n", "nosuchplugin"))
    known = ", ".join(FIRST_PARTY)
    assert components.warnings == [
        f"no plugin named 'nosuchplugin' to disable; known plugins: {known}.",
        f"no plugin named 'rvls2n' to disable (did you mean 'rvls2m'?); known plugins: {known}."]
    assert components.failures == []
    for command in ("plugins", "list"):
        result = CliRunner().invoke(main, ["--disable-plugin", "nosuchplugin", command], env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        assert "Warning: no plugin named 'nosuchplugin' to disable" in result.output


def test_registry_plugins_key_is_relative_to_the_file(tmp_path):
    (tmp_path / "local").mkdir()
    prompt_plugin(tmp_path / "local", "extra_prompt", "extra")
    registry = write(tmp_path / "registry.yaml",
                     TINY_METHOD.format(plugins="plugins: [local/extra_prompt.py]", prompt="extra"))
    components, methods = load_methods(registry)
    assert components.plugins["extra_prompt"].source == str(tmp_path / "local" / "extra_prompt.py")
    assert methods.method("with-extra").prompt.type == "extra"


def test_registry_plugins_key_must_be_a_list(tmp_path):
    registry = write(tmp_path / "registry.yaml", TINY_METHOD.format(plugins="plugins: extra.py", prompt="x"))
    with pytest.raises(ConfigError, match=r"'plugins' must be a list of plugin file paths .*got 'extra.py'"):
        load_methods(registry)


def test_duplicate_plugin_name_is_skipped(tmp_path):
    path = prompt_plugin(tmp_path, "rvls2m", "extra")
    components, _ = load_plugins(files=[path])
    assert components.plugins["rvls2m"].route == "entry point"
    assert "extra" not in components.names("prompt")
    assert failures_of(components, "rvls2m") == [
        f"plugin 'rvls2m': the name is already used by the plugin from mdskit_rvls2m.plugin, so the plugin "
        f"from {path} is skipped; rename the file or the entry point."]


# ---------------------------------------------------------------- failures


def test_import_error_names_plugin_and_fix(tmp_path):
    path = write(tmp_path / "broken.py", "import mdskit_no_such_dependency\n")
    components, _ = load_plugins(files=[path])
    assert components.plugins["broken"].status == "failed"
    assert failures_of(components, "broken") == [
        f"plugin 'broken': failed to import from {path}: ModuleNotFoundError: No module named "
        "'mdskit_no_such_dependency'. Fix the plugin or install what it needs, or skip it with "
        "--disable-plugin broken."]
    assert "rvls2m" in components.names("prompt")


def test_missing_plugin_file(tmp_path):
    components, _ = load_plugins(files=[tmp_path / "absent.py"])
    (message,) = failures_of(components, "absent")
    assert "FileNotFoundError: plugin file" in message
    assert "absent.py does not exist" in message


def test_hook_with_arguments_is_rejected():
    plugin = types.SimpleNamespace(mdskit_prompt_modules=hookimpl(lambda config: [NamedPrompt]))
    components, _ = load_plugins(extra=[("needs_args", plugin)])
    assert failures_of(components, "needs_args") == [
        "plugin 'needs_args', hook mdskit_prompt_modules: implements mdskit_prompt_modules(config), but the "
        "hook takes no arguments; define it as 'def mdskit_prompt_modules():'."]
    assert components.plugins["needs_args"].status == "failed"
    assert "named" not in components.names("prompt")


def test_unknown_hook_name_suggests_the_closest():
    plugin = types.SimpleNamespace(mdskit_prompt_module=hookimpl(lambda: [NamedPrompt]))
    components, _ = load_plugins(extra=[("typo", plugin)])
    assert failures_of(components, "typo") == [
        "plugin 'typo', hook mdskit_prompt_module: implements 'mdskit_prompt_module', which is not an mdskit "
        "hook; rename it to mdskit_prompt_modules."]


def test_unmarked_hook_function_is_reported():
    plugin = types.SimpleNamespace(mdskit_prompt_modules=lambda: [NamedPrompt])
    components, _ = load_plugins(extra=[("unmarked", plugin)])
    assert failures_of(components, "unmarked") == [
        "plugin 'unmarked', hook mdskit_prompt_modules: defines mdskit_prompt_modules without "
        "@mdskit.plugins.hookimpl, so it is never called; decorate it with @hookimpl."]


def test_name_registered_twice_by_one_plugin():
    class OtherNamed(NamedPrompt):
        pass

    plugin = types.SimpleNamespace(mdskit_prompt_modules=hookimpl(lambda: [NamedPrompt, OtherNamed]))
    components, _ = load_plugins(extra=[("twice", plugin)])
    assert components.get("prompt", "named") is NamedPrompt
    assert failures_of(components, "twice") == [
        "plugin 'twice': hook mdskit_prompt_modules registers prompt module 'named' twice (OtherNamed and "
        "NamedPrompt); give each class its own name."]


@pytest.mark.parametrize(("returned", "expected"), [
    (NamedPrompt, "hook mdskit_prompt_modules returned type <class"),
    (None, "hook mdskit_prompt_modules returned None; return a list of classes (an empty one for none)."),
    ([NamedPrompt()], "hook mdskit_prompt_modules returned NamedPrompt(), which is not a subclass"),
    ([dict], "returned <class 'dict'>, which is not a subclass of mdskit.prompt.PromptModule; return the "
             "component classes."),
])
def test_wrong_return_type(returned, expected):
    plugin = types.SimpleNamespace(mdskit_prompt_modules=hookimpl(lambda: returned))
    components, _ = load_plugins(extra=[("wrong", plugin)])
    (message,) = failures_of(components, "wrong")
    assert expected in message


def test_class_without_name():
    class Nameless(PromptModule):
        pass

    plugin = types.SimpleNamespace(mdskit_prompt_modules=hookimpl(lambda: [Nameless]))
    components, _ = load_plugins(extra=[("nameless", plugin)])
    (message,) = failures_of(components, "nameless")
    assert message.endswith("Nameless, which has no 'name' class attribute; set name = '...' on the class.")


def test_methods_hook_must_return_a_dict():
    plugin = types.SimpleNamespace(mdskit_methods=hookimpl(lambda: ["sim4seg"]))
    components, methods = load_plugins(extra=[("methods_list", plugin)])
    assert methods == {}
    assert failures_of(components, "methods_list") == [
        "plugin 'methods_list': hook mdskit_methods returned list ['sim4seg']; return a dict of method name "
        "-> definition."]


def test_invalid_plugin_method_is_unavailable_not_fatal():
    definition = {"backbone": {"type": "llava", "hidden_sise": 32}, "decoder": {"type": "litemedsam"},
                  "cot": {"type": "template"}}
    plugin = types.SimpleNamespace(mdskit_methods=hookimpl(lambda: {"typo-method": definition}))
    components, plugin_methods = load_plugins(extra=[("typo_methods", plugin)])
    registry = load_registry(None, components, plugin_methods)
    assert "sim4seg" in registry.methods
    with pytest.raises(PluginError, match=r"method 'typo-method' is unavailable: plugin typo_methods, method "
                                          r"typo-method\.backbone: unknown parameter 'hidden_sise'"):
        registry.method("typo-method")
    (message,) = failures_of(components, "typo_methods")
    assert "hook mdskit_methods returned an invalid definition" in message


def test_method_of_broken_plugin_fails_with_its_reason(tmp_path):
    write(tmp_path / "broken.py", "raise RuntimeError('weights missing')\n")
    registry = write(tmp_path / "registry.yaml", TINY_METHOD.format(plugins="plugins: [broken.py]",
                                                                    prompt="extra"))
    components, methods = load_methods(registry)
    assert methods.method("plain").prompt is None
    with pytest.raises(PluginError) as caught:
        methods.method("with-extra")
    message = str(caught.value)
    assert message.startswith("method 'with-extra' is unavailable: ")
    assert "methods.with-extra.prompt.type: unknown prompt module 'extra'; choose one of: rvls2m, similarity-box, similarity-points." in message
    assert "Plugins that failed to load and may provide it: broken." in message
    (failure,) = failures_of(components, "broken")
    assert "RuntimeError: weights missing" in failure
    with pytest.raises(PluginError, match="may provide it: broken"):
        components.get("prompt", "extra")


def test_cli_run_reports_the_broken_plugin(tmp_path):
    write(tmp_path / "broken.py", "raise RuntimeError('weights missing')\n")
    registry = write(tmp_path / "registry.yaml", TINY_METHOD.format(plugins="", prompt="extra"))
    result = CliRunner().invoke(main, ["--registry", str(registry), "--plugin", str(tmp_path / "broken.py"),
                                       "run", "with-extra", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert "method 'with-extra' is unavailable" in output
    assert "Plugins that failed to load and may provide it: broken. Run 'mdskit plugins' for details." in output
    # The plugin's own failure is in the log.
    assert "weights missing" in output
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- mdskit plugins


def test_plugins_command_lists_sources_and_failures(tmp_path):
    good = prompt_plugin(tmp_path, "extra_prompt", "extra")
    broken = write(tmp_path / "broken.py", "import mdskit_no_such_dependency\n")
    result = CliRunner().invoke(main, ["--plugin", str(good), "--plugin", str(broken), "--disable-plugin",
                                       "metrics", "plugins"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    row = next(line for line in lines if "extra_prompt" in line)
    assert "0.3.1" in row
    assert "loaded" in row
    assert "prompt module: extra" in row
    assert "failed" in next(line for line in lines if "│ broken" in line)
    assert "disabled" in next(line for line in lines if "│ metrics" in line)
    assert "mdskit 0.1.0" in next(line for line in lines if "│ rvls2m" in line)
    assert "- plugin 'broken': failed to import from" in result.output
    assert "No module named 'mdskit_no_such_dependency'" in result.output


def test_plugin_option_needs_an_existing_file(tmp_path):
    result = CliRunner().invoke(main, ["--plugin", str(tmp_path / "absent.py"), "plugins"])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_plugins_command_without_registry_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MDSKIT_REGISTRY", str(tmp_path / "absent.yaml"))
    result = CliRunner().invoke(main, ["plugins"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "prompt module: rvls2m" in result.output
    assert f"No registry file at {tmp_path / 'absent.yaml'}, so methods are not listed" in result.output


def test_plugin_methods_are_listed_with_their_plugin():
    definition = {"backbone": {"type": "llava", "hidden_size": 32}, "decoder": {"type": "litemedsam"},
                  "cot": {"type": "template"}}
    plugin = types.SimpleNamespace(mdskit_methods=hookimpl(lambda: {"tiny-lisa": definition}))
    components, plugin_methods = load_plugins(extra=[("tiny_methods", plugin)])
    registry = load_registry(None, components, plugin_methods)
    assert registry.method("tiny-lisa").provider == "tiny_methods"
    assert registry.method("tiny-lisa").backbone.params == {"hidden_size": 32}
    assert components.failures == []


def test_plugin_method_clashing_with_registry_is_reported():
    definition = {"backbone": {"type": "llava", "hidden_size": 32}, "decoder": {"type": "litemedsam"},
                  "cot": {"type": "template"}}
    plugin = types.SimpleNamespace(mdskit_methods=hookimpl(lambda: {"lisa": definition}))
    components, plugin_methods = load_plugins(extra=[("lisa_methods", plugin)])
    registry = load_registry(None, components, plugin_methods)
    assert registry.method("lisa").provider == "registry.yaml"
    assert "lisa" not in registry.unavailable
    (message,) = failures_of(components, "lisa_methods")
    assert message.startswith("plugin 'lisa_methods': hook mdskit_methods defines method 'lisa', which ")
    assert message.endswith("registry.yaml also defines; the registry.yaml definition is used. Rename the plugin's "
                            "method or disable the plugin with --disable-plugin lisa_methods.")


def test_missing_name_mentions_disabled_and_failed_plugins(tmp_path):
    broken = write(tmp_path / "broken.py", "raise RuntimeError('weights missing')\n")
    components, _ = load_plugins(files=[broken], disabled=("rvls2m",))
    with pytest.raises(PluginError) as caught:
        components.get("prompt", "rvls2m")
    assert str(caught.value) == ("unknown prompt module 'rvls2m'; choose one of: none registered. Disabled "
                                 "plugins: rvls2m. Plugins that failed to load and may provide it: broken. Run "
                                 "'mdskit plugins' for details.")


def test_missing_name_lists_failed_plugin_names(tmp_path):
    broken = write(tmp_path / "broken.py", "raise RuntimeError('weights missing')\n")
    syntax = write(tmp_path / "syntax.py", "def oops(:\n")
    components, _ = load_plugins(files=[broken, syntax])
    with pytest.raises(PluginError) as caught:
        components.get("backbone", "nope")
    message = str(caught.value)
    assert message.endswith("Plugins that failed to load and may provide it: broken, syntax. Run 'mdskit plugins' "
                            "for details.")
    assert "weights missing" not in message
    assert "SyntaxError" not in message


def test_same_file_from_registry_and_option_loads_once(tmp_path):
    path = prompt_plugin(tmp_path, "extra_prompt", "extra")
    registry = write(tmp_path / "registry.yaml",
                     TINY_METHOD.format(plugins="plugins: [extra_prompt.py]", prompt="extra"))
    components, _ = load_methods(registry, plugin_files=(path,))
    assert components.failures == []
    assert components.providers["prompt"]["extra"] == "extra_prompt"
