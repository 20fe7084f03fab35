"""Ground-truth-free strategies, the oracle, region-prompt perturbation and bad input."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from mdskit_rvls2m.rvls2m import RVLS2M, perturb_cells, top_cells
from mdskit_tts import BestOfN, GroundTruthMissingError, Oracle, PromptEnsemble, RegionPerturbation, SelfConsistency

from mdskit.errors import ConfigError, MdskitError
from mdskit.evaluation import ensemble_questions, mask_bbox, select
from mdskit.geometry import Frame
from mdskit.sample import MdsSample
from mdskit.tts import Candidate, GroundTruth, mean_agreement


def logits_of(rows: list[str]) -> torch.Tensor:
    """Build mask logits from strings: '#' is +2, '.' is -2."""
    return torch.tensor([[2.0 if char == "#" else -2.0 for char in row] for row in rows])


def candidate(path_index: int, diagnosis: str | None, rows: list[str], *, seg_found: bool = True,
              mean_logprob: float = -1.0, iou_score: float = 0.5) -> Candidate:
    return Candidate(path_index=path_index, text=f"path {path_index}: {diagnosis}", diagnosis=diagnosis,
                     mask_logits=logits_of(rows), seg_found=seg_found, mean_logprob=mean_logprob,
                     iou_score=iou_score)


def as_bool(rows: list[str]) -> torch.Tensor:
    return torch.tensor([[char == "#" for char in row] for row in rows])


SQUARE = ["##..", "##..", "....", "...."]
SQUARE_WIDE = ["###.", "##..", "....", "...."]
CORNER = ["....", "....", "....", "...#"]


# --- best-of-n ------------------------------------------------------------------------------------


def test_best_of_n_predicted_iou_winner():
    candidates = [candidate(0, "benign", SQUARE, iou_score=0.6), candidate(1, "malignant", CORNER, iou_score=0.9),
                  candidate(2, "benign", SQUARE_WIDE, iou_score=0.7)]

    selection = BestOfN(score="predicted-iou").select(candidates)

    assert selection.chosen == [1]
    assert selection.diagnosis == "malignant"
    assert torch.equal(selection.mask, as_bool(CORNER))
    assert selection.scores == {0: 0.6, 1: 0.9, 2: 0.7}
    assert selection.failure is None


def test_best_of_n_logprob_winner():
    candidates = [candidate(0, "benign", SQUARE, mean_logprob=-0.5), candidate(1, "malignant", CORNER,
                                                                               mean_logprob=-0.2)]

    selection = BestOfN(score="logprob").select(candidates)

    assert selection.chosen == [1]


def test_best_of_n_agreement_winner():
    # SQUARE and SQUARE_WIDE overlap (IoU 4/5); CORNER overlaps neither.
    candidates = [candidate(0, "benign", CORNER), candidate(1, "benign", SQUARE_WIDE),
                  candidate(2, "benign", SQUARE)]

    selection = BestOfN(score="agreement").select(candidates)

    assert selection.chosen == [1]
    assert selection.scores[0] == 0.0
    assert selection.scores[1] == pytest.approx(0.4)
    assert selection.scores[2] == pytest.approx(0.4)


def test_best_of_n_tie_goes_to_lowest_path():
    candidates = [candidate(2, "benign", SQUARE, iou_score=0.8), candidate(0, "malignant", CORNER, iou_score=0.8),
                  candidate(1, "benign", SQUARE_WIDE, iou_score=0.8)]

    selection = BestOfN().select(candidates)

    assert selection.chosen == [0]


def test_best_of_n_prefers_complete_answers():
    candidates = [candidate(0, None, SQUARE, iou_score=0.99), candidate(1, "benign", CORNER, iou_score=0.9,
                                                                        seg_found=False),
                  candidate(2, "benign", SQUARE_WIDE, iou_score=0.1)]

    selection = BestOfN().select(candidates)

    assert selection.chosen == [2]


def test_best_of_n_all_candidates_invalid():
    candidates = [candidate(0, None, SQUARE, seg_found=False, iou_score=0.0),
                  candidate(1, None, CORNER, seg_found=False, iou_score=0.0)]

    selection = BestOfN().select(candidates)

    assert selection.chosen == [0]
    assert selection.diagnosis is None
    assert not selection.mask.any()
    assert "names no valid diagnosis" in selection.failure
    assert "contains no [SEG]" in selection.failure


def test_best_of_n_nan_score_ranks_last():
    candidates = [candidate(0, "benign", SQUARE, iou_score=math.nan), candidate(1, "benign", CORNER, iou_score=0.1)]

    assert BestOfN().select(candidates).chosen == [1]


def test_best_of_n_agreement_map_over_seg_candidates():
    candidates = [candidate(0, "benign", SQUARE), candidate(1, "benign", SQUARE_WIDE),
                  candidate(2, "benign", CORNER, seg_found=False)]

    agreement = BestOfN().select(candidates).agreement

    assert agreement[0, 0] == 1.0
    assert agreement[0, 2] == 0.5
    assert agreement[3, 3] == 0.0


def test_mean_agreement_single_candidate():
    assert mean_agreement(as_bool(SQUARE)[None]) == [1.0]


def test_mean_agreement_empty_masks_agree():
    empty = torch.zeros(2, 3, 3, dtype=torch.bool)

    assert mean_agreement(empty) == [1.0, 1.0]


# --- oracle ---------------------------------------------------------------------------------------


def test_oracle_picks_closest_mask():
    candidates = [candidate(0, "benign", SQUARE_WIDE), candidate(1, "benign", SQUARE), candidate(2, "benign", CORNER)]
    truth = GroundTruth(as_bool(SQUARE), "benign")

    selection = Oracle().select(candidates, ground_truth=truth)

    assert selection.chosen == [1]
    assert selection.scores[1] == 3.0  # true diagnosis (2) + IoU 1


def test_oracle_ranks_true_diagnosis_first():
    candidates = [candidate(0, "malignant", SQUARE), candidate(1, "benign", CORNER)]
    truth = GroundTruth(as_bool(SQUARE), "benign")

    assert Oracle().select(candidates, ground_truth=truth).chosen == [1]
    assert Oracle(use_diagnosis=False).select(candidates, ground_truth=truth).chosen == [0]


def test_oracle_tie_goes_to_lowest_path():
    candidates = [candidate(1, "benign", SQUARE), candidate(0, "benign", SQUARE)]
    truth = GroundTruth(as_bool(SQUARE), "benign")

    assert Oracle().select(candidates, ground_truth=truth).chosen == [0]


def test_oracle_empty_truth_and_empty_mask_score_one():
    candidates = [candidate(0, "normal", SQUARE, seg_found=False), candidate(1, "normal", CORNER)]
    truth = GroundTruth(torch.zeros(4, 4, dtype=torch.bool), "normal")

    selection = Oracle().select(candidates, ground_truth=truth)

    assert selection.chosen == [0]
    assert selection.scores[0] == 3.0


def test_oracle_rejects_missing_ground_truth():
    with pytest.raises(GroundTruthMissingError, match="upper bound for evaluation only"):
        Oracle().select([candidate(0, "benign", SQUARE)])


def test_oracle_error_is_a_user_error():
    assert issubclass(GroundTruthMissingError, MdskitError)


def test_select_gives_truth_to_oracle_only():
    sample = MdsSample("c1", "busi", "ultrasound", np.zeros((4, 4, 3), np.uint8), as_bool(SQUARE).numpy(),
                       "benign", ("benign", "malignant", "normal"))
    candidates = [candidate(0, "benign", CORNER, iou_score=0.9), candidate(1, "benign", SQUARE, iou_score=0.1)]

    assert select(Oracle(), candidates, sample).chosen == [1]
    assert select(BestOfN(), candidates, sample).chosen == [0]


def test_select_oracle_without_mask_fails():
    sample = MdsSample("c1", "busi", "ultrasound", np.zeros((4, 4, 3), np.uint8), None, "benign",
                       ("benign", "malignant", "normal"))

    with pytest.raises(GroundTruthMissingError):
        select(Oracle(), [candidate(0, "benign", SQUARE)], sample)


# --- perturbation and ensembles ---------------------------------------------------------------------


def test_region_perturbation_fuses_prompts_of_one_path():
    strategy = RegionPerturbation()
    candidates = [Candidate(path_index=k, text="benign", diagnosis="benign", mask_logits=logits_of(rows),
                            seg_found=True, sampled_path=0, perturbation=k)
                  for k, rows in enumerate([SQUARE, SQUARE_WIDE, SQUARE, CORNER])]

    selection = strategy.select(candidates)

    assert (strategy.num_paths, strategy.num_perturbations, strategy.do_sample) == (1, 4, False)
    assert torch.equal(selection.mask, as_bool(SQUARE))
    assert selection.agreement[0, 2] == 0.25


def test_self_consistency_votes_once_per_path_with_perturbations():
    # Two paths name benign and one malignant, each with two region prompts.
    candidates = []
    for path, label in enumerate(["malignant", "benign", "benign"]):
        for k in range(2):
            candidates.append(Candidate(path_index=2 * path + k, text=label, diagnosis=label,
                                        mask_logits=logits_of(SQUARE), seg_found=True, sampled_path=path,
                                        perturbation=k))

    selection = SelfConsistency(num_paths=3, num_perturbations=2).select(candidates)

    assert selection.diagnosis == "benign"
    assert selection.chosen == [2, 3, 4, 5]


def test_prompt_ensemble_defaults_decode_greedily():
    strategy = PromptEnsemble()

    assert (strategy.num_paths, strategy.num_questions, strategy.do_sample) == (1, 3, False)
    assert strategy.num_candidates == 3


def test_ensemble_questions_start_with_sample_question():
    sample = MdsSample("c1", "kvasir", "colonoscopy", np.zeros((4, 4, 3), np.uint8), None, "polyp", ("polyp",),
                       question="Segment the polyp in this colonoscopy image and give the diagnosis.")

    questions = ensemble_questions(sample, 8)

    assert questions[0] == sample.question
    assert len(questions) == 3  # colonoscopy has three phrasings
    assert len(set(questions)) == 3


def test_mask_bbox():
    assert mask_bbox(as_bool(SQUARE_WIDE)) == [0, 0, 2, 1]
    assert mask_bbox(torch.zeros(3, 3, dtype=torch.bool)) is None


def test_perturbations_change_cells():
    means = torch.arange(16, dtype=torch.float64).view(4, 4)
    occupied = torch.ones(4, 4, dtype=torch.bool)
    selected = top_cells(means, occupied, 4)  # the bottom row
    generator = torch.Generator().manual_seed(0)

    dilated = perturb_cells(selected, means, occupied, 4, "dilate", generator)
    eroded = perturb_cells(selected, means, occupied, 4, "erode", generator)
    shifted = perturb_cells(selected, means, occupied, 4, "shift", generator)
    varied = perturb_cells(selected, means, occupied, 4, "top-n", generator)

    assert int(dilated.sum()) == 8
    assert int(eroded.sum()) >= 1
    assert bool((eroded <= selected).all())
    assert not torch.equal(shifted, selected)
    assert 2 <= int(varied.sum()) <= 6


def test_erosion_of_one_cell_keeps_it():
    means = torch.zeros(3, 3, dtype=torch.float64)
    selected = torch.zeros(3, 3, dtype=torch.bool)
    selected[1, 1] = True

    eroded = perturb_cells(selected, means, torch.ones(3, 3, dtype=torch.bool), 1, "erode", torch.Generator())

    assert torch.equal(eroded, selected)


def test_perturbed_prompts_shape_and_seed():
    module = RVLS2M(grid=4, top_n=4)
    similarity = [torch.rand(20, 30, generator=torch.Generator().manual_seed(3))]
    frame = Frame(image_size=(20, 30), size=(256, 256), scale=256 / 30)

    first = module.perturbed_prompts(similarity, [frame], 3, torch.Generator().manual_seed(1))
    second = module.perturbed_prompts(similarity, [frame], 3, torch.Generator().manual_seed(1))

    assert first.shape == (3, 1, 256, 256)
    assert torch.equal(first, second)


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(num_paths=0), "num_paths (--paths) must be at least 1"),
    (dict(num_paths=65), "num_paths (--paths) 65 exceeds the maximum of 64"),
    (dict(num_perturbations=0), "num_perturbations (--perturbations) must be at least 1"),
    (dict(num_perturbations=17), "num_perturbations (--perturbations) 17 exceeds the maximum of 16"),
    (dict(num_questions=9), "num_questions (--questions) 9 exceeds the maximum of 8"),
    (dict(num_paths=64, num_perturbations=16), "1024 candidates per request, above the maximum of 256"),
    (dict(num_paths=4, temperature=0.0), "samples identical paths"),
    (dict(temperature=math.nan), "temperature (--temperature) must be a finite number, got nan"),
    (dict(temperature=math.inf), "temperature (--temperature) must be a finite number"),
    (dict(score="dice"), "unknown best-of-n score 'dice'; choose one of: predicted-iou, logprob, agreement"),
    (dict(num_perturbations=1.5), "num_perturbations (--perturbations) must be an integer"),
])
def test_best_of_n_rejects_bad_options(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        BestOfN(**options)


def test_greedy_ensemble_accepts_zero_temperature():
    assert PromptEnsemble(temperature=0.0).num_questions == 3
