"""Test-time scaling through `mdskit run`: records, agreement maps and the oracle's labels."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from mdskit.cli import main

pytestmark = pytest.mark.slow

TINY_REGISTRY = """
    schema: 1
    methods:
      tiny-sim4seg:
        backbone: {type: llava, hidden_size: 32, num_layers: 1, num_heads: 2, intermediate_size: 64,
                   vocab_size: 400, token_grid: 4, max_new_tokens: 24}
        prompt: {type: rvls2m, grid: 4, top_n: 4}
        decoder: {type: litemedsam}
        cot: {type: template}
        training: {steps: 2, batch_size: 2, lr: 3.0e-3, checkpoint_every: 2}
"""


def invoke(registry, *arguments):
    return CliRunner().invoke(main, ["--registry", str(registry), *map(str, arguments)])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset_folder):
    folder = tmp_path_factory.mktemp("tts-run")
    registry = folder / "registry.yaml"
    registry.write_text(textwrap.dedent(TINY_REGISTRY), encoding="utf-8")
    data = ["--data", f"ph2={dataset_folder('ph2')}", "--max-samples", "3"]
    result = invoke(registry, "train", "tiny-sim4seg", *data, "--out", folder / "train")
    assert result.exit_code == 0, result.output
    return registry, data, folder / "train" / "checkpoint", folder


def read_predictions(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def test_oracle_outputs_say_upper_bound(trained):
    registry, data, checkpoint, folder = trained
    out = folder / "oracle"

    result = invoke(registry, "run", "tiny-sim4seg", "--ttss", "oracle", "--paths", "2", "--checkpoint",
                    checkpoint, *data, "--out", out)

    assert result.exit_code == 0, result.output
    assert "UPPER BOUND" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["upper_bound"] is True
    assert "upper bound" in metrics["upper_bound_note"]
    records = read_predictions(out)
    assert all(record["upper_bound"] for record in records)
    assert all(record["strategy"] == "oracle" for record in records)


def test_best_of_n_records_every_candidate(trained):
    registry, data, checkpoint, folder = trained
    out = folder / "best-of-n"

    result = invoke(registry, "run", "tiny-sim4seg", "--ttss", "best-of-n", "--paths", "2", "--perturbations", "2",
                    "--score", "agreement", "--checkpoint", checkpoint, *data, "--out", out)

    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tts_params"] == {"num_paths": 2, "temperature": 0.7, "num_perturbations": 2,
                                     "score": "agreement"}
    assert "upper_bound" not in metrics
    for record in read_predictions(out):
        candidates = record["candidates"]
        assert [candidate["path"] for candidate in candidates] == [0, 1, 2, 3]
        assert [candidate["perturbation"] for candidate in candidates] == [0, 1, 0, 1]
        assert [candidate["sampled_path"] for candidate in candidates] == [0, 0, 1, 1]
        assert sum(candidate["chosen"] for candidate in candidates) == 1
        assert all(candidate["score"] == candidate["agreement"] for candidate in candidates)
        assert record["upper_bound"] is False
    assert list((out / "masks").rglob("*.png"))


def test_agreement_map_beside_each_mask(trained):
    registry, data, checkpoint, folder = trained
    out = folder / "self-consistency"

    result = invoke(registry, "run", "tiny-sim4seg", "--ttss", "self-consistency", "--paths", "3",
                    "--checkpoint", checkpoint, *data, "--out", out)

    assert result.exit_code == 0, result.output
    masks = sorted(path.relative_to(out / "masks") for path in (out / "masks").rglob("*.png"))
    agreement = sorted(path.relative_to(out / "agreement") for path in (out / "agreement").rglob("*.png"))
    assert masks
    assert agreement == masks
