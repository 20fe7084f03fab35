"""LoRA fine-tuning: settings, trainable parts, gradient checkpointing, merged saving."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from mdskit.build import build_model
from mdskit.cli import main
from mdskit.errors import ConfigError
from mdskit.finetune import (FinetuneConfig, LoraSettings, apply_finetuning, checkpointing_enabled, lora_layers,
                             override_lora, parse_finetune)
from mdskit.runs import Workspace
from mdskit_llava.hf_backbone import HfLlavaBackbone
from test_checkpoints_layouts import ANSWER, QUESTION, sample
from tiny_layouts import save_lisa, save_llava_hf, save_sam


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    return {"llava": save_llava_hf(root / "llava"), "lisa": save_lisa(root / "lisa"),
            "sam": save_sam(root / "sam" / "sam_tiny.pth")}


@pytest.fixture(scope="module")
def workspace() -> Workspace:
    return Workspace.load()


def lisa_model(folders, workspace):
    return build_model(workspace.registry.method("lisa"), workspace.components, folders["lisa"])


def test_defaults_are_lisa_values():
    config = parse_finetune({}, "methods.x.finetune")
    assert config.lora == LoraSettings(r=8, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj"))
    assert config.trainable == ("seg_projection", "mask_decoder", "lm_head", "embeddings")
    assert config.gradient_checkpointing is False
    assert parse_finetune(None, "methods.x.finetune") is None


@pytest.mark.parametrize("raw, message", [
    ({"lora": {"rank": 4}}, "unknown lora keys \\['rank'\\]"),
    ({"lora": {"r": 0}}, "invalid lora r 0"),
    ({"lora": {"dropout": 1.5}}, "invalid lora dropout 1.5"),
    ({"lora": {"target_modules": []}}, "invalid lora target_modules"),
    ({"lora": {"target_modules": "q_proj"}}, "must be a list of layer names"),
    ({"trainable": ["vision_tower"]}, "invalid finetune trainable"),
    ({"gradient_checkpointing": "yes"}, "gradient_checkpointing must be true or false"),
    ({"optimizer": "sgd"}, "unknown finetune keys \\['optimizer'\\]"),
])
def test_invalid_settings_rejected(raw, message):
    with pytest.raises(ConfigError, match=message):
        parse_finetune(raw, "methods.x.finetune")


def test_override_without_finetune_section():
    config = override_lora(None, {"r": 4}, "--lora options")
    assert config.lora == LoraSettings(r=4, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj"))
    assert config.trainable == FinetuneConfig().trainable


def test_override_keeps_other_settings():
    method = parse_finetune({"lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "k_proj"]},
                             "trainable": ["seg_projection"], "gradient_checkpointing": True}, "methods.x.finetune")
    config = override_lora(method, {"dropout": 0.1, "target_modules": ["o_proj"]}, "--lora options")
    assert config.lora == LoraSettings(r=16, alpha=32, dropout=0.1, target_modules=("o_proj",))
    assert config.trainable == ("seg_projection",)
    assert config.gradient_checkpointing is True


def test_override_turns_on_lora():
    method = parse_finetune({"lora": None, "trainable": ["mask_decoder"]}, "methods.x.finetune")
    assert method.lora is None
    config = override_lora(method, {"alpha": 8}, "--lora options")
    assert config.lora == LoraSettings(r=8, alpha=8, dropout=0.05, target_modules=("q_proj", "v_proj"))
    assert config.trainable == ("mask_decoder",)


def test_override_rejects_bad_value():
    with pytest.raises(ConfigError, match="^--lora options: invalid lora r 0"):
        override_lora(None, {"r": 0}, "--lora options")


def test_train_records_lora_options(tmp_path):
    """CLI values replace the registry's in the checkpoint record and the adapters that are saved."""
    result = CliRunner().invoke(main, [str(argument) for argument in [
        "train", "lisa", "--max-samples", 2, "--train-steps", 1, "--lora-rank", 4, "--lora-alpha", 8,
        "--lora-targets", "q_proj", "--out", tmp_path]])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "checkpoint" / "method.json").read_text())
    assert record["method"]["finetune"]["lora"] == {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj"]}
    assert record["method"]["finetune"]["trainable"] == list(FinetuneConfig().trainable)
    backbone = tmp_path / "checkpoint" / "backbone"
    assert json.loads((backbone / "lora_config.json").read_text())["r"] == 4
    adapters = load_file(str(backbone / "lora_adapters.safetensors"))
    # The tiny backbone has 3 layers, each with one q_proj (lora_A and lora_B).
    assert len(adapters) == 3 * 2
    assert all("q_proj" in name for name in adapters)
    assert all(4 in tensor.shape for tensor in adapters.values())

    # The LoRA settings are part of the run's fingerprint, so other values need another folder.
    rerun = CliRunner().invoke(main, [str(argument) for argument in [
        "train", "lisa", "--max-samples", 2, "--train-steps", 1, "--lora-rank", 8, "--out", tmp_path]])
    assert rerun.exit_code == 2, rerun.output
    assert "other settings (the method definition differs)" in rerun.output


def test_unmatched_lora_target_option(tmp_path):
    result = CliRunner().invoke(main, [str(argument) for argument in [
        "train", "lisa", "--max-samples", 2, "--train-steps", 1, "--lora-targets", "qkv_proj", "--out", tmp_path]])
    assert result.exit_code == 2, result.output
    assert "['qkv_proj'] match no layer" in result.output
    assert "--lora-targets" in result.output
    assert not (tmp_path / "checkpoint").exists()


def test_lora_and_parts_trainable(folders, workspace):
    model = lisa_model(folders, workspace)
    counts = apply_finetuning(model, FinetuneConfig())
    language = model.backbone.model.model.language_model
    assert len(lora_layers(language)) == 4
    assert len(lora_layers(model.backbone.model.model.vision_tower)) == 0
    attention = language.layers[0].self_attn
    assert attention.q_proj.lora_A["default"].weight.shape == (8, 32)
    assert attention.q_proj.scaling["default"] == pytest.approx(16 / 8)
    assert attention.q_proj.lora_dropout["default"].p == pytest.approx(0.05)
    assert attention.q_proj.lora_A["default"].weight.requires_grad
    assert not attention.q_proj.base_layer.weight.requires_grad
    assert not attention.k_proj.weight.requires_grad
    assert model.backbone.model.lm_head.weight.requires_grad
    assert model.backbone.model.get_input_embeddings().weight.requires_grad
    assert all(p.requires_grad for p in model.seg_projection.parameters())
    assert all(p.requires_grad for p in model.decoder.mask_decoder.parameters())
    assert not any(p.requires_grad for p in model.decoder.prompt_encoder.parameters())
    assert not any(p.requires_grad for p in model.decoder.image_encoder.parameters())
    assert not any(p.requires_grad for p in model.backbone.model.model.multi_modal_projector.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert counts["trainable"] == trainable
    assert 0 < counts["trainable"] < counts["total"]


def test_unmatched_target_fails_before_change(folders, workspace):
    model = lisa_model(folders, workspace)
    before = [p.requires_grad for p in model.parameters()]
    config = FinetuneConfig(lora=LoraSettings(target_modules=("q_proj", "qkv_proj")))
    with pytest.raises(ConfigError) as error:
        apply_finetuning(model, config)
    assert "['qkv_proj'] match no layer" in str(error.value)
    assert "q_proj" in str(error.value)
    assert "down_proj" in str(error.value)
    assert lora_layers(model) == []
    assert [p.requires_grad for p in model.parameters()] == before


def test_checkpointing_step_trains_adapters(folders, workspace, caplog):
    model = lisa_model(folders, workspace)
    with caplog.at_level(logging.INFO, logger="mdskit.finetune"):
        apply_finetuning(model, FinetuneConfig(gradient_checkpointing=True))
    assert checkpointing_enabled(model.backbone.language_model_module())
    assert "gradient checkpointing on" in caplog.text
    assert "r=8 alpha=16 dropout=0.05 on q_proj, v_proj" in caplog.text

    model.train()
    samples = [sample(0), sample(1)]
    encoded = model.encode(samples)
    features = model.backbone.image_features([s.image for s in samples], encoded.image_embeddings)
    output = model.backbone(features, [QUESTION] * 2, [ANSWER] * 2)
    masks = model.masks_from_text(encoded, output)
    loss = output.loss + sum(logits.sigmoid().mean() for logits in masks.mask_logits)
    loss.backward()
    q_proj = model.backbone.language_model_module().layers[1].self_attn.q_proj
    assert q_proj.lora_B["default"].weight.grad is not None
    assert float(q_proj.lora_B["default"].weight.grad.abs().sum()) > 0
    assert q_proj.base_layer.weight.grad is None
    assert model.decoder.mask_decoder.iou_token.weight.grad is not None


def test_adapters_saved_and_reloaded(folders, workspace, tmp_path):
    model = lisa_model(folders, workspace)
    apply_finetuning(model, FinetuneConfig(lora=LoraSettings(r=4, alpha=8)))
    q_proj = model.backbone.language_model_module().layers[0].self_attn.q_proj
    torch.nn.init.normal_(q_proj.lora_B["default"].weight)
    base = q_proj.base_layer.weight.detach().clone()

    model.backbone.save_pretrained(tmp_path / "backbone")
    saved = load_file(str(tmp_path / "backbone" / "model.safetensors"))
    assert not any("lora_" in key or "base_layer" in key for key in saved)
    # transformers writes LLaVA under its published names (language_model.model.*).
    saved_q = [value for key, value in saved.items() if key.endswith("language_model.model.layers.0.self_attn.q_proj.weight")]
    assert len(saved_q) == 1
    assert torch.equal(saved_q[0], base)
    config = json.loads((tmp_path / "backbone" / "lora_config.json").read_text())
    assert config == {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}

    reloaded = HfLlavaBackbone(str(tmp_path / "backbone"), resize_embeddings=False)
    reloaded_q = reloaded.language_model_module().layers[0].self_attn.q_proj
    assert len(lora_layers(reloaded.model)) == 4
    assert torch.equal(reloaded_q.lora_B["default"].weight, q_proj.lora_B["default"].weight)
    assert torch.equal(reloaded_q.base_layer.weight, base)
    ids = torch.tensor([[1, 5, 9, 12]])
    model.backbone.model.eval()
    reloaded.model.eval()
    with torch.no_grad():
        expected = model.backbone.model(input_ids=ids).logits
        actual = reloaded.model(input_ids=ids).logits
    assert torch.allclose(actual, expected, atol=1e-5)


def test_resume_keeps_loaded_adapters(folders, workspace, tmp_path):
    model = lisa_model(folders, workspace)
    apply_finetuning(model, FinetuneConfig())
    q_proj = model.backbone.language_model_module().layers[0].self_attn.q_proj
    torch.nn.init.normal_(q_proj.lora_B["default"].weight)
    model.backbone.save_pretrained(tmp_path / "backbone")

    resumed = lisa_model(folders, workspace)
    resumed.backbone = HfLlavaBackbone(str(tmp_path / "backbone"), resize_embeddings=False)
    apply_finetuning(resumed, FinetuneConfig())
    resumed_q = resumed.backbone.language_model_module().layers[0].self_attn.q_proj
    assert len(lora_layers(resumed.backbone.model)) == 4
    assert torch.equal(resumed_q.lora_B["default"].weight, q_proj.lora_B["default"].weight)
    assert resumed_q.lora_B["default"].weight.requires_grad
    assert not resumed_q.base_layer.weight.requires_grad


def test_tiny_backbone_takes_lora(workspace):
    model = build_model(workspace.registry.method("lisa"), workspace.components)
    model.backbone.setup([QUESTION, ANSWER])
    model.rebuild_projection()
    apply_finetuning(model, FinetuneConfig(trainable=("seg_projection", "lm_head")))
    assert len(lora_layers(model.backbone.language_model_module())) == 2 * 3
    assert model.backbone.model.language_model.lm_head.weight.requires_grad
    assert not model.backbone.model.multi_modal_projector[1].weight.requires_grad


@pytest.mark.data
def test_run_finetunes_registry_method(folders, data_root, monkeypatch, tmp_path):
    registry = yaml.safe_load(Path("registry.yaml").read_text())
    method = dict(registry["methods"]["lisa"])
    method["backbone"] = {"type": "llava-hf", "pretrained": str(folders["llava"])}
    method["decoder"] = {"type": "sam", "checkpoint": str(folders["sam"]), "cache_dir": ""}
    method["finetune"] = {"lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
                          "gradient_checkpointing": True}
    method["training"] = {**registry["methods"]["lisa"]["training"], "batch_size": 2, "precision": "float32"}
    registry["methods"] = {"lisa-llava": method}
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(registry))
    monkeypatch.setenv("MDSKIT_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, [str(argument) for argument in [
        "--registry", path, "run", "lisa-llava", "--data", f"kvasir={data_root}", "--max-samples", 2,
        "--train-steps", 2, "--out", tmp_path / "out"]])
    assert result.exit_code == 0, result.output
    backbone = tmp_path / "out" / "checkpoint" / "backbone"
    saved = load_file(str(backbone / "model.safetensors"))
    assert not any("lora_" in key or "base_layer" in key for key in saved)
    adapters = load_file(str(backbone / "lora_adapters.safetensors"))
    assert len(adapters) == 2 * 2 * 2
    record = json.loads((tmp_path / "out" / "checkpoint" / "method.json").read_text())
    assert record["step"] == 2
    assert record["method"]["finetune"]["lora"]["r"] == 4
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["pooled"]["n"] == 2


@pytest.mark.data
def test_run_with_lora_rank_on_kvasir(data_root, monkeypatch, tmp_path):
    """The tiny LISA method, without a finetune section, trains LoRA adapters from --lora-rank."""
    monkeypatch.setenv("MDSKIT_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, [str(argument) for argument in [
        "run", "lisa", "--data", f"kvasir={data_root}", "--max-samples", 2, "--train-steps", 2,
        "--precision", "float32", "--lora-rank", 4, "--out", tmp_path / "out"]])
    assert result.exit_code == 0, result.output
    adapters = load_file(str(tmp_path / "out" / "checkpoint" / "backbone" / "lora_adapters.safetensors"))
    # 3 layers x (q_proj, v_proj) x (lora_A, lora_B), with rank 4.
    assert len(adapters) == 3 * 2 * 2
    assert all(4 in tensor.shape for tensor in adapters.values())
    record = json.loads((tmp_path / "out" / "checkpoint" / "method.json").read_text())
    assert record["method"]["finetune"]["lora"]["r"] == 4
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["pooled"]["n"] == 2
