"""Box and point prompts from the similarity map, and the ground-truth box oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdskit.geometry import Frame
from mdskit.plugins import load_plugins
from mdskit.references import GroundTruthBoxOracle, ORACLE_REFERENCES
from mdskit.runs import open_datasets
from mdskit_rvls2m.similarity_prompts import SimilarityBox, SimilarityPoints, image_box_to_frame, mask_box
from mdskit.errors import ConfigError


def peaked_embeddings(rows: int, cols: int, peak: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings whose similarity to [SEG] is 1 at ``peak`` and falls off with distance."""
    y, x = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    distance = ((y - peak[0]) ** 2 + (x - peak[1]) ** 2).float().sqrt()
    scores = (1 - distance / distance.max()).flatten()
    tokens = torch.stack([scores, torch.zeros_like(scores)], dim=-1)[None]
    return tokens, torch.tensor([[1.0, 0.0]])


def frames(image_size: tuple[int, int]) -> tuple[list[Frame], list[Frame]]:
    return [Frame.longest_side(image_size, 4)], [Frame.longest_side(image_size, 256)]


def test_mask_box_uses_pixel_edges():
    mask = torch.zeros(10, 20, dtype=torch.bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == (3.0, 2.0, 9.0, 5.0)
    assert mask_box(torch.zeros(4, 4, dtype=torch.bool)) is None


def test_box_maps_into_the_padded_frame():
    frame = Frame.longest_side((100, 200), 256)
    assert image_box_to_frame((0.0, 0.0, 200.0, 100.0), frame) == [0.0, 0.0, 256.0, 128.0]


def test_similarity_box_surrounds_the_peak():
    tokens, seg = peaked_embeddings(4, 4, (1, 2))
    token_frames, prompt_frames = frames((64, 64))
    prompts = SimilarityBox(threshold=0.7)(tokens, seg, (4, 4), token_frames, prompt_frames)
    x0, y0, x1, y1 = prompts.boxes[0].tolist()
    # Token (1, 2) covers image rows 16-32 and columns 32-48, frame pixels x4.
    assert x0 < 2.5 * 64 < x1
    assert y0 < 1.5 * 64 < y1
    assert 0 <= x0 < x1 <= 256
    assert 0 <= y0 < y1 <= 256
    assert prompts.dense_masks is None
    assert prompts.points is None


def test_similarity_points_mark_peaks_and_minima():
    tokens, seg = peaked_embeddings(4, 4, (0, 0))
    token_frames, prompt_frames = frames((64, 64))
    coordinates, labels = SimilarityPoints(positive=1, negative=1)(tokens, seg, (4, 4), token_frames,
                                                                    prompt_frames).points
    assert labels.tolist() == [[1, 0]]
    positive, negative = coordinates[0].tolist()
    # Cell centres: (0, 0) -> image (8.5, 8.5), (3, 3) -> image (56.5, 56.5); frame scale 4.
    assert positive == pytest.approx([34.0, 34.0])
    assert negative == pytest.approx([226.0, 226.0])


@pytest.mark.parametrize(("module", "arguments"), [
    (SimilarityBox, {"threshold": 0}), (SimilarityBox, {"threshold": 1.5}),
    (SimilarityPoints, {"positive": -1}), (SimilarityPoints, {"positive": 0, "negative": 0}),
])
def test_invalid_parameters_are_rejected(module, arguments):
    with pytest.raises(ConfigError, match=module.name):
        module(**arguments)


@pytest.fixture(scope="module")
def components():
    loaded, _ = load_plugins()
    return loaded


def test_litemedsam_decodes_box_and_point_prompts(components):
    from mdskit.prompt import DecoderPrompts

    decoder = components.get("decoder", "litemedsam")(cache_dir="")
    embeddings = torch.zeros(1, 256, 64, 64)
    sparse = torch.zeros(1, 1, 256)
    box = decoder(embeddings, sparse, DecoderPrompts(boxes=torch.tensor([[10.0, 20.0, 100.0, 120.0]])))
    points = decoder(embeddings, sparse, DecoderPrompts(points=(torch.tensor([[[50.0, 60.0], [5.0, 5.0]]]),
                                                                torch.tensor([[1, 0]]))))
    assert box.mask_logits.shape == points.mask_logits.shape == (1, 1, 256, 256)
    assert not torch.equal(box.mask_logits, points.mask_logits)


def test_ground_truth_box_oracle_segments_real_lesions(components, data_root):
    adapters = open_datasets(components, {"ph2": str(data_root)})
    cases = adapters["ph2"].load_split("test")[:2]
    oracle = GroundTruthBoxOracle(components)
    for case in cases:
        mask = oracle(case)
        truth = np.asarray(case.mask, dtype=bool)
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert mask.shape == truth.shape
        assert dice > 0.8, case.uid
    assert "litemedsam-gt-box" in ORACLE_REFERENCES
