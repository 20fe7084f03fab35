"""registry.yaml validation and plugin loading."""

from __future__ import annotations

import textwrap
import types

import pytest

from mdskit.errors import ConfigError
from mdskit.methods import load_registry
from mdskit.plugins import hookimpl, load_plugins
from mdskit.prompt import PromptModule


@pytest.fixture(scope="module")
def components():
    loaded, _ = load_plugins()
    return loaded


def write_registry(tmp_path, body: str):
    path = tmp_path / "registry.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


VALID_METHOD = """
    schema: 1
    methods:
      small:
        backbone: {type: llava, hidden_size: 32}
        prompt: {type: rvls2m, grid: 8, top_n: 4}
        decoder: {type: litemedsam}
        cot: {type: template}
        training: {steps: 2, batch_size: 2}
"""


def test_project_registry_loads(components):
    registry = load_registry(None, components)
    assert {"sim4seg", "lisa"} <= set(registry.methods)
    assert registry.method("lisa").prompt is None
    assert registry.method("sim4seg").prompt.params == {"grid": 16, "top_n": 36, "normalization": "minmax"}


def test_first_party_plugins_load_cleanly(components):
    assert components.failures == []
    assert components.providers["prompt"]["rvls2m"] == "rvls2m"
    assert components.providers["decoder"]["litemedsam"] == "litemedsam"


def test_valid_custom_method(tmp_path, components):
    registry = load_registry(write_registry(tmp_path, VALID_METHOD), components)
    spec = registry.method("small")
    assert spec.training.steps == 2
    assert spec.backbone.params == {"hidden_size": 32}


def test_unknown_component_lists_choices(tmp_path, components):
    path = write_registry(tmp_path, VALID_METHOD.replace("type: rvls2m", "type: rvls2n"))
    with pytest.raises(ConfigError, match=r"methods\.small\.prompt\.type: unknown prompt module 'rvls2n'; "
                                          r"choose one of: rvls2m"):
        load_registry(path, components)


def test_unknown_parameter_lists_valid_ones(tmp_path, components):
    path = write_registry(tmp_path, VALID_METHOD.replace("top_n: 4", "topn: 4"))
    with pytest.raises(ConfigError, match=r"unknown parameter 'topn' for 'rvls2m'; valid parameters: .*top_n"):
        load_registry(path, components)


def test_unknown_method_key(tmp_path, components):
    path = write_registry(tmp_path, VALID_METHOD.replace("training:", "trainng:"))
    with pytest.raises(ConfigError, match=r"unknown key 'trainng'; valid keys: .*training"):
        load_registry(path, components)


def test_unknown_training_key(tmp_path, components):
    path = write_registry(tmp_path, VALID_METHOD.replace("steps: 2", "step: 2"))
    with pytest.raises(ConfigError, match=r"training: unknown key 'step'; valid keys: steps"):
        load_registry(path, components)


def test_missing_decoder(tmp_path, components):
    path = write_registry(tmp_path, VALID_METHOD.replace("        decoder: {type: litemedsam}\n", ""))
    with pytest.raises(ConfigError, match=r"'decoder' is missing"):
        load_registry(path, components)


def test_wrong_schema_version(tmp_path, components):
    path = write_registry(tmp_path, VALID_METHOD.replace("schema: 1", "schema: 7"))
    with pytest.raises(ConfigError, match="schema must be 1, got 7"):
        load_registry(path, components)


def test_invalid_yaml(tmp_path, components):
    path = write_registry(tmp_path, "methods: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_registry(path, components)


def test_unknown_method_name(components):
    registry = load_registry(None, components)
    with pytest.raises(ConfigError, match=r"unknown method 'sim4sag'; choose one of: lisa, sim4seg"):
        registry.method("sim4sag")


def test_unknown_tts_strategy(components):
    with pytest.raises(ConfigError, match=r"unknown test-time scaling strategy 'majority'; choose one of: "
                                          r"best-of-n, none, oracle, prompt-ensemble, region-perturbation, "
                                          r"self-consistency"):
        components.get("tts", "majority")


class EchoPrompt(PromptModule):
    name = "rvls2m"  # clashes with the first-party module on purpose


def test_broken_plugins_are_isolated():
    def failing_hook():
        raise RuntimeError("boom")

    duplicate = types.SimpleNamespace(mdskit_prompt_modules=hookimpl(lambda: [EchoPrompt]))
    wrong_type = types.SimpleNamespace(mdskit_mask_decoders=hookimpl(lambda: [dict]))
    raising = types.SimpleNamespace(mdskit_metrics=hookimpl(failing_hook))
    components, _ = load_plugins(extra=[("dup", duplicate), ("wrong", wrong_type), ("raising", raising)])

    reasons = {failure.plugin: failure.reason for failure in components.failures}
    assert "already registered by plugin 'rvls2m'" in reasons["dup"]
    assert "not a subclass of mdskit.decoder.MaskDecoder" in reasons["wrong"]
    assert "hook mdskit_metrics raised RuntimeError: boom" in reasons["raising"]
    # The first-party components are still there.
    assert components.providers["prompt"]["rvls2m"] == "rvls2m"
    assert "giou" in components.names("metric")


def test_disabled_plugin_is_skipped():
    components, _ = load_plugins(disabled=("rvls2m",))
    assert "rvls2m" not in components.names("prompt")
    with pytest.raises(ConfigError, match="unknown prompt module 'rvls2m'"):
        components.get("prompt", "rvls2m")
