"""The whole task through the command line, on real images.

A tiny Sim4Seg (small language model, coarse RVLS2M grid, the real
LiteMedSAM decoder) trains for a few steps on a handful of real cases, then
runs through ``mdskit run`` with each test-time scaling strategy. These
tests check wiring, outputs, resuming and error messages; the quality of a
properly trained model is measured by the benchmarks, not here.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mdskit.cli import main

pytestmark = pytest.mark.slow

TINY_REGISTRY = """
    schema: 1
    methods:
      tiny-sim4seg:
        backbone: &backbone {type: llava, hidden_size: 32, num_layers: 1, num_heads: 2,
                             intermediate_size: 64, vocab_size: 400, token_grid: 4, max_new_tokens: 24}
        prompt: {type: rvls2m, grid: 4, top_n: 4}
        decoder: &decoder {type: litemedsam}
        cot: &cot {type: template}
        training: &training {steps: 4, batch_size: 2, lr: 3.0e-3, checkpoint_every: 2}
      tiny-lisa:
        backbone: *backbone
        prompt: null
        decoder: *decoder
        cot: *cot
        training: *training
    tts:
      self-consistency: {num_paths: 2, temperature: 1.0}
"""


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    path = tmp_path_factory.mktemp("registry") / "registry.yaml"
    path.write_text(textwrap.dedent(TINY_REGISTRY), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_args(dataset_folder):
    return ["--data", f"ph2={dataset_folder('ph2')}", "--data", f"busi={dataset_folder('busi')}",
            "--max-samples", "3"]


def invoke(registry, *arguments):
    result = CliRunner().invoke(main, ["--registry", str(registry), *map(str, arguments)])
    return result


@pytest.fixture(scope="module")
def trained_run(registry, data_args, tmp_path_factory):
    """A tiny Sim4Seg trained and evaluated once for the module."""
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = invoke(registry, "run", "tiny-sim4seg", *data_args, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result


def test_run_writes_metrics_for_each_dataset(trained_run):
    out, result = trained_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "tiny-sim4seg"
    assert metrics["ttss"] == "none"
    for key in ("ph2", "busi", "pooled"):
        assert set(metrics[key]) == {"giou", "ciou", "dice", "accuracy", "macro_f1", "n"}
    assert metrics["pooled"]["n"] == metrics["ph2"]["n"] + metrics["busi"]["n"]
    assert "LISA" in metrics["conventions"]["giou"]
    assert metrics["provenance"]["train_steps"] == 4
    assert "pooled" in result.output


def test_run_writes_one_prediction_per_sample(trained_run):
    out, _ = trained_run
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(records) == metrics["pooled"]["n"]
    assert len({record["id"] for record in records}) == len(records)
    for record in records:
        assert set(record) >= {"id", "text", "predicted_diagnosis", "true_diagnosis", "iou", "dice"}


def test_masks_match_their_images(trained_run, dataset_folder):
    out, _ = trained_run
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for record in records:
        mask = np.asarray(Image.open(out / "masks" / record["dataset"] / f"{record['case_id']}.png"))
        overlay = np.asarray(Image.open(out / "overlays" / record["dataset"] / f"{record['case_id']}.png"))
        assert mask.shape == overlay.shape[:2]
        assert set(np.unique(mask)) <= {0, 255}
        assert int((mask > 0).sum()) == record["predicted_area"]


def test_checkpoint_is_saved_in_safetensors(trained_run):
    out, _ = trained_run
    checkpoint = out / "checkpoint"
    assert (checkpoint / "model.safetensors").is_file()
    assert (checkpoint / "backbone" / "model.safetensors").is_file()
    assert json.loads((checkpoint / "method.json").read_text())["step"] == 4


def test_rerun_resumes_without_recomputing(trained_run, registry, data_args):
    out, _ = trained_run
    predictions = (out / "predictions.jsonl").read_text()
    before = json.loads((out / "metrics.json").read_text())
    result = invoke(registry, "run", "tiny-sim4seg", *data_args, "--out", out)
    assert result.exit_code == 0, result.output
    assert (out / "predictions.jsonl").read_text() == predictions
    after = json.loads((out / "metrics.json").read_text())
    assert after["pooled"] == before["pooled"]


def test_self_consistency_from_checkpoint(trained_run, registry, data_args, tmp_path):
    out, _ = trained_run
    result = invoke(registry, "run", "tiny-sim4seg", "--ttss", "self-consistency", "--checkpoint",
                    out / "checkpoint", *data_args, "--out", tmp_path / "sc")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "sc" / "predictions.jsonl").read_text().splitlines()]
    assert all(len(record["candidates"]) == 2 for record in records)
    assert any((tmp_path / "sc" / "agreement").rglob("*.png")) or all(
        record["failure"] for record in records)


def test_interrupted_prediction_resumes(trained_run, registry, data_args, tmp_path):
    out, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    lines = (out / "predictions.jsonl").read_text().splitlines()
    # One finished line and half of the next, as a crash would leave them.
    (copy / "predictions.jsonl").write_text(lines[0] + "\n" + lines[1][:40])
    (copy / "metrics.json").unlink()

    result = invoke(registry, "run", "tiny-sim4seg", *data_args, "--out", copy)
    assert result.exit_code == 0, result.output
    resumed = (copy / "predictions.jsonl").read_text().splitlines()
    assert len(resumed) == len(lines)
    assert resumed[0] == lines[0]
    expected = json.loads((out / "metrics.json").read_text())["pooled"]
    assert json.loads((copy / "metrics.json").read_text())["pooled"] == expected


def test_other_settings_in_same_folder_are_rejected(trained_run, registry, data_args):
    out, _ = trained_run
    result = invoke(registry, "run", "tiny-sim4seg", "--seed", "5", *data_args, "--out", out)
    assert result.exit_code == 2
    assert "with other settings (seed differs)" in result.output


def test_interrupted_training_resumes_to_same_weights(registry, data_args, tmp_path):
    from safetensors.torch import load_file

    from mdskit.runs import RunSettings, Workspace, parse_data_option, train_only

    workspace = Workspace.load(registry)
    data = parse_data_option(tuple(data_args[1:4:2]), workspace.components)

    def interrupt_after_step_three(phase, done, total, values):
        if phase == "train" and done == 3:
            raise KeyboardInterrupt

    interrupted = RunSettings(method="tiny-lisa", data=data, out=tmp_path / "a", max_samples=3)
    with pytest.raises(KeyboardInterrupt):
        train_only(interrupted, workspace, progress=interrupt_after_step_three)
    assert json.loads((tmp_path / "a" / "checkpoint" / "method.json").read_text())["step"] == 2
    resumed = train_only(interrupted, workspace)
    assert resumed.start_step == 2

    straight = RunSettings(method="tiny-lisa", data=data, out=tmp_path / "b", max_samples=3)
    train_only(straight, workspace)
    first = load_file(str(tmp_path / "a" / "checkpoint" / "model.safetensors"))
    second = load_file(str(tmp_path / "b" / "checkpoint" / "model.safetensors"))
    for key in ("seg_projection.0.weight", "decoder.mask_decoder.iou_token.weight"):
        assert np.allclose(first[key].numpy(), second[key].numpy(), atol=1e-5), key


def test_larger_budget_continues_training(registry, data_args, tmp_path):
    from mdskit.runs import RunSettings, Workspace, parse_data_option, train_only

    workspace = Workspace.load(registry)
    data = parse_data_option(tuple(data_args[1:4:2]), workspace.components)
    settings = RunSettings(method="tiny-lisa", data=data, out=tmp_path, max_samples=2, train_steps=2)
    assert train_only(settings, workspace).start_step == 0
    longer = train_only(replace(settings, train_steps=3), workspace)
    assert longer.start_step == 2
    assert longer.steps == 3
    assert json.loads((tmp_path / "checkpoint" / "method.json").read_text())["step"] == 3


def test_run_from_a_transformers_folder(registry, dataset_folder, tmp_path):
    """A tiny random backbone saved with save_pretrained runs through the CLI."""
    from mdskit_llava.backbone import LlavaBackbone

    backbone = LlavaBackbone(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300,
                             token_grid=4)
    backbone.setup(["Modality: dermoscopy. Findings: one lesion. Diagnosis: melanoma. Mask: [SEG]."] * 4)
    backbone.save_pretrained(tmp_path / "backbone")
    custom = tmp_path / "registry.yaml"
    custom.write_text(textwrap.dedent(f"""
        schema: 1
        methods:
          from-folder:
            backbone: {{type: llava, pretrained: "{tmp_path / 'backbone'}", max_new_tokens: 8}}
            prompt: {{type: rvls2m, grid: 4, top_n: 2}}
            decoder: {{type: litemedsam}}
            cot: {{type: template}}
            training: {{steps: 0}}
    """), encoding="utf-8")
    result = invoke(custom, "run", "from-folder", "--data", f"ph2={dataset_folder('ph2')}", "--max-samples", "2",
                    "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    records = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert len(records) == 2


def test_checkpoint_of_another_method_is_rejected(trained_run, registry, data_args, tmp_path):
    out, _ = trained_run
    result = invoke(registry, "run", "tiny-lisa", "--checkpoint", out / "checkpoint", *data_args,
                    "--out", tmp_path / "wrong")
    assert result.exit_code == 2
    assert "was trained for method 'tiny-sim4seg'" in result.output
    assert "Traceback" not in result.output
