"""Command-line messages for bad input: one line, the value and the fix, no traceback."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mdskit.cli import main


def invoke(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output


def test_list_shows_methods_and_providers():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    for name in ("sim4seg", "lisa", "rvls2m", "litemedsam", "self-consistency", "busi", "phantom", "macro_f1"):
        assert name in result.output
    assert "failed" not in result.output


def test_unknown_method(tmp_path):
    result = invoke("run", "sim4sag", "--out", tmp_path / "out")
    assert_user_error(result, "unknown method 'sim4sag'", "lisa, sim4seg")


def test_unknown_tts(tmp_path):
    result = invoke("run", "sim4seg", "--ttss", "vote", "--out", tmp_path / "out")
    assert_user_error(result, "unknown test-time scaling strategy 'vote'",
                      "best-of-n, none, oracle, prompt-ensemble, region-perturbation, self-consistency")


def test_unknown_adapter(tmp_path):
    result = invoke("run", "sim4seg", "--data", f"isic={tmp_path}", "--out", tmp_path / "out")
    assert_user_error(result, "unknown dataset adapter 'isic'", "busi, kvasir, ph2, phantom, shenzhen")


def test_missing_dataset_folder(tmp_path):
    result = invoke("run", "sim4seg", "--data", f"busi={tmp_path / 'absent'}", "--out", tmp_path / "out")
    assert_user_error(result, f"{tmp_path / 'absent'}", "--data busi=PATH")


def test_data_without_path(tmp_path):
    result = invoke("run", "sim4seg", "--data", "busi", "--out", tmp_path / "out")
    assert_user_error(result, "--data busi: give a folder as busi=PATH")


def test_registry_typo(tmp_path):
    registry = tmp_path / "registry.yaml"
    registry.write_text("schema: 1\nmethods:\n  m:\n    backbone: {type: lava}\n", encoding="utf-8")
    result = invoke("--registry", registry, "list")
    assert_user_error(result, "methods.m.backbone.type: unknown vision-language backbone 'lava'", "llava")


def test_missing_registry(tmp_path):
    result = invoke("--registry", tmp_path / "none.yaml", "list")
    assert_user_error(result, "registry file", "not found")


def test_checkpoint_folder_that_is_not_one(tmp_path):
    result = invoke("run", "sim4seg", "--checkpoint", tmp_path, "--out", tmp_path / "out")
    assert_user_error(result, "is not an mdskit checkpoint", "mdskit train")


@pytest.mark.parametrize("paths", ["0", "65"])
def test_invalid_number_of_paths(tmp_path, paths):
    result = invoke("run", "sim4seg", "--ttss", "self-consistency", "--paths", paths, "--out", tmp_path / "out")
    assert_user_error(result, "num_paths")


def test_zero_temperature_with_several_paths(tmp_path):
    result = invoke("run", "sim4seg", "--ttss", "self-consistency", "--temperature", "0", "--out", tmp_path / "o")
    assert_user_error(result, "temperature 0")


def test_missing_checkpoint_folder(tmp_path):
    result = invoke("run", "sim4seg", "--checkpoint", tmp_path / "absent", "--out", tmp_path / "out")
    assert_user_error(result, "absent does not exist", "mdskit train")


def test_leaderboard_of_missing_folder(tmp_path):
    result = invoke("leaderboard", tmp_path / "absent")
    assert_user_error(result, "absent does not exist", "mdskit bench --out")


@pytest.mark.parametrize("option, value, message", [
    ("--lora-rank", "0", "invalid lora r 0"),
    ("--lora-alpha", "-2", "invalid lora alpha -2"),
    ("--lora-alpha", "nan", "invalid lora alpha nan"),
    ("--lora-dropout", "1.5", "invalid lora dropout 1.5"),
    ("--lora-targets", "q_proj,", "invalid lora target_modules ['q_proj', '']"),
])
def test_invalid_lora_option(tmp_path, option, value, message):
    result = invoke("train", "lisa", option, value, "--out", tmp_path / "out")
    assert_user_error(result, message, "method 'lisa' with the --lora options")
    assert not (tmp_path / "out").exists()


def test_invalid_lora_option_in_run(tmp_path):
    result = invoke("run", "sim4seg", "--lora-rank", "-1", "--out", tmp_path / "out")
    assert_user_error(result, "invalid lora r -1", "set a positive integer")


def test_lora_option_on_specialist(tmp_path):
    from mdskit.runs import Workspace

    if "specialist" in Workspace.load().registry.unavailable:
        pytest.skip("the specialist method's plugin is not installed")
    result = invoke("train", "specialist", "--lora-rank", "4", "--out", tmp_path / "out")
    assert_user_error(result, "method 'specialist' is a specialist model", "remove the --lora options")


def test_lora_option_with_checkpoint(tmp_path):
    result = invoke("run", "lisa", "--checkpoint", tmp_path, "--lora-rank", "4", "--out", tmp_path / "out")
    assert_user_error(result, "--checkpoint loads a trained model", "remove the --lora options")
