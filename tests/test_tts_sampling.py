"""Batched path sampling: the shared key-value cache and per-path seeds."""

from __future__ import annotations

import pytest
import torch

from mdskit import SEG_TOKEN
from mdskit_llava.backbone import LlavaBackbone

CORPUS = [
    "Segment the lesion and give the diagnosis.",
    f"Modality: breast ultrasound. Findings: one oval region. Diagnosis: benign. Mask: {SEG_TOKEN}.",
    f"Modality: breast ultrasound. Findings: no focal lesion. Diagnosis: normal. Mask: {SEG_TOKEN}.",
    f"Modality: breast ultrasound. Findings: an irregular mass. Diagnosis: malignant. Mask: {SEG_TOKEN}.",
]
TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=300, token_grid=4,
            vision_feature_dim=8, max_new_tokens=16)
SEEDS = [11, 12, 13, 14, 15]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    model = LlavaBackbone(**TINY)
    model.setup(CORPUS)
    return model.eval()


def features() -> torch.Tensor:
    return torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(1))


def test_batched_paths_match_one_by_one(backbone):
    batched = backbone.generate(features(), [CORPUS[0]], num_paths=len(SEEDS), temperature=1.0, do_sample=True,
                                path_seeds=SEEDS)
    single = [backbone.generate(features(), [CORPUS[0]], num_paths=1, temperature=1.0, do_sample=True,
                                path_seeds=[seed]) for seed in SEEDS]

    assert batched.texts[0] == [answers.texts[0][0] for answers in single]
    expected = torch.tensor([answers.mean_logprobs[0][0] for answers in single])
    torch.testing.assert_close(torch.tensor(batched.mean_logprobs[0]), expected, rtol=1e-4, atol=1e-5)


def test_sampled_paths_differ(backbone):
    # A random tiny model spreads its probability widely, so five paths at
    # temperature 1 are not all the same.
    answers = backbone.generate(features(), [CORPUS[0]], num_paths=len(SEEDS), temperature=1.0, do_sample=True,
                                path_seeds=SEEDS)

    assert len(set(answers.texts[0])) > 1


def test_same_seeds_same_paths(backbone):
    first = backbone.generate(features(), [CORPUS[0]], num_paths=3, temperature=0.7, do_sample=True,
                              path_seeds=[1, 2, 3])
    second = backbone.generate(features(), [CORPUS[0]], num_paths=3, temperature=0.7, do_sample=True,
                               path_seeds=[1, 2, 3])

    assert first.texts == second.texts


def test_path_does_not_depend_on_its_row(backbone):
    forward = backbone.generate(features(), [CORPUS[0]], num_paths=3, temperature=1.0, do_sample=True,
                                path_seeds=[5, 6, 7])
    backward = backbone.generate(features(), [CORPUS[0]], num_paths=3, temperature=1.0, do_sample=True,
                                 path_seeds=[7, 6, 5])

    assert forward.texts[0] == backward.texts[0][::-1]


def test_greedy_matches_transformers_generate(backbone):
    answers = backbone.generate(features(), [CORPUS[0]])

    model, tokenizer = backbone.model, backbone.tokenizer
    prompt = torch.tensor([backbone._prompt_ids(CORPUS[0])])
    embeddings = model.embed(prompt, features())
    reference = model.language_model.generate(
        inputs_embeds=embeddings, attention_mask=torch.ones_like(prompt), max_new_tokens=TINY["max_new_tokens"],
        do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    assert answers.texts[0] == [backbone._decode(reference[0])]


def test_wrong_number_of_seeds(backbone):
    with pytest.raises(ValueError, match="expected 3 path seeds, got 2"):
        backbone.generate(features(), [CORPUS[0]], num_paths=3, do_sample=True, path_seeds=[1, 2])
