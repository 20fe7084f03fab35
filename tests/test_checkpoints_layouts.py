"""Published checkpoint layouts: LLaVA (transformers), LISA and segment-anything.

Every layout is written with tiny random weights under its own key names
(tests/tiny_layouts.py). It must load into mdskit's modules with the same
values and run through ``mdskit run --checkpoint`` on real cases, and a
mismatching file must fail with the missing and unexpected keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from mdskit import SEG_TOKEN
from mdskit.build import build_model
from mdskit.cli import main
from mdskit.errors import CheckpointError
from mdskit.layouts import detect_layout
from mdskit.runs import Workspace
from mdskit.sample import MdsSample
from mdskit_litemedsam.sam import SamDecoder
from mdskit_llava.hf_backbone import HfLlavaBackbone
from tiny_layouts import save_lisa, save_llava_hf, save_sam, sam_state

QUESTION = "Segment the polyp in this endoscopy image and give the diagnosis: polyp or normal."
ANSWER = f"Modality: endoscopy. Findings: a polyp. Diagnosis: polyp. {SEG_TOKEN}"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {
        "llava": save_llava_hf(root / "llava"),
        "llava_seg": save_llava_hf(root / "llava-seg", with_seg=True),
        "llava_plain": save_llava_hf(root / "llava-plain", chat_template=False),
        "lisa": save_lisa(root / "lisa"),
        "sam": save_sam(root / "sam" / "sam_tiny.pth"),
        "sam_safetensors": save_sam(root / "sam-st" / "sam_tiny.safetensors"),
    }


@pytest.fixture(scope="module")
def workspace() -> Workspace:
    return Workspace.load()


def sample(seed: int = 0, size: tuple[int, int] = (90, 120)) -> MdsSample:
    rng = np.random.default_rng(seed)
    mask = np.zeros(size, dtype=bool)
    mask[20:50, 30:70] = True
    return MdsSample(case_id=f"case-{seed}", dataset="kvasir", modality="endoscopy",
                     image=rng.integers(0, 255, (*size, 3), dtype=np.uint8), mask=mask, label="polyp",
                     label_set=("polyp", "normal"), question=QUESTION, answer=ANSWER)


# ----------------------------------------------------------------- detection


def test_detect_layout_kinds(folders, tmp_path):
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "method.json").write_text("{}")
    assert detect_layout(tmp_path / "trained") == "mdskit"
    assert detect_layout(folders["llava"]) == "llava-hf"
    assert detect_layout(folders["lisa"]) == "lisa"
    assert detect_layout(folders["sam"]) == "sam"
    assert detect_layout(folders["sam"].parent) == "sam"


def test_detect_layout_wrong_folder(tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(CheckpointError, match="model_type 'bert'"):
        detect_layout(bert)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not an mdskit checkpoint .* nor a LLaVA or LISA folder"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="not found"):
        detect_layout(tmp_path / "missing")


def test_wrong_kind_fails_before_compute(folders, workspace):
    spec = workspace.registry.method("lisa")
    with pytest.raises(CheckpointError, match="mask decoder, not a whole model"):
        build_model(spec, workspace.components, folders["sam"].parent)
    with pytest.raises(CheckpointError, match="not a LLaVA folder"):
        HfLlavaBackbone(str(folders["sam"].parent))


# ----------------------------------------------------------------- segment-anything


@pytest.mark.parametrize("kind", ["sam", "sam_safetensors"])
def test_sam_weights_load_in_place(folders, kind):
    decoder = SamDecoder(str(folders[kind]), cache_dir="")
    state = sam_state()
    encoder = decoder.image_encoder
    assert torch.equal(encoder.layers[0].attn.qkv.weight, state["image_encoder.blocks.0.attn.qkv.weight"])
    assert torch.equal(encoder.layers[1].attn.rel_pos_h, state["image_encoder.blocks.1.attn.rel_pos_h"])
    assert torch.equal(encoder.layers[1].mlp.lin2.bias, state["image_encoder.blocks.1.mlp.lin2.bias"])
    assert torch.equal(encoder.patch_embed.projection.weight, state["image_encoder.patch_embed.proj.weight"])
    assert torch.equal(encoder.neck.conv2.weight, state["image_encoder.neck.2.weight"])
    assert torch.equal(encoder.neck.layer_norm1.weight, state["image_encoder.neck.1.weight"])
    assert torch.equal(decoder.mask_decoder.iou_token.weight, state["mask_decoder.iou_token.weight"])
    assert torch.equal(decoder.prompt_encoder.no_mask_embed.weight, state["prompt_encoder.no_mask_embed.weight"])
    config = encoder.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 2)
    assert list(config.global_attn_indexes) == [1]
    assert config.window_size == 14
    assert config.image_size == 1024


def test_sam_decodes_masks(folders):
    from mdskit.prompt import DecoderPrompts

    decoder = SamDecoder(str(folders["sam"]), cache_dir="")
    image = sample().image
    embeddings = decoder.encode_images([image])
    assert embeddings.shape == (1, 256, 64, 64)
    assert torch.isfinite(embeddings).all()
    assert decoder.prompt_frame(image.shape[:2]).size == (1024, 1024)
    output = decoder(embeddings, torch.randn(1, 1, 256), DecoderPrompts(dense_masks=torch.ones(1, 1, 1024, 1024)))
    assert output.mask_logits.shape == (1, 1, 256, 256)
    assert output.iou_scores.shape == (1, 1)


def test_sam_mismatch_names_keys(tmp_path):
    state = sam_state()
    del state["mask_decoder.iou_token.weight"]
    state["mask_decoder.extra_head.weight"] = torch.zeros(2)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as error:
        SamDecoder(str(path), cache_dir="")
    message = str(error.value)
    assert "missing keys (iou_token.weight)" in message
    assert "unexpected keys (extra_head.weight)" in message


def test_sam_variant_checked(folders):
    with pytest.raises(CheckpointError, match="32-wide 2-layer image encoder, but variant 'vit_b'"):
        SamDecoder(str(folders["sam"]), variant="vit_b", cache_dir="")


class Payload:
    """A class that torch.load(weights_only=True) must reject."""


def test_pickled_objects_rejected(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": Payload()}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects other than tensors") as error:
        SamDecoder(str(path), cache_dir="")
    assert "weights_only=False" not in str(error.value)


def test_medsam_preprocessing_scales(folders):
    decoder = SamDecoder(str(folders["sam"]), variant=None, preprocessing="medsam", cache_dir="")
    pixels = decoder.preprocess(sample().image)
    assert pixels.shape == (3, 1024, 1024)
    assert float(pixels.min()) == pytest.approx(0.0)
    assert float(pixels.max()) == pytest.approx(1.0)
    sam_pixels = SamDecoder(str(folders["sam"]), cache_dir="").preprocess(sample().image)
    assert float(sam_pixels.min()) < -1.5


# ----------------------------------------------------------------- LLaVA in transformers' format


def test_llava_adds_seg_and_resizes(folders):
    backbone = HfLlavaBackbone(str(folders["llava"]))
    rows = backbone.model.get_input_embeddings().weight.shape[0]
    assert SEG_TOKEN in backbone.tokenizer.get_vocab()
    assert rows == len(backbone.tokenizer)
    assert backbone.model.lm_head.weight.shape[0] == rows
    assert backbone.token_grid == (4, 4)
    assert backbone.hidden_size == 32


def test_llava_with_seg_keeps_table(folders):
    backbone = HfLlavaBackbone(str(folders["llava_seg"]), resize_embeddings=False)
    saved = load_file(str(folders["llava_seg"] / "model.safetensors"))
    table = next(value for key, value in saved.items() if key.endswith("embed_tokens.weight"))
    assert torch.equal(backbone.model.get_input_embeddings().weight, table)


def test_llava_no_room_for_tokens(folders):
    with pytest.raises(CheckpointError, match="no room for the new tokens"):
        HfLlavaBackbone(str(folders["llava"]), resize_embeddings=False)
    with pytest.raises(CheckpointError, match="has no \\[SEG\\] token and add_seg_token is false"):
        HfLlavaBackbone(str(folders["llava"]), add_seg_token=False)


def test_llava_chat_template_prompt(folders):
    backbone = HfLlavaBackbone(str(folders["llava"]))
    ids = backbone._prompt_ids(QUESTION)
    text = backbone.tokenizer.decode(ids)
    assert ids.count(backbone.image_token_id) == 16
    assert text.startswith("USER: <image>")
    assert text.endswith("ASSISTANT:")
    plain = HfLlavaBackbone(str(folders["llava_plain"]))
    assert plain.prompt_format["kind"] == "llava_v1"
    assert "A chat between a curious human" in plain.tokenizer.decode(plain._prompt_ids(QUESTION))


def test_llava_teacher_forced_masks(folders, workspace):
    model = build_model(workspace.registry.method("sim4seg"), workspace.components, folders["llava"])
    samples = [sample(0), sample(1, (120, 80))]
    encoded = model.encode(samples)
    assert encoded.image_features.shape == (2, 16, 32)
    output = model.backbone(encoded.image_features, [s.question for s in samples], [s.answer for s in samples])
    masks = model.masks_from_text(encoded, output)
    assert output.loss is not None and torch.isfinite(output.loss)
    assert masks.seg_found == [True, True]
    assert masks.mask_logits[1].shape == (120, 80)


def test_llava_save_and_reload(folders, tmp_path):
    backbone = HfLlavaBackbone(str(folders["llava"]))
    backbone.save_pretrained(tmp_path / "saved")
    reloaded = HfLlavaBackbone(str(tmp_path / "saved"), resize_embeddings=False)
    assert reloaded.seg_token_id == backbone.seg_token_id
    assert torch.equal(reloaded.model.lm_head.weight, backbone.model.lm_head.weight)
    assert reloaded.prompt_format == backbone.prompt_format


# ----------------------------------------------------------------- LISA


def test_lisa_weights_land_in_place(folders, workspace):
    state = load_file(str(folders["lisa"] / "model.safetensors"))
    model = build_model(workspace.registry.method("lisa"), workspace.components, folders["lisa"])
    llava = model.backbone.model
    language = llava.model.language_model
    assert torch.equal(language.layers[1].self_attn.q_proj.weight, state["model.layers.1.self_attn.q_proj.weight"])
    assert torch.equal(language.norm.weight, state["model.norm.weight"])
    assert torch.equal(llava.lm_head.weight[:-1], state["lm_head.weight"])
    assert torch.equal(llava.model.multi_modal_projector.linear_2.weight, state["model.mm_projector.2.weight"])
    tower = llava.model.vision_tower
    assert torch.equal(tower.embeddings.patch_embedding.weight,
                       state["model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight"])
    assert torch.equal(model.decoder.mask_decoder.iou_token.weight,
                       state["model.visual_model.mask_decoder.iou_token.weight"])
    assert torch.equal(model.seg_projection[2].weight, state["model.text_hidden_fcs.0.2.weight"])
    assert model.decoder.name == "sam"
    assert model.prompt_module is None


def test_lisa_prompt_format(folders):
    backbone = HfLlavaBackbone(str(folders["lisa"]))
    text = backbone.tokenizer.decode(backbone._prompt_ids(QUESTION))
    assert "USER: <im_start>" in text
    assert "<image><im_end>\n" in text
    assert backbone.tokenizer.convert_tokens_to_ids(SEG_TOKEN) == backbone.seg_token_id


def test_lisa_teacher_forced_masks(folders, workspace):
    model = build_model(workspace.registry.method("sim4seg"), workspace.components, folders["lisa"])
    samples = [sample(2)]
    encoded = model.encode(samples)
    output = model.backbone(encoded.image_features, [QUESTION], [ANSWER])
    masks = model.masks_from_text(encoded, output)
    assert masks.seg_found == [True]
    assert masks.mask_logits[0].shape == (90, 120)
    assert masks.prompts.dense_masks.shape == (1, 1, 1024, 1024)


def test_lisa_tower_from_local_folder(folders, tmp_path):
    save_lisa(tmp_path / "lisa", tower_folder=tmp_path / "clip")
    tower_state = load_file(str(tmp_path / "clip" / "model.safetensors"))
    assert not any("vision_tower" in key for key in load_file(str(tmp_path / "lisa" / "model.safetensors")))
    backbone = HfLlavaBackbone(str(tmp_path / "lisa"))
    tower = backbone.model.model.vision_tower
    assert torch.equal(tower.embeddings.patch_embedding.weight, tower_state["vision_model.embeddings.patch_embedding.weight"])
    assert torch.equal(tower.post_layernorm.weight, tower_state["vision_model.post_layernorm.weight"])
    reference = HfLlavaBackbone(str(folders["lisa"]))
    assert torch.equal(tower.embeddings.patch_embedding.weight,
                       reference.model.model.vision_tower.embeddings.patch_embedding.weight)


def test_lisa_without_tower_rejected(tmp_path):
    save_lisa(tmp_path / "lisa", tower_folder=tmp_path / "clip")
    config_path = tmp_path / "lisa" / "config.json"
    config = json.loads(config_path.read_text())
    config["mm_vision_tower"] = "openai/clip-vit-large-patch14"
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="has no CLIP tower weights"):
        HfLlavaBackbone(str(tmp_path / "lisa"))
    backbone = HfLlavaBackbone(str(tmp_path / "lisa"), vision_tower=str(tmp_path / "clip"))
    assert backbone.token_grid == (4, 4)


def test_lisa_mismatch_names_keys(folders, tmp_path):
    broken = tmp_path / "lisa-broken"
    broken.mkdir()
    for file in folders["lisa"].iterdir():
        if file.name != "model.safetensors":
            (broken / file.name).write_bytes(file.read_bytes())
    state = load_file(str(folders["lisa"] / "model.safetensors"))
    del state["model.norm.weight"]
    state["model.extra_head.weight"] = torch.zeros(2)
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        HfLlavaBackbone(str(broken))
    assert "missing keys (model.language_model.norm.weight)" in str(error.value)
    assert "unexpected keys (model.language_model.extra_head.weight)" in str(error.value)


# ----------------------------------------------------------------- mdskit run --checkpoint on real cases


def run_cli(arguments: list, monkeypatch, tmp_path) -> dict:
    monkeypatch.setenv("MDSKIT_CACHE_DIR", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, [str(argument) for argument in arguments])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / "out" / "metrics.json").read_text())


def test_cli_rejects_wrong_folder(tmp_path):
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    result = CliRunner().invoke(main, ["run", "lisa", "--checkpoint", str(bert), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "not a LLaVA (model_type 'llava') or LISA" in result.output
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_cli_rejects_full_tokenizer(folders, tmp_path):
    registry = yaml.safe_load(Path("registry.yaml").read_text())
    method = dict(registry["methods"]["lisa"])
    method["backbone"] = {"type": "llava-hf", "pretrained": str(folders["llava"]), "resize_embeddings": False}
    registry["methods"] = {"lisa-llava": method}
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(registry))
    result = CliRunner().invoke(main, ["--registry", str(path), "train", "lisa-llava", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "no room for the new tokens" in result.output


@pytest.mark.data
@pytest.mark.parametrize("method, kind", [("sim4seg", "llava"), ("lisa", "lisa")])
def test_run_published_checkpoint(folders, data_root, monkeypatch, tmp_path, method, kind):
    metrics = run_cli(["run", method, "--checkpoint", folders[kind], "--data", f"kvasir={data_root}",
                       "--max-samples", 2, "--out", tmp_path / "out"], monkeypatch, tmp_path)
    assert metrics["pooled"]["n"] == 2
    lines = (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2


@pytest.mark.data
def test_run_sam_decoder_option(folders, data_root, monkeypatch, tmp_path):
    registry = yaml.safe_load(Path("registry.yaml").read_text())
    method = dict(registry["methods"]["lisa"])
    method["decoder"] = {"type": "sam", "checkpoint": str(folders["sam"]), "cache_dir": ""}
    registry["methods"] = {"lisa-sam": method}
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(registry))
    metrics = run_cli(["--registry", path, "run", "lisa-sam", "--checkpoint", folders["llava"], "--data",
                       f"busi={data_root}", "--max-samples", 2, "--out", tmp_path / "out"], monkeypatch, tmp_path)
    assert metrics["pooled"]["n"] == 2
