"""Decoding only the masks a strategy reads: the strategies' lists and the pipeline that follows them."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from mdskit_litemedsam.litemedsam import LiteMedSAM
from mdskit_llava.backbone import LlavaBackbone
from mdskit_rvls2m.rvls2m import RVLS2M
from mdskit_tts import BestOfN, Oracle, SelfConsistency

from mdskit import SEG_TOKEN
from mdskit.backbone import GeneratedAnswers
from mdskit.errors import ConfigError, PluginError
from mdskit.evaluation import SamplingPlan, candidate_records, predict, sample_candidates
from mdskit.model import MdsModel
from mdskit.testing import ContractViolation, TtsStrategyContract, synthetic_samples
from mdskit.tts import Candidate, Selection, TestTimeScaling, checked_masks_needed

# --- the masks each strategy lists ------------------------------------------------------------


def square(top: int, left: int, size: int = 3) -> torch.Tensor:
    logits = torch.full((8, 8), -2.0)
    logits[top:top + size, left:left + size] = 2.0
    return logits


def voters(labels: list[str], logprobs: list[float], perturbations: int = 1) -> list[Candidate]:
    """One candidate per (path, region prompt); path p's mask is a square shifted by p cells."""
    candidates = []
    for path, (label, logprob) in enumerate(zip(labels, logprobs, strict=True)):
        for k in range(perturbations):
            candidates.append(Candidate(
                path_index=path * perturbations + k, text=f"{label} {SEG_TOKEN}", diagnosis=label,
                mask_logits=square(path % 5, k), seg_found=True, mean_logprob=logprob, iou_score=0.5,
                sampled_path=path, perturbation=k))
    return candidates


def without_masks(candidates: list[Candidate]) -> list[Candidate]:
    stripped = copy.deepcopy(candidates)
    for candidate in stripped:
        candidate.mask_logits = None
        candidate.iou_score = None
    return stripped


def only_decoded(candidates: list[Candidate], needed: list[int] | None) -> list[Candidate]:
    """Copy the candidates, dropping every mask outside ``needed`` (None keeps all)."""
    copies = copy.deepcopy(candidates)
    for candidate in copies:
        if needed is not None and candidate.path_index not in needed:
            candidate.mask_logits = None
            candidate.iou_score = None
    return copies


def test_self_consistency_decodes_the_three_most_probable_voters():
    labels = ["benign", "malignant", "benign", "benign", "benign", "benign"]
    candidates = voters(labels, [-0.5, -0.1, -0.9, -0.2, -0.3, -0.4])

    needed = SelfConsistency(num_paths=6).masks_needed(without_masks(candidates))

    # The malignant path is the most probable one, but benign wins the vote.
    assert needed == [3, 4, 5]


def test_self_consistency_fuses_only_the_capped_paths():
    labels = ["benign"] * 5
    candidates = voters(labels, [-0.1, -0.2, -0.3, -0.4, -0.5])

    capped = SelfConsistency(num_paths=5, max_fused_paths=2).select(candidates)
    every = SelfConsistency(num_paths=5, max_fused_paths=0).select(candidates)

    expected_capped = ((candidates[0].mask_logits > 0).float() + (candidates[1].mask_logits > 0).float()) / 2
    torch.testing.assert_close(capped.agreement, expected_capped)
    assert every.agreement.max() == pytest.approx(3 / 5)
    assert capped.chosen == every.chosen == [0, 1, 2, 3, 4]


def test_self_consistency_logprob_tie():
    candidates = voters(["normal"] * 4, [-0.2, -0.2, -0.2, -0.2])

    assert SelfConsistency(num_paths=4, max_fused_paths=1).masks_needed(without_masks(candidates)) == [0]


def test_self_consistency_region_prompts_together():
    candidates = voters(["benign", "benign", "benign"], [-0.3, -0.1, -0.2], perturbations=2)

    needed = SelfConsistency(num_paths=3, num_perturbations=2, max_fused_paths=2).masks_needed(
        without_masks(candidates))

    assert needed == [2, 3, 4, 5]


def test_self_consistency_without_seg_reads_one_empty_mask():
    candidates = voters(["benign", "benign"], [-0.3, -0.1])
    for candidate in candidates:
        candidate.seg_found = False
    strategy = SelfConsistency(num_paths=2)

    needed = strategy.masks_needed(without_masks(candidates))
    selection = strategy.select(only_decoded(candidates, needed))

    assert needed == [1]
    assert not selection.mask.any()
    assert tuple(selection.mask.shape) == (8, 8)
    assert "contains" in selection.failure


@pytest.mark.parametrize("strategy", [
    SelfConsistency(num_paths=6),
    SelfConsistency(num_paths=6, max_fused_paths=1),
    BestOfN(num_paths=6, score="logprob"),
], ids=["self-consistency", "self-consistency-one-path", "best-of-n-logprob"])
def test_needed_masks_give_the_full_selection(strategy):
    labels = ["benign", "malignant", "benign", "benign", "malignant", "benign"]
    candidates = voters(labels, [-0.5, -0.1, -0.9, -0.2, -0.3, -0.4])

    needed = strategy.masks_needed(without_masks(candidates))
    lazy = strategy.select(only_decoded(candidates, needed))
    full = strategy.select(candidates)

    assert needed is not None and len(needed) < len(candidates)
    assert (lazy.text, lazy.diagnosis, lazy.chosen) == (full.text, full.diagnosis, full.chosen)
    assert torch.equal(lazy.mask, full.mask)


def test_best_of_n_logprob_reads_the_winner_only():
    candidates = voters(["benign", "malignant", "benign"], [-0.5, -0.1, -0.9])

    assert BestOfN(num_paths=3, score="logprob").masks_needed(without_masks(candidates)) == [1]


@pytest.mark.parametrize("strategy", [BestOfN(num_paths=3, score="predicted-iou"),
                                      BestOfN(num_paths=3, score="agreement"), Oracle(num_paths=3)],
                         ids=["predicted-iou", "agreement", "oracle"])
def test_mask_scores_read_every_mask(strategy):
    candidates = voters(["benign", "malignant", "benign"], [-0.5, -0.1, -0.9])

    assert strategy.masks_needed(without_masks(candidates)) is None


def test_undecoded_mask_read_error():
    candidates = voters(["benign", "benign"], [-0.1, -0.2])
    candidates[0].mask_logits = None

    with pytest.raises(ValueError, match="candidate 0 has no decoded mask.*masks_needed"):
        BestOfN(num_paths=2, score="agreement").select(candidates)


@pytest.mark.parametrize("value", [-1, 1.5, True, "3"])
def test_max_fused_paths_rejects_bad_values(value):
    with pytest.raises(ConfigError, match=r"max_fused_paths \(--max-fused-paths\) must be an integer of 0"):
        SelfConsistency(max_fused_paths=value)


def test_max_fused_paths_in_params():
    assert SelfConsistency(num_paths=4).params()["max_fused_paths"] == 3
    assert SelfConsistency(num_paths=4, max_fused_paths=0).params()["max_fused_paths"] == 0


# --- the pipeline decodes what the strategy lists ---------------------------------------------------

ANSWERS = [
    f"Findings: an oval mass. Diagnosis: benign. Mask: {SEG_TOKEN}.",
    f"Findings: an irregular mass. Diagnosis: malignant. Mask: {SEG_TOKEN}.",
    f"Findings: an oval mass. Diagnosis: benign. Mask: {SEG_TOKEN}.",
    f"Findings: a small oval mass. Diagnosis: benign. Mask: {SEG_TOKEN}.",
    "Findings: unclear. Diagnosis: benign.",
]
LOGPROBS = [-0.4, -0.1, -0.4, -0.3, -0.2]


class FixedAnswers(LlavaBackbone):
    """A tiny LLaVA whose sampling returns the fixed :data:`ANSWERS`, so every path's text is known."""

    def generate(self, image_features, questions, num_paths=1, temperature=1.0, do_sample=False,
                 path_seeds=None):
        return GeneratedAnswers([ANSWERS[:num_paths]], [LOGPROBS[:num_paths]])


class RowCounter:
    """Count the rows that go through the mask decoder."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.rows = 0
        decoder.register_forward_hook(self.hook)

    def hook(self, module, inputs, output) -> None:
        self.rows += inputs[0].shape[0]


@pytest.fixture(scope="module")
def model() -> MdsModel:
    torch.manual_seed(0)
    backbone = FixedAnswers(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300,
                            token_grid=4, max_new_tokens=16)
    backbone.setup(["Segment the lesion and give the diagnosis.", *ANSWERS])
    return MdsModel(backbone, LiteMedSAM(cache_dir=""), RVLS2M(grid=4, top_n=4)).eval()


@pytest.fixture(scope="module")
def sample():
    return synthetic_samples(1, label_set=("benign", "malignant"))[0]


PLAN = SamplingPlan(num_paths=5, temperature=0.7, do_sample=True)


def test_pipeline_decodes_only_the_listed_masks(model, sample):
    counter = RowCounter(model.decoder)
    everything, _ = sample_candidates(model, sample, PLAN)
    rows_for_all = counter.rows

    counter.rows = 0
    lazy, _ = sample_candidates(model, sample, PLAN, masks_needed=lambda candidates: [3, 0])

    # Paths 0 and 2 share a text, so the full pass decodes 3 distinct answers with [SEG].
    assert rows_for_all == 3
    assert counter.rows == 2
    assert [candidate.decoded for candidate in lazy] == [True, False, False, True, False]
    for index in (0, 3):
        torch.testing.assert_close(lazy[index].mask_logits, everything[index].mask_logits, atol=1e-4, rtol=1e-4)
        assert lazy[index].iou_score == pytest.approx(everything[index].iou_score, abs=1e-4)
    assert [candidate.seg_found for candidate in lazy] == [True, True, True, True, False]


def test_pipeline_rejects_unknown_path_index(model, sample):
    with pytest.raises(PluginError, match=r"path indices \[7\].*0 to 4"):
        sample_candidates(model, sample, PLAN, masks_needed=lambda candidates: [7])


def test_self_consistency_prediction_and_records(model, sample):
    counter = RowCounter(model.decoder)
    prediction = predict(model, sample, SelfConsistency(num_paths=5, max_fused_paths=2))

    records = candidate_records(prediction)

    # benign wins with paths 0, 2, 3 and 4; the two most probable with [SEG] are 3 and then 0
    # (0 before 2 at equal log-probability), and 0 and 2 share a text.
    assert counter.rows == 2
    assert prediction.selection.diagnosis == "benign"
    assert [record["decoded"] for record in records] == [True, False, False, True, False]
    undecoded = records[1]
    assert (undecoded["mask_area"], undecoded["bbox"], undecoded["iou_score"], undecoded["agreement"]) == \
        (None, None, None, None)
    assert undecoded["text"] == ANSWERS[1]
    assert undecoded["mean_logprob"] == -0.1
    assert records[0]["mask_area"] is not None and records[0]["agreement"] is not None
    json.dumps(records)


class ListsUnknownIndex(TestTimeScaling):
    name = "lists-unknown-index"

    def masks_needed(self, candidates):
        return [len(candidates)]

    def select(self, candidates):
        raise AssertionError("select must not run")


def test_strategy_listing_a_missing_candidate_fails_before_selection(model, sample):
    with pytest.raises(PluginError, match="strategy 'lists-unknown-index': masks_needed returned path indices"):
        predict(model, sample, ListsUnknownIndex(num_paths=1))


# --- what masks_needed may return -------------------------------------------------------------------


@pytest.mark.parametrize("returned, expected", [
    (None, None), ([2, 0], [0, 2]), ((1,), [1]), ({2, 1}, [1, 2]), ([0, 0], [0]), ([], []),
    (iter([1, 2]), [1, 2]),
], ids=["none", "list", "tuple", "set", "repeat", "empty", "generator"])
def test_masks_needed_accepted_forms(returned, expected):
    candidates = voters(["benign"] * 3, [-0.1, -0.2, -0.3])

    assert checked_masks_needed(returned, candidates, "custom") == expected


@pytest.mark.parametrize("returned, message", [
    (0, r"0; return a list"),
    ("0", r"'0'; return a list"),
    ({0: 1}, r"\{0: 1\}; return a list"),
    ([0.0], r"\[0\.0\], but 0\.0 is not an integer path index"),
    ([True, False], r"\[True, False\], but True is not an integer path index"),
    ([[0]], r"\[\[0\]\], but \[0\] is not an integer path index"),
    ([3], r"path indices \[3\], but the candidates' path indices are 0 to 2"),
    ([-1, 1], r"path indices \[-1\], but"),
], ids=["int", "str", "dict", "float", "flags", "nested", "out-of-range", "negative"])
def test_masks_needed_invalid_forms(returned, message):
    candidates = voters(["benign"] * 3, [-0.1, -0.2, -0.3])

    with pytest.raises(PluginError, match="strategy 'custom': masks_needed returned " + message):
        checked_masks_needed(returned, candidates, "custom")


class ListsAGenerator(TestTimeScaling):
    name = "lists-a-generator"

    def masks_needed(self, candidates):
        return (candidate.path_index for candidate in candidates if candidate.path_index in (0, 3))

    def select(self, candidates):
        chosen = min(candidates, key=lambda candidate: candidate.path_index)
        return Selection(chosen.text, chosen.diagnosis, chosen.mask_logits > 0, [chosen.path_index])


def test_pipeline_reads_a_generator_once(model, sample):
    lazy, _ = sample_candidates(model, sample, PLAN, masks_needed=ListsAGenerator(num_paths=5).masks_needed)

    assert [candidate.decoded for candidate in lazy] == [True, False, False, True, False]


class ReadsAnUnlistedMask(TestTimeScaling):
    """Lists path 1 but selects path 0, as a plugin with a wrong masks_needed would."""

    name = "reads-an-unlisted-mask"

    def masks_needed(self, candidates):
        return [1]

    def select(self, candidates):
        first = min(candidates, key=lambda candidate: candidate.path_index)
        return Selection(first.text, first.diagnosis, first.mask_logits > 0, [first.path_index])


def test_select_of_an_unlisted_mask_names_the_fix(model, sample):
    with pytest.raises(PluginError, match=r"strategy 'reads-an-unlisted-mask': select failed \(TypeError.*"
                                          r"path indices \[0, 2, 3, 4\] were not decoded.*list them in "
                                          r"masks_needed"):
        predict(model, sample, ReadsAnUnlistedMask(num_paths=5))


# --- the contract check of masks_needed -------------------------------------------------------------


class LastPathByTruth(TestTimeScaling):
    """Reads the ground truth and only the mask of the highest path index."""

    name = "last-path-by-truth"
    uses_ground_truth = True

    def masks_needed(self, candidates):
        return [max(candidate.path_index for candidate in candidates)]

    def select(self, candidates, ground_truth=None):
        last = max(candidates, key=lambda candidate: candidate.path_index)
        mask = (last.mask_logits > 0) & ground_truth.mask.to(last.mask_logits.device)
        return Selection(last.text, last.diagnosis, mask, [last.path_index])


class LastPathContract(TtsStrategyContract):
    def make_component(self):
        return LastPathByTruth(num_paths=3)


def test_contract_gives_ground_truth_without_first_mask():
    # Candidate 0's mask is not decoded here, so the ground truth's device must come from a decoded one.
    LastPathContract().test_needed_masks_suffice()


class ListsFlags(ReadsAnUnlistedMask):
    name = "lists-flags"

    def masks_needed(self, candidates):
        return [candidate.path_index == 0 for candidate in candidates]


class ListsFlagsContract(TtsStrategyContract):
    def make_component(self):
        return ListsFlags(num_paths=3)


class UnlistedContract(TtsStrategyContract):
    def make_component(self):
        return ReadsAnUnlistedMask(num_paths=3)


def test_contract_rejects_masks_needed_flags():
    with pytest.raises(ContractViolation, match="True is not an integer path index"):
        ListsFlagsContract().test_needed_masks_suffice()


def test_contract_names_an_unlisted_mask_read():
    with pytest.raises(ContractViolation, match="select read a mask that masks_needed did not list"):
        UnlistedContract().test_needed_masks_suffice()
