"""The llava backbone: tokenizer, teacher-forced pass, generation, save and load."""

from __future__ import annotations

import pytest
import torch

from mdskit import SEG_TOKEN
from mdskit.errors import CheckpointError
from mdskit_llava.backbone import LlavaBackbone

CORPUS = [
    "Segment the lesion and give the diagnosis.",
    f"Modality: breast ultrasound. Findings: one oval region. Diagnosis: benign. Mask: {SEG_TOKEN}.",
    f"Modality: breast ultrasound. Findings: no focal lesion. Diagnosis: normal. Mask: {SEG_TOKEN}.",
]
TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=300, token_grid=4,
            vision_feature_dim=8, max_new_tokens=12)


@pytest.fixture()
def backbone():
    torch.manual_seed(0)
    model = LlavaBackbone(**TINY)
    model.setup(CORPUS)
    return model.eval()


def features(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 16, 8, generator=torch.Generator().manual_seed(1))


def test_forward_marks_image_and_seg_tokens(backbone):
    output = backbone(features(), [CORPUS[0]] * 2, CORPUS[1:])
    assert output.hidden_states.shape[0] == 2
    assert output.hidden_states.shape[-1] == 32
    assert output.image_token_mask.sum(dim=1).tolist() == [16, 16]
    assert output.seg_token_mask.sum(dim=1).tolist() == [1, 1]
    assert torch.isfinite(output.loss)


def test_seg_in_question_is_not_an_answer_seg(backbone):
    output = backbone(features(1), [f"What is {SEG_TOKEN}?"], ["Diagnosis: benign."])
    assert int(output.seg_token_mask.sum()) == 0


def test_image_features_pool_embeddings_to_grid(backbone):
    embeddings = torch.randn(3, 8, 64, 64)
    pooled = backbone.image_features([], embeddings)
    assert pooled.shape == (3, 16, 8)
    assert torch.allclose(pooled[0, 0], embeddings[0, :, :16, :16].mean(dim=(1, 2)), atol=1e-5)


def test_generate_returns_paths_per_request(backbone):
    torch.manual_seed(0)
    answers = backbone.generate(features(), [CORPUS[0]] * 2, num_paths=3, temperature=1.0, do_sample=True)
    assert [len(texts) for texts in answers.texts] == [3, 3]
    assert all(isinstance(text, str) for texts in answers.texts for text in texts)
    assert all(value <= 0 for values in answers.mean_logprobs for value in values)


def test_greedy_generation_is_deterministic(backbone):
    first = backbone.generate(features(1), [CORPUS[0]])
    second = backbone.generate(features(1), [CORPUS[0]])
    assert first.texts == second.texts


def test_save_and_load_round_trip(backbone, tmp_path):
    backbone.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = LlavaBackbone(pretrained=str(tmp_path), max_new_tokens=12).eval()
    assert loaded.hidden_size == 32
    assert loaded.token_grid == (4, 4)
    inputs = features()
    expected = backbone(inputs, [CORPUS[0]] * 2, CORPUS[1:])
    actual = loaded(inputs, [CORPUS[0]] * 2, CORPUS[1:])
    assert torch.allclose(expected.hidden_states, actual.hidden_states, atol=1e-6)
    assert loaded.generate(inputs, [CORPUS[0]] * 2).texts == backbone.generate(inputs, [CORPUS[0]] * 2).texts


def test_setup_ignored_after_loading(backbone, tmp_path):
    backbone.save_pretrained(tmp_path)
    loaded = LlavaBackbone(pretrained=str(tmp_path))
    vocabulary = len(loaded.tokenizer)
    loaded.setup(["completely different words"] * 3)
    assert len(loaded.tokenizer) == vocabulary


def test_missing_folder_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        LlavaBackbone(pretrained=str(tmp_path / "absent"))


def test_wrong_image_token_count(backbone):
    with pytest.raises(ValueError, match="32 <image> tokens but 10 image features"):
        backbone(torch.randn(2, 5, 8), [CORPUS[0]] * 2, CORPUS[1:])


def test_unbuilt_backbone_says_what_to_call():
    with pytest.raises(RuntimeError, match=r"call setup\(corpus\)"):
        LlavaBackbone(**TINY).generate(features(1), [CORPUS[0]])
