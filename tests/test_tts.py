"""Test-time scaling strategies: greedy pass-through and self-consistency voting."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from mdskit_tts import Greedy, SelfConsistency, fuse_masks
from mdskit_tts.plugin import mdskit_tts_strategies

from mdskit.errors import ConfigError
from mdskit.registry import Components
from mdskit.tts import Candidate


def logits_of(rows: list[str]) -> torch.Tensor:
    """Build mask logits from strings: '#' is +2, '.' is -2."""
    return torch.tensor([[2.0 if char == "#" else -2.0 for char in row] for row in rows])


def candidate(path_index: int, diagnosis: str | None, rows: list[str] | None = None, *,
              seg_found: bool = True, mean_logprob: float = -1.0,
              mask_logits: torch.Tensor | None = None) -> Candidate:
    if mask_logits is None:
        mask_logits = logits_of(rows if seg_found else ["..", ".."])
    return Candidate(path_index=path_index, text=f"path {path_index}: {diagnosis}", diagnosis=diagnosis,
                     mask_logits=mask_logits, seg_found=seg_found, mean_logprob=mean_logprob)


def as_bool(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[char == "#" for char in row] for row in rows])


# --- greedy ---------------------------------------------------------------------------------------


def test_greedy_returns_candidate():
    selection = Greedy().select([candidate(0, "benign", ["#.", ".."])])

    assert selection.diagnosis == "benign"
    assert selection.text == "path 0: benign"
    assert torch.equal(selection.mask, as_bool(["#.", ".."]))
    assert selection.chosen == [0]
    assert selection.agreement is None
    assert selection.failure is None


def test_greedy_missing_seg():
    selection = Greedy().select([candidate(0, "benign", seg_found=False)])

    assert selection.diagnosis == "benign"
    assert not selection.mask.any()
    assert selection.mask.shape == (2, 2)
    assert selection.failure == "The answer contains no [SEG], so the mask is empty."


def test_greedy_missing_seg_ignores_logits():
    positive = torch.ones(2, 2)
    selection = Greedy().select([candidate(0, "benign", seg_found=False, mask_logits=positive)])

    assert not selection.mask.any()


def test_greedy_missing_diagnosis():
    selection = Greedy().select([candidate(0, None, ["#.", ".."])])

    assert selection.diagnosis is None
    assert torch.equal(selection.mask, as_bool(["#.", ".."]))
    assert selection.failure == "The answer names no valid diagnosis."


def test_greedy_missing_both():
    selection = Greedy().select([candidate(0, None, seg_found=False)])

    assert "no valid diagnosis" in selection.failure
    assert "no [SEG]" in selection.failure


def test_greedy_rejects_several_candidates():
    with pytest.raises(ValueError, match="expects exactly 1 candidate, got 2"):
        Greedy().select([candidate(0, "benign", ["#."]), candidate(1, "benign", ["#."])])


@pytest.mark.parametrize("num_paths", [0, 4, 100])
def test_greedy_rejects_num_paths(num_paths):
    with pytest.raises(ConfigError, match=rf"num_paths must be 1, got {num_paths}\. Use strategy 'self-consistency'"):
        Greedy(num_paths=num_paths)


def test_greedy_decodes_greedily():
    assert not Greedy().do_sample


# --- self-consistency: configuration --------------------------------------------------------------


def test_self_consistency_defaults():
    strategy = SelfConsistency()

    assert strategy.num_paths == 4
    assert strategy.temperature == 0.7
    assert strategy.do_sample


def test_self_consistency_rejects_too_many_paths():
    with pytest.raises(ConfigError, match=r"num_paths \(--paths\) 65 exceeds the maximum of 64 paths per request"):
        SelfConsistency(num_paths=65)


def test_self_consistency_accepts_maximum_paths():
    assert SelfConsistency(num_paths=64).num_paths == 64


def test_self_consistency_rejects_zero_paths():
    with pytest.raises(ConfigError, match=r"num_paths \(--paths\) must be at least 1, got 0"):
        SelfConsistency(num_paths=0)


@pytest.mark.parametrize("num_paths", ["4", 4.0, True])
def test_self_consistency_rejects_non_integer_paths(num_paths):
    with pytest.raises(ConfigError, match=r"num_paths \(--paths\) must be an integer, got"):
        SelfConsistency(num_paths=num_paths)


def test_self_consistency_rejects_zero_temperature():
    with pytest.raises(ConfigError, match="temperature 0 with num_paths 4 samples identical paths"):
        SelfConsistency(num_paths=4, temperature=0)


# --- self-consistency: voting ---------------------------------------------------------------------


def test_vote_clear_winner():
    candidates = [
        candidate(0, "benign", ["##", ".."], mean_logprob=-1.2),
        candidate(1, "benign", ["#.", ".."], mean_logprob=-0.8),
        candidate(2, "malignant", ["##", "##"], mean_logprob=-0.1),
        candidate(3, None, ["##", "##"], mean_logprob=-0.1),
        candidate(4, "benign", ["#.", "#."], mean_logprob=-0.9),
    ]

    selection = SelfConsistency(num_paths=5).select(candidates)

    assert selection.diagnosis == "benign"
    assert selection.chosen == [0, 1, 4]
    assert selection.text == "path 1: benign"
    assert torch.equal(selection.mask, as_bool(["#.", ".."]))
    expected_agreement = torch.tensor([[1.0, 1 / 3], [1 / 3, 0.0]])
    assert torch.allclose(selection.agreement, expected_agreement)
    assert selection.failure is None


def test_vote_label_tie_by_logprob():
    candidates = [
        candidate(0, "benign", ["#."], mean_logprob=-1.0),
        candidate(1, "malignant", [".#"], mean_logprob=-0.5),
        candidate(2, "benign", ["#."], mean_logprob=-1.0),
        candidate(3, "malignant", [".#"], mean_logprob=-0.6),
    ]

    selection = SelfConsistency().select(candidates)

    assert selection.diagnosis == "malignant"
    assert selection.chosen == [1, 3]
    assert torch.equal(selection.mask, as_bool([".#"]))


def test_vote_label_tie_by_first_appearance():
    candidates = [
        candidate(0, "malignant", [".#"], mean_logprob=-0.5),
        candidate(1, "benign", ["#."], mean_logprob=-0.5),
        candidate(2, "benign", ["#."], mean_logprob=-0.5),
        candidate(3, "malignant", [".#"], mean_logprob=-0.5),
    ]

    assert SelfConsistency().select(candidates).diagnosis == "malignant"
    assert SelfConsistency().select(list(reversed(candidates))).diagnosis == "malignant"


def test_vote_text_tie_by_path_index():
    candidates = [candidate(2, "benign", ["#."], mean_logprob=-0.5),
                  candidate(1, "benign", ["#."], mean_logprob=-0.5)]

    assert SelfConsistency(num_paths=2).select(candidates).text == "path 1: benign"


def test_vote_pixel_tie_by_mean_logit():
    # Both pixels have one of two votes. The left pixel's mean logit is +1, the right one's -1.
    first = torch.tensor([[3.0, 1.0]])
    second = torch.tensor([[-1.0, -3.0]])
    candidates = [candidate(0, "benign", mask_logits=first), candidate(1, "benign", mask_logits=second)]

    selection = SelfConsistency(num_paths=2).select(candidates)

    assert torch.equal(selection.mask, torch.tensor([[True, False]]))
    assert torch.equal(selection.agreement, torch.tensor([[0.5, 0.5]]))


def test_vote_skips_voters_without_seg():
    candidates = [
        candidate(0, "benign", mask_logits=torch.tensor([[2.0, -2.0]])),
        candidate(1, "benign", seg_found=False, mask_logits=torch.full((1, 2), -2.0)),
        candidate(2, "benign", mask_logits=torch.tensor([[2.0, 3.0]])),
    ]

    selection = SelfConsistency(num_paths=3).select(candidates)

    # The path without [SEG] votes for the diagnosis but not on pixels. Counted as an empty
    # mask, it would turn the right pixel's 1 of 2 votes (mean logit +0.5) into 1 of 3.
    assert selection.chosen == [0, 1, 2]
    assert torch.equal(selection.agreement, torch.tensor([[1.0, 0.5]]))
    assert torch.equal(selection.mask, as_bool(["##"]))


def test_vote_winner_without_seg():
    candidates = [
        candidate(0, "benign", seg_found=False),
        candidate(1, "benign", seg_found=False),
        candidate(2, "malignant", ["##", "##"]),
    ]

    selection = SelfConsistency(num_paths=3).select(candidates)

    assert selection.diagnosis == "benign"
    assert not selection.mask.any()
    assert selection.agreement is None
    assert selection.failure == "None of the 2 paths that voted for 'benign' contains [SEG], so the mask is empty."


def test_vote_no_valid_diagnosis():
    candidates = [
        candidate(0, None, ["##", ".."], mean_logprob=-2.0),
        candidate(1, None, seg_found=False, mean_logprob=-0.1),
        candidate(2, None, ["#.", ".."], mean_logprob=-1.0),
        candidate(3, None, ["#.", "#."], mean_logprob=-3.0),
    ]

    selection = SelfConsistency().select(candidates)

    assert selection.diagnosis is None
    assert selection.failure == "None of the 4 sampled paths names a valid diagnosis."
    assert selection.text == "path 1: None"
    assert selection.chosen == [0, 1, 2, 3]
    assert torch.equal(selection.mask, as_bool(["#.", ".."]))
    assert torch.allclose(selection.agreement, torch.tensor([[1.0, 1 / 3], [1 / 3, 0.0]]))


def test_vote_no_valid_diagnosis_nor_seg():
    candidates = [candidate(0, None, seg_found=False, mean_logprob=-2.0),
                  candidate(1, None, seg_found=False, mean_logprob=-1.0)]

    selection = SelfConsistency(num_paths=2).select(candidates)

    assert selection.diagnosis is None
    assert selection.chosen == [1]
    assert not selection.mask.any()
    assert selection.agreement is None
    assert selection.failure == ("None of the 2 sampled paths names a valid diagnosis. "
                                 "None contains [SEG], so the mask is empty.")


def test_vote_follows_input_dtype():
    candidates = [candidate(0, "benign", mask_logits=torch.tensor([[1.0, -1.0]], dtype=torch.float16)),
                  candidate(1, "benign", mask_logits=torch.tensor([[1.0, 1.0]], dtype=torch.float16))]

    selection = SelfConsistency(num_paths=2).select(candidates)

    assert selection.mask.dtype == torch.bool
    assert selection.agreement.dtype == torch.float32
    assert torch.equal(selection.mask, torch.tensor([[True, False]]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vote_follows_input_device():
    device = torch.device("cuda")
    candidates = [candidate(0, "benign", mask_logits=torch.tensor([[1.0, -1.0]], device=device)),
                  candidate(1, "benign", mask_logits=torch.tensor([[1.0, 1.0]], device=device)),
                  candidate(2, "benign", seg_found=False, mask_logits=torch.full((1, 2), -1.0, device=device))]

    selection = SelfConsistency(num_paths=3).select(candidates)

    assert selection.mask.device.type == "cuda"
    assert selection.agreement.device.type == "cuda"
    assert torch.equal(selection.mask.cpu(), torch.tensor([[True, False]]))


# --- self-consistency: invalid candidates ---------------------------------------------------------


def test_vote_rejects_mismatched_sizes():
    candidates = [candidate(0, "benign", ["#.", ".."]), candidate(1, "benign", ["#..", "..."])]

    with pytest.raises(ValueError, match=r"candidate 1: mask_logits of size \(2, 3\) differ from \(2, 2\)"):
        SelfConsistency(num_paths=2).select(candidates)


def test_vote_rejects_mismatched_dtypes():
    candidates = [candidate(0, "benign", mask_logits=torch.zeros(2, 2)),
                  candidate(1, "benign", mask_logits=torch.zeros(2, 2, dtype=torch.float64))]

    with pytest.raises(ValueError, match="candidate 1: mask_logits are torch.float64 on cpu"):
        SelfConsistency(num_paths=2).select(candidates)


def test_vote_rejects_batched_logits():
    with pytest.raises(ValueError, match=r"floating-point H x W tensor, got \(1, 2, 2\)"):
        SelfConsistency(num_paths=1).select([candidate(0, "benign", mask_logits=torch.zeros(1, 2, 2))])


def test_vote_rejects_no_candidates():
    with pytest.raises(ValueError, match="no candidates to select from"):
        SelfConsistency().select([])


def test_vote_rejects_duplicate_path_index():
    with pytest.raises(ValueError, match=r"path indices must be unique, got \[0, 0\]"):
        SelfConsistency(num_paths=2).select([candidate(0, "benign", ["#."]), candidate(0, "benign", ["#."])])


def test_vote_rejects_nan_logprob():
    with pytest.raises(ValueError, match="candidate 0: mean_logprob is nan"):
        SelfConsistency(num_paths=1).select([candidate(0, "benign", ["#."], mean_logprob=float("nan"))])


# --- properties -----------------------------------------------------------------------------------

logit_stacks = st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5)).flatmap(
    lambda shape: arrays(np.float32, shape, elements=st.sampled_from([-2.0, -0.5, 0.0, 0.5, 2.0])))


@given(logit_stacks)
def test_fused_mask_between_intersection_and_union(stack):
    mask_logits = torch.from_numpy(stack)
    marked = mask_logits > 0

    mask, agreement = fuse_masks(mask_logits)

    assert not (mask & ~marked.any(dim=0)).any()
    assert not (marked.all(dim=0) & ~mask).any()
    assert torch.equal(agreement, marked.float().mean(dim=0))
    decided = agreement != 0.5
    assert torch.equal(mask[decided], (agreement > 0.5)[decided])


labels = st.sampled_from(["benign", "malignant", "normal", None])


@settings(max_examples=50)
@given(st.lists(st.tuples(labels, st.booleans(), st.sampled_from([-2.0, -1.0, -0.5])), min_size=1, max_size=6),
       st.randoms(use_true_random=False))
def test_vote_ignores_candidate_order(paths, shuffler: random.Random):
    generator = torch.Generator().manual_seed(len(paths))
    candidates = [
        candidate(index, diagnosis, seg_found=seg_found, mean_logprob=logprob,
                  mask_logits=torch.randn(3, 3, generator=generator) if seg_found else torch.full((3, 3), -1.0))
        for index, (diagnosis, seg_found, logprob) in enumerate(paths)
    ]
    shuffled = list(candidates)
    shuffler.shuffle(shuffled)

    expected = SelfConsistency(num_paths=len(paths)).select(candidates)
    actual = SelfConsistency(num_paths=len(paths)).select(shuffled)

    assert actual.diagnosis == expected.diagnosis
    assert actual.text == expected.text
    assert actual.chosen == expected.chosen
    assert torch.equal(actual.mask, expected.mask)
    votes = [diagnosis for diagnosis, _, _ in paths if diagnosis is not None]
    if votes:
        assert votes.count(expected.diagnosis) == max(votes.count(label) for label in votes)


# --- plugin ---------------------------------------------------------------------------------------


def test_plugin_registers_strategies():
    components = Components()
    for strategy in mdskit_tts_strategies():
        components.register("tts", strategy, "tts")

    assert components.failures == []
    assert components.names("tts") == ["best-of-n", "none", "oracle", "prompt-ensemble", "region-perturbation",
                                       "self-consistency"]
