"""Command-line errors of the test-time scaling options: one message, exit status 2."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from mdskit.cli import main


def invoke(*arguments):
    return CliRunner().invoke(main, [str(argument) for argument in arguments])


def assert_user_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in " ".join(result.output.split())


@pytest.mark.parametrize("arguments, fragments", [
    (["--ttss", "best-of-n", "--temperature", "nan"], ["temperature (--temperature) must be a finite number, got nan"]),
    (["--ttss", "best-of-n", "--score", "dice"], ["unknown best-of-n score 'dice'", "predicted-iou"]),
    (["--ttss", "best-of-n", "--perturbations", "0"], ["num_perturbations (--perturbations) must be at least 1"]),
    (["--ttss", "region-perturbation", "--perturbations", "17"], ["num_perturbations (--perturbations) 17 exceeds the maximum of 16"]),
    (["--ttss", "prompt-ensemble", "--questions", "9"], ["num_questions (--questions) 9 exceeds the maximum of 8"]),
    (["--ttss", "oracle", "--paths", "0"], ["num_paths (--paths) must be at least 1"]),
    (["--ttss", "self-consistency", "--score", "logprob"], ["unknown parameter 'score'", "self-consistency"]),
])
def test_bad_tts_options(tmp_path, arguments, fragments):
    result = invoke("run", "sim4seg", *arguments, "--out", tmp_path / "out")

    assert_user_error(result, *fragments)


def test_help_lists_strategies():
    result = invoke("run", "--help")

    # Help text wraps lines at hyphens, so join the words it split.
    text = re.sub(r"-\s+", "-", " ".join(result.output.split()))
    for name in ("self-consistency", "best-of-n", "region-perturbation", "prompt-ensemble", "oracle"):
        assert name in text
    assert "upper bound" in text
